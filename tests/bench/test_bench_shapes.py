"""bench/run.py --shapes: a random-weight GGUF with a model's full shapes, quantized by llama.cpp's
own quantizer, loadable by lhama with no flags; the decode limit from its bytes per token."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from tests.native import INSTALL  # noqa: E402

if importlib.util.find_spec("llama_cpp") is None:  # located, not imported: llama.cpp runs in a child
    pytest.fail(f"llama-cpp-python is missing: {INSTALL}", pytrace=False)


def test_llama_cpp_quantizes_a_full_shape_random_file_that_lhama_loads(tmp_path):
    import gguf
    import run  # bench/run.py
    from harness import shapes

    from lhama.checkpoints.layout import expected_shapes
    from lhama.loader import load_model
    from lhama.model import get_config

    files = shapes.make_files("tiny-llama3", tmp_path, log=lambda m: None)
    args = get_config("tiny-llama3").args
    for quant, qtype in (("q4_0", "Q4_0"), ("q8_0", "Q8_0")):
        tensors = {t.name: t for t in gguf.GGUFReader(files[quant]).tensors}
        assert tensors["blk.0.attn_q.weight"].tensor_type.name == qtype
        # Every layer, the whole vocabulary: nothing is cut to make the file smaller.
        assert sum(n.startswith("blk.") and n.endswith("attn_q.weight") for n in tensors) == args.n_layers
        assert int(tensors["token_embd.weight"].shape[1]) == args.vocab_size
        # Every matrix counts, but an untied embedding (one row per token) and no norm (1-D) does.
        assert ("output.weight" in tensors) == (not args.tie_embeddings)
        want = sum(int(t.n_bytes) for n, t in tensors.items() if len(t.shape) == 2 and n != "token_embd.weight")
        assert run.weight_bytes_per_token(str(files[quant])) == want
    tok, chat = shapes.tokenizer_for(tmp_path)
    lm = load_model(str(files["q4_0"]), tokenizer=tok, chat_format=chat)  # no flags: stays quantized
    assert lm.model.args.n_layers == args.n_layers and lm.model.args.dim == args.dim
    assert set(expected_shapes(lm.model.args)) == set(expected_shapes(args.with_(max_seq_len=shapes.CONTEXT)))
    # Reused, not rewritten, on the next run.
    mtime = files["q4_0"].stat().st_mtime_ns
    assert shapes.make_files("tiny-llama3", tmp_path, log=lambda m: None)["q4_0"].stat().st_mtime_ns == mtime


def test_memory_bandwidth_is_measured():
    import run

    gbs, how = run.memory_bandwidth(2)
    assert 0.1 < gbs < 10_000 and "2 thread(s)" in how
