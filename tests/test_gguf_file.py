"""lhama.gguf_file parses GGUF array values in one pass (the gguf package builds one numpy view
per element: a 49k-token vocabulary cost 0.8 s of every load); the values must be the package's
own, for every array type, and a cut-off array must be refused, not read past the end."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from lhama.errors import CheckpointError
from lhama.gguf_file import read_gguf_metadata


def _library_values(path) -> dict:
    reader = gguf.GGUFReader(path)
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        if field.types == [gguf.GGUFValueType.FLOAT32]:
            value = float(str(np.float32(value)))
        out[key] = value
    return out


def test_default_model_metadata_is_the_gguf_packages(smollm2_path):
    got = read_gguf_metadata(smollm2_path)
    assert got == _library_values(smollm2_path)
    assert len(got["tokenizer.ggml.tokens"]) == 49152 and isinstance(got["tokenizer.ggml.token_type"][0], int)


@pytest.fixture()
def arrays_file(tmp_path):
    path = tmp_path / "arrays.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("t.strings", ["a", "", "é漢字", "x" * 300])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.bools", [True, False])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_array("t.empty", [])
    w.add_string("t.after", "still read")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_every_array_type_reads_as_the_package_reads_it(arrays_file):
    got = read_gguf_metadata(arrays_file)
    assert got == _library_values(arrays_file)
    assert got["t.strings"] == ["a", "", "é漢字", "x" * 300] and got["t.after"] == "still read"


def test_a_cut_off_string_array_is_refused(arrays_file, tmp_path):
    data = arrays_file.read_bytes()
    at = data.index(b"x" * 300)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: at + 100])
    with pytest.raises(CheckpointError):
        read_gguf_metadata(cut)


def test_a_string_length_past_the_end_is_refused_wherever_it_is():
    import struct

    from lhama.gguf_file import _read_strings

    def strings(*items: bytes) -> memoryview:
        return memoryview(b"".join(struct.pack("<Q", len(s)) + s for s in items))

    assert _read_strings(strings(b"ab", b"", "é".encode()), 0, 3) == (["ab", "", "é"], 16 + 8 + 2 + 2)
    whole = strings(b"ab", b"cd")
    for bad in (
        memoryview(bytes(whole[:-1])),  # the last string cut short
        memoryview(struct.pack("<Q", 2**40) + bytes(whole[8:])),  # the first one's length past the end
    ):
        with pytest.raises(ValueError, match="past the end"):
            _read_strings(bad, 0, 2)
