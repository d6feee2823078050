"""Our GGUF exports are real llama.cpp files: llama.cpp (via llama-cpp-python, the bench extra)
loads them and computes our logits, Llama 3.1 RoPE scaling (the rope_freqs tensor) included.
llama.cpp runs in a child process (tests.native): a crash there fails one test, naming the signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lhama.checkpoints import convert, load_model, write_checkpoint
from lhama.model import ModelArgs, RopeScaling, build_model
from tests.native import run_llama_cpp

F32 = 0  # ggml type id: keep llama.cpp's KV cache in fp32 so only the file format is under test


def _llama_cpp_logits(path, ids, text: bytes | None = None):
    """llama.cpp's logits for ``ids`` (and its tokens for ``text``, when given)."""
    return run_llama_cpp(
        """
        llm = llama_cpp.Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=2,
                              type_k=F32, type_v=F32)
        llm.eval(ids)
        result = (np.array(llm.scores[: len(ids)]), text and llm.tokenize(text, add_bos=False))
    """,
        path=str(path),
        ids=ids,
        text=text,
        F32=F32,
    )


def test_tiny_f32_export_with_rope_scaling(tmp_path):
    # original_context 32 so the scaling changes frequencies that matter within 37 positions
    args = ModelArgs(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=256,
        hidden_dim=192,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=8.0, original_context=32),
        max_seq_len=256,
    )
    model = build_model(args, init="random", seed=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(7)
    out = write_checkpoint(model.state_dict(), args, tmp_path / "tiny.gguf", fmt="gguf", gguf_type="f32")
    ids = list(range(3, 40))
    got, _ = _llama_cpp_logits(out, ids)
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0].numpy()
    assert np.abs(got - want).max() <= 1e-4
    unscaled = build_model(args.with_(rope_scaling=None))
    unscaled.load_state_dict(model.state_dict())
    with torch.no_grad():  # control: llama.cpp really applied the scaling we wrote
        assert np.abs(got - unscaled(torch.tensor([ids]))[0].numpy()).max() > 0.1


def test_smollm2_f16_reexport_runs_in_llama_cpp(smollm2_path, tmp_path):
    model, _ = load_model(smollm2_path)
    out = convert(smollm2_path, tmp_path / "smol.f16.gguf", to="gguf", gguf_type="f16")
    ids = [1, 504, 3575, 282, 4649, 314]
    got, tokens = _llama_cpp_logits(out, ids, b"The capital of France is")
    assert tokens == ids[1:]  # tokenizer carried over
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0].numpy()
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert np.abs(got - want).max() / np.abs(want).max() < 5e-3  # f16 weights


@pytest.fixture(scope="module")
def f32_tiny(tmp_path_factory):
    """Rows of 256 so llama.cpp's K-quants apply to every matrix."""
    args = ModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, hidden_dim=512, max_seq_len=256)
    model = build_model(args, init="random", seed=3).eval()
    path = write_checkpoint(
        model.state_dict(), args, tmp_path_factory.mktemp("q") / "tiny.f32.gguf", fmt="gguf", gguf_type="f32"
    )
    return model, path


# (llama.cpp file type id, tensor type expected on attn_q, bound on relative RMS weight error)
QUANTS = {
    "q4_0": (2, "Q4_0", 0.12),
    "q4_1": (3, "Q4_1", 0.12),
    "q8_0": (7, "Q8_0", 0.01),
    "q4_k_m": (15, "Q4_K", 0.12),
    "q5_k_m": (17, "Q5_K", 0.06),
    "q6_k": (18, "Q6_K", 0.03),
}


@pytest.mark.parametrize("quant", list(QUANTS))
def test_reads_files_quantized_by_llama_cpp(f32_tiny, tmp_path, quant):
    """llama.cpp quantizes our F32 export; we dequantize its file: weights within the type's
    rounding error of the originals, logits next to llama.cpp's own on that file."""
    import gguf

    model, src = f32_tiny
    ftype, qname, bound = QUANTS[quant]
    out = tmp_path / f"tiny.{quant}.gguf"
    assert (
        run_llama_cpp(
            """
        import ctypes
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        result = llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params))
    """,
            src=str(src),
            out=str(out),
            ftype=ftype,
        )
        == 0
    )
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == qname
    ours, ckpt = load_model(out)
    for name, w in model.state_dict().items():
        if w.ndim == 2:
            err = (ckpt.state_dict[name] - w).pow(2).mean().sqrt() / w.pow(2).mean().sqrt()
            assert err < bound, (name, float(err))
    ids = list(range(3, 30))
    got, _ = _llama_cpp_logits(out, ids)
    with torch.no_grad():
        want = ours(torch.tensor([ids]))[0].numpy()
    # llama.cpp also rounds activations to 8 bits for these dot products: not bit-exact
    assert np.abs(got - want).max() <= 0.06
