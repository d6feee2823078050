"""Property-based guard for checkpoint metadata (issue 17, item 8): hypothesis rewrites the
sizes in a params.json, a config.json and a GGUF header (huge, negative, zero, wrong types,
missing) and the reader either returns a shape within the sane bounds or raises a one-line
CheckpointError - never another exception, and fast (nothing is sized from a claim first)."""

from __future__ import annotations

import json
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhama.checkpoints import read_args, write_checkpoint
from lhama.checkpoints.bounds import MAX_SIZES
from lhama.errors import CheckpointError
from lhama.model import ModelArgs, build_model

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, hidden_dim=192, max_seq_len=256)
VALUES = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
DELETE = object()
SLOW_S = 5  # one read of a tiny checkpoint; an allocation sized from a claim takes far longer


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    sd = build_model(ARGS, init="random").state_dict()
    root = tmp_path_factory.mktemp("ckpt-fuzz")
    return {
        fmt: write_checkpoint(sd, ARGS, root / name, **kw)
        for fmt, name, kw in [
            ("meta", "meta", {"fmt": "meta"}),
            ("hf", "hf", {"fmt": "safetensors"}),
            ("gguf", "m.gguf", {"fmt": "gguf", "gguf_type": "f32"}),
        ]
    }


def check_read(path) -> str:
    t0 = time.monotonic()
    try:
        args = read_args(path)
    except CheckpointError as e:
        assert str(e) and "\n" not in str(e), e
        outcome = "refused"
    else:
        for key, limit in MAX_SIZES.items():
            assert 0 < getattr(args, key) <= limit, (key, getattr(args, key))
        outcome = "read"
    assert time.monotonic() - t0 < SLOW_S
    return outcome


@pytest.mark.parametrize("fmt,meta_file", [("meta", "params.json"), ("hf", "config.json")])
def test_hostile_json_metadata(folders, fmt, meta_file, tmp_path):
    source = folders[fmt]
    original = json.loads((source / meta_file).read_text())
    keys = sorted(k for k, v in original.items() if isinstance(v, int | float) and not isinstance(v, bool))
    seen = set()

    @settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(changes=st.dictionaries(st.sampled_from(keys), st.one_of(VALUES, st.just(DELETE)), min_size=1, max_size=4))
    def one(changes):
        meta = {k: v for k, v in original.items() if changes.get(k) is not DELETE}
        meta.update({k: v for k, v in changes.items() if v is not DELETE})
        (source / meta_file).write_text(json.dumps(meta))
        seen.add(check_read(source))

    try:
        one()
    finally:
        (source / meta_file).write_text(json.dumps(original))
    assert check_read(source) == "read"
    assert "refused" in seen, seen


GGUF_KEYS = [
    b"llama.block_count",
    b"llama.embedding_length",
    b"llama.feed_forward_length",
    b"llama.attention.head_count",
    b"llama.attention.head_count_kv",
    b"llama.context_length",
]


def test_hostile_gguf_header(folders, tmp_path):
    data = folders["gguf"].read_bytes()
    offsets = {}
    for key in GGUF_KEYS:
        at = data.index(key) + len(key)
        assert struct.unpack_from("<I", data, at)[0] == 4  # value type UINT32
        offsets[key] = at + 4
    path, seen = tmp_path / "edited.gguf", set()

    @settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        edits=st.dictionaries(
            st.sampled_from(GGUF_KEYS),
            st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1])),
            min_size=1,
            max_size=3,
        )
    )
    def one(edits):
        edited = bytearray(data)
        for key, value in edits.items():
            struct.pack_into("<I", edited, offsets[key], value)
        path.write_bytes(bytes(edited))
        seen.add(check_read(path))

    one()
    assert "refused" in seen, seen
