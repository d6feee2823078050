"""Quantized GGUF files stay quantized (issue 14): Q4_0, Q4_1 and Q8_0 blocks are repacked into
lhama's kernel layouts exactly (every weight dequantizes bit-identically to the gguf package's
own dequantization), other types go to the nearest layout with a notice, and the default model
loads with no float copy of its weights (peak RSS no higher than after loading)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest
import torch
from torch import nn

from lhama.checkpoints import open_reader, write_checkpoint
from lhama.checkpoints.quantized import (
    WeightCopies,
    decode_rows,
    load_quantized,
    load_quantized_gguf,
    wait_for_weight_copies,
    weight_copies,
)
from lhama.model import ModelArgs, build_model
from lhama.quant import Int4WeightOnlyLinear
from lhama.quant.blocks import BlockEmbedding, BlockLinear, SplitInt8Linear, ggml_available
from tests.native import run_llama_cpp

TEXT = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the "
    "capital of Germany. In 1969, humans first walked on the Moon."
)


def _file_weight(reader, name: str) -> torch.Tensor:
    """The gguf package's dequantization of one tensor: the reference."""
    t = reader._tensors[name]
    return torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(reader.shapes[name])


def _assert_linears_bit_identical(model, reader) -> int:
    """Every linear of ``model`` against the file's tensors (fused modules are row stacks)."""
    sources = {"wqkv": ("wq", "wk", "wv"), "w13": ("w1", "w3")}
    checked = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, (Int4WeightOnlyLinear, SplitInt8Linear, BlockLinear)) or name.endswith((".hi", ".lo")):
            continue
        if name == "output":
            parts = ["output.weight" if "output.weight" in reader.shapes else "tok_embeddings.weight"]
        else:
            parent, _, leaf = name.rpartition(".")
            parts = [f"{parent}.{p}.weight" for p in sources.get(leaf, (leaf,))]
        want = torch.cat([_file_weight(reader, p) for p in parts])
        got = mod.dequantize()
        assert got.dtype == torch.float32 and torch.equal(got, want), name
        checked += 1
    return checked


# -- the default model (Q4_1 linears, Q8_0 embedding and tied head) ----------------------------------
@pytest.fixture(scope="module")
def kept(smollm2_path):
    from lhama.loader import load_model

    return load_model(smollm2_path)


def test_default_model_stays_quantized(kept):
    m = kept.model
    assert kept.quant is not None and m.quant_config is not None
    # the file's own blocks where the ggml kernels run, else repacked for PyTorch's int4 kernel
    head, linear = (BlockLinear, BlockLinear) if ggml_available() else (SplitInt8Linear, Int4WeightOnlyLinear)
    assert isinstance(m.tok_embeddings, BlockEmbedding) and isinstance(m.output, head)
    assert not [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]
    assert all(isinstance(layer.attention.wqkv, linear) for layer in m.layers)
    assert kept.quant.bytes_after < kept.quant.bytes_before / 3.5  # ~4.5-bit weights, not fp32
    assert m.dtype == torch.float32  # activations between the quantized modules


def test_default_model_weights_are_the_files_bit_for_bit(kept, smollm2_path):
    with open_reader(smollm2_path) as reader:
        assert _assert_linears_bit_identical(kept.model, reader) == 1 + 4 * kept.args.n_layers
        ids = torch.tensor([[0, 5, 49151, 1234]])
        want = _file_weight(reader, "tok_embeddings.weight")[ids]
        assert torch.equal(kept.model.tok_embeddings(ids), want)


def test_default_model_close_to_its_dequantized_fp32_twin(kept, smollm2_path):
    """The int4 kernels compute with bf16 activations and bf16 copies of the scales: next-token
    distributions stay within a mean KL of 0.005 nats of the fp32 model of the same weights
    (measured: 0.0008; re-quantizing the fp32 model with --quantize int4: 0.0019)."""
    from lhama.loader import load_model

    dense = load_model(smollm2_path, dtype=torch.float32)
    assert isinstance(dense.model.layers[0].attention.wq, nn.Linear)
    ids = torch.tensor([kept.tokenizer.encode(TEXT)])
    with torch.no_grad():
        got, want = kept.model(ids), dense.model(ids)
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="none").sum(
        -1
    )
    assert kl.mean() < 0.005 and kl.max() < 0.05, kl
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.85
    nll = [torch.nn.functional.cross_entropy(x[0, :-1], ids[0, 1:]).item() for x in (got, want)]
    assert abs(nll[0] - nll[1]) < 0.02 * nll[1], nll


def test_raw_blocks_are_views_of_the_files_map_with_one_tied_copy(smollm2_path, monkeypatch):
    """``raw_blocks`` with ``LHAMA_WEIGHTS_MMAP=1``: every Q4_1/Q8_0 linear is a ``BlockLinear``
    over the file's own bytes, no repack and no copy (wq|wk|wv, not adjacent in this file:
    ``BlockLinearParts`` over the three tensors' views); the tied Q8_0 head and the embedding
    lookup share one tensor; bit-identical to the file. (Without it the same layout is copied
    into anonymous memory: test_default_model_blocks_are_anonymous_copies_with_the_same_logits.)"""
    monkeypatch.setenv("LHAMA_WEIGHTS_MMAP", "1")
    with open_reader(smollm2_path) as reader:
        m, report = load_quantized_gguf(reader, raw_blocks=True)
        assert all("the file's own" in kind for kind in report.modules.values())
        assert _assert_linears_bit_identical(m, reader) == 1 + 4 * reader.args.n_layers

        def at(name):  # where the tensor's blocks lie in the map
            return int(reader.blocks(name).ctypes.data)

        assert m.output.blocks.data_ptr() == m.tok_embeddings.blocks.data_ptr() == at("tok_embeddings.weight")
        for i, layer in enumerate(m.layers):
            p = f"layers.{i}."
            assert layer.attention.wo.blocks.data_ptr() == at(p + "attention.wo.weight")
            assert layer.feed_forward.w2.blocks.data_ptr() == at(p + "feed_forward.w2.weight")
            # ffn_gate|ffn_up lie back to back in this file: one view spanning both
            assert layer.feed_forward.w13.blocks.data_ptr() == at(p + "feed_forward.w1.weight")
            qkv = [b.data_ptr() for b in layer.attention.wqkv.parts]
            assert qkv == [at(p + f"attention.{n}.weight") for n in ("wq", "wk", "wv")]
    ids = torch.tensor([[0, 5, 49151, 1234]])
    assert torch.isfinite(m(ids)).all()


# VmHWM/VmRSS of this process's own memory map: getrusage's ru_maxrss survives exec, so a child of
# a big pytest process would report the parent's size.
LOAD_PROBE = textwrap.dedent("""
    import json, time
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
    t0 = time.perf_counter()
    from lhama.loader import load_model
    t1 = time.perf_counter()
    lm = load_model("smollm2-base")  # the default file without the shipped adapter (merged in float)
    t2 = time.perf_counter()
    peak, after = status("VmHWM"), status("VmRSS")
    # A second copy of the model from the file's own blocks: what it adds to anonymous memory
    from lhama.checkpoints import open_reader
    from lhama.checkpoints.quantized import load_quantized_gguf
    anon = status("RssAnon")
    with open_reader(lm.path) as reader:
        raw, report = load_quantized_gguf(reader, raw_blocks=True)
    print(json.dumps({"peak_kb": peak, "after_kb": after, "quantized": lm.quant is not None,
                      "imports_s": t1 - t0, "load_s": t2 - t1, "raw_anon_kb": status("RssAnon") - anon,
                      "raw_weight_kb": report.bytes_after // 1024}))
""")


def test_default_load_peak_rss_not_above_rss_after_loading():
    """No float copy of the weights at any point: the process's peak while loading is what it
    holds once loaded (1% allowed for page-granular accounting)."""
    out = subprocess.run([sys.executable, "-c", LOAD_PROBE], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["quantized"]
    assert r["peak_kb"] <= r["after_kb"] * 1.01, r
    # raw blocks: one anonymous copy of the file's blocks each (its file pages dropped as it is
    # made), no second one: the second load adds about the weights' size to anonymous memory
    assert r["raw_anon_kb"] < 1.2 * r["raw_weight_kb"] + 8 * 1024, r


# -- files llama.cpp quantized, one per type ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    """Rows of 256 so llama.cpp's K-quants apply to every matrix; an untied head."""
    args = ModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, hidden_dim=512, max_seq_len=256)
    model = build_model(args, init="random", seed=5).eval()
    path = write_checkpoint(
        model.state_dict(), args, tmp_path_factory.mktemp("q") / "tiny.f32.gguf", fmt="gguf", gguf_type="f32"
    )
    return path


# llama.cpp file type id, the type it gives attn_q, whether lhama holds it exactly
QUANTS = {
    "q4_0": (2, "Q4_0", True),
    "q4_1": (3, "Q4_1", True),
    "q8_0": (7, "Q8_0", True),
    "q4_k_m": (15, "Q4_K", False),
    "q5_k_m": (17, "Q5_K", False),
    "q6_k": (18, "Q6_K", False),
}


@pytest.mark.parametrize("quant", list(QUANTS))
def test_llama_cpp_quantized_files_load_into_kernel_layouts(tiny_f32, tmp_path, quant, caplog):
    ftype, qname, exact = QUANTS[quant]
    out = tmp_path / f"tiny.{quant}.gguf"
    assert (
        run_llama_cpp(
            """
        import ctypes
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        result = llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params))
    """,
            src=str(tiny_f32),
            out=str(out),
            ftype=ftype,
        )
        == 0
    )
    with caplog.at_level(logging.WARNING, logger="lhama.checkpoints.quantized"), open_reader(out) as reader:
        assert reader.qtype("layers.0.attention.wq.weight").name == qname
        for name in ("layers.0.attention.wq.weight", "tok_embeddings.weight"):  # Q6_K decoded in torch
            want = _file_weight(reader, name).float()
            assert torch.equal(decode_rows(reader.blocks(name), reader.qtype(name)).view(want.shape), want)
        model, report = load_quantized_gguf(reader, raw_blocks=False)
        raw = load_quantized_gguf(reader, raw_blocks=True)[0] if exact else None  # the file's own blocks
        if exact:
            assert _assert_linears_bit_identical(model, reader) > 0
            assert _assert_linears_bit_identical(raw, reader) > 0
            assert isinstance(raw.layers[0].feed_forward.w2, BlockLinear)
            assert not [r for r in caplog.records if qname in r.getMessage()]
        else:  # nearest layout: said once, in one line, naming the type and the fallback
            notes = [r.getMessage() for r in caplog.records if qname in r.getMessage()]
            assert len(notes) <= 1 and all("\n" not in n and "requantized to int" in n for n in notes)
            assert any(qname in kind and "requantized" in kind for kind in report.modules.values())
        dense = build_model(reader.args)
        dense.load_state_dict({n: reader.read(n).float() for n in reader.shapes}, strict=False)
        if reader.args.tie_embeddings:
            dense.output.weight = dense.tok_embeddings.weight
    ids = torch.tensor([list(range(3, 40))])
    for kept in (model, raw) if exact else (model,):
        with torch.no_grad():
            got, want = kept(ids), dense.eval()(ids)
        rel = ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
        assert rel < (0.02 if exact else 0.15), rel


def test_float_gguf_is_not_taken_for_a_quantized_one(tiny_f32):
    assert load_quantized(tiny_f32) is None  # F32 linears: the ordinary loader's job


def test_q4_0_blocks_written_by_the_gguf_package(tmp_path, tiny_llama3_args):
    """Q4_0 from a second encoder (the gguf package's, not llama.cpp's): still bit-exact."""
    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=128, max_seq_len=64)
    sd = build_model(args, init="random", seed=2).state_dict()
    w = gguf.GGUFWriter(str(tmp_path / "q4_0.gguf"), "llama")
    for key, value in (
        ("context_length", 64),
        ("embedding_length", 64),
        ("block_count", 1),
        ("feed_forward_length", 128),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
    ):
        w.add_uint32(f"llama.{key}", value)
    names = {
        "tok_embeddings.weight": "token_embd.weight",
        "norm.weight": "output_norm.weight",
        "output.weight": "output.weight",
    }
    from lhama.checkpoints.gguf import GGUF_NAMES

    for name, t in sd.items():
        a = t.float().numpy()
        q = gguf.GGMLQuantizationType.F32 if a.ndim == 1 else gguf.GGMLQuantizationType.Q4_0
        data = a if q == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(a, q)
        w.add_tensor(
            names.get(name) or GGUF_NAMES.to_theirs(name), data, raw_shape=a.shape if data is a else None, raw_dtype=q
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open_reader(tmp_path / "q4_0.gguf") as reader:
        assert reader.qtype("layers.0.feed_forward.w2.weight") == gguf.GGMLQuantizationType.Q4_0
        model, _ = load_quantized_gguf(reader)
        assert _assert_linears_bit_identical(model, reader) == 1 + 4
        emb = model.tok_embeddings(torch.arange(64))
        assert torch.equal(emb, _file_weight(reader, "tok_embeddings.weight"))
    assert np.isfinite(model(torch.tensor([[1, 2, 3]])).numpy()).all()


def test_lora_on_a_quantized_file_is_merged_in_float_and_requantized_only_on_request(smollm2_path, tmp_path):
    """An adapter needs float weights to merge into, and the merged model stays float (re-rounding
    to 4 bits would erase a small adapter); ``quantize="int4"`` re-rounds it when asked."""
    from lhama.loader import load_model
    from lhama.model.lora import LoraConfig, apply_lora
    from lhama.peft_adapter import save_peft_adapter

    base = load_model(smollm2_path, dtype=torch.float32)
    apply_lora(base.model, LoraConfig(rank=4, target_modules=("wq", "wv")))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in base.model.named_parameters():
            if ".lora_b." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    adapter = save_peft_adapter(base.model, tmp_path / "adapter")
    del base
    merged = load_model(smollm2_path, lora=adapter, quantize="int4")
    dense = load_model(smollm2_path, lora=adapter)
    assert merged.quant is not None and merged.quant.config.mode == "int4"
    assert dense.quant is None and isinstance(dense.model.layers[0].attention.wq, nn.Linear)
    assert torch.equal(
        dense.model.layers[0].attention.wq.weight,
        load_model(smollm2_path, lora=adapter, dtype=torch.float32).model.layers[0].attention.wq.weight,
    )
    ids = torch.tensor([merged.tokenizer.encode(TEXT)])
    with torch.no_grad():
        got, want = merged.model(ids), dense.model(ids)
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="none").sum(
        -1
    )
    assert kl.mean() < 0.05, kl  # measured 0.015: the merged weights are off the file's grid, re-rounded


@pytest.mark.parametrize("rows", [16, 48, 64, 80, 208, 576])
def test_load_time_packing_is_the_cpu_kernels_own(rows):
    """The loader packs Q4 nibbles and Q8_0 halves for the CPU int4 kernel with numpy (no int32
    copy); the bytes must be exactly what PyTorch's own packing op writes, full tiles and tails."""
    from lhama.quant.int4 import pack_cpu_nibble_blocks, pack_cpu_rows

    gen = np.random.default_rng(rows)
    for cols in (32, 576):
        qs = gen.integers(0, 256, (rows, cols // 32, 16), dtype=np.uint8)
        q = np.concatenate([qs & 15, qs >> 4], -1).reshape(rows, cols)
        want = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.from_numpy(q).to(torch.int32), 1)
        assert torch.equal(pack_cpu_rows(q), want)
        assert torch.equal(pack_cpu_nibble_blocks(qs), want)


def test_sixteen_bit_gguf_stays_16_bit_where_the_cpu_computes_bf16(tmp_path, smollm2_path, caplog):
    """No flags: F16/BF16 linears load as bf16 on a CPU with native bf16 (avx512_bf16/AMX), else
    as fp32 with a one-line notice naming the fallback; ``dtype=float32`` always gives fp32."""
    from lhama.checkpoints.quantized import cpu_computes_bf16
    from lhama.loader import load_model

    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, hidden_dim=192, max_seq_len=128)
    sd = build_model(args, init="random", seed=3).state_dict()
    path = write_checkpoint(sd, args, tmp_path / "m.f16.gguf", fmt="gguf", gguf_type="f16")
    (tmp_path / "plain.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    kw = {"tokenizer": smollm2_path, "chat_format": str(tmp_path / "plain.jinja")}
    with caplog.at_level(logging.WARNING, logger="lhama.checkpoints.quantized"):
        kept = load_model(path, **kw)
    dense = load_model(path, dtype=torch.float32, **kw)
    want = torch.bfloat16 if cpu_computes_bf16() else torch.float32
    assert kept.model.layers[0].attention.wq.weight.dtype == want
    assert dense.model.layers[0].attention.wq.weight.dtype == torch.float32
    if want == torch.float32:
        assert any("no native bf16" in r.getMessage() and "fp32" in r.getMessage() for r in caplog.records)
    ids = torch.tensor([list(range(3, 40))])
    with torch.no_grad():
        got, ref = kept.model(ids).float(), dense.model(ids)
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none")
    assert kl.sum(-1).mean() < 0.01, kl.sum(-1).mean()


def test_a_loaded_quantized_model_writes_back_the_files_own_blocks(smollm2_path, tmp_path):
    """GGUF write-back of a raw-block model: every tensor of the written file has the source's
    type and bytes (stacks split back into wq/wk/wv and w1/w3, the tied head once)."""
    from lhama.checkpoints.gguf_write import write_gguf
    from lhama.checkpoints.quantized import gguf_tensors
    from lhama.gguf_file import open_gguf

    with open_reader(smollm2_path) as reader:
        model, _ = load_quantized_gguf(reader, raw_blocks=True)
        floats, raw = gguf_tensors(model)
        out = write_gguf(floats, model.args, tmp_path / "back.gguf", gguf_type="f32", metadata=reader.metadata, raw=raw)
    src = {t.name: t for t in open_gguf(smollm2_path).tensors}
    back = {t.name: t for t in open_gguf(out).tensors}
    assert set(src) == set(back)
    for name, t in src.items():
        assert back[name].tensor_type == t.tensor_type, name
        assert np.array_equal(np.asarray(back[name].data).view(np.uint8), np.asarray(t.data).view(np.uint8)), name


# -- where the raw blocks live -----------------------------------------------------------------
def _mapping_of(ptr: int) -> str:
    """The /proc/self/maps path of the mapping holding address ``ptr`` ('' for anonymous memory)."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= ptr < hi:
                return fields[5].strip() if len(fields) > 5 else ""
    raise AssertionError(f"address {ptr:#x} is in no mapping")


@pytest.mark.skipif(not ggml_available() or sys.platform != "linux", reason="raw blocks need the ggml kernels")
def test_default_model_blocks_are_anonymous_copies_with_the_same_logits(monkeypatch):
    """The GGUF-block buffers are copied out of the file's map into anonymous memory (THP where the
    kernel gives it: faster reads than the page cache's 4 KiB pages); ``LHAMA_WEIGHTS_MMAP=1`` keeps
    views of the map, and both give the same logits bit for bit."""
    from lhama.loader import load_model

    def buffers(model):
        return [b for m in model.modules() if isinstance(m, (BlockLinear, BlockEmbedding)) for b in m.buffers()]

    ids = torch.tensor([[1, 17, 300, 4000, 42, 7, 99, 1234]])
    monkeypatch.delenv("LHAMA_WEIGHTS_MMAP", raising=False)
    copied = load_model("default")
    blocks = [b for b in buffers(copied.model) if b.numel()]
    assert blocks
    assert all(_mapping_of(b.data_ptr()) == "" for b in blocks), {_mapping_of(b.data_ptr()) for b in blocks}
    heads = [m.blocks for m in (copied.model.output, copied.model.tok_embeddings) if hasattr(m, "blocks")]
    if len(heads) == 2 and copied.args.tie_embeddings:  # the tied head and the lookup: one copy
        assert heads[0].data_ptr() == heads[1].data_ptr()
    with torch.inference_mode():
        want = copied.model(ids)
    del copied, blocks
    monkeypatch.setenv("LHAMA_WEIGHTS_MMAP", "1")
    mapped = load_model("default")
    paths = {_mapping_of(b.data_ptr()) for b in buffers(mapped.model) if b.numel()}
    assert paths == {str(mapped.path.resolve())} or all(p.endswith(".gguf") for p in paths), paths
    with torch.inference_mode():
        got = mapped.model(ids)
    assert torch.equal(got, want)
    # a zero copy budget with no background copies keeps every tensor in the map (the same
    # numbers); a bad budget is refused
    monkeypatch.delenv("LHAMA_WEIGHTS_MMAP")
    monkeypatch.setenv("LHAMA_WEIGHTS_COPY_SECONDS", "0")
    monkeypatch.setenv("LHAMA_WEIGHTS_BACKGROUND_COPY", "0")
    unbudgeted = load_model("default")
    assert weight_copies(unbudgeted.model) is None
    assert all(_mapping_of(b.data_ptr()) != "" for b in buffers(unbudgeted.model) if b.numel())
    with torch.inference_mode():
        assert torch.equal(unbudgeted.model(ids), want)
    monkeypatch.setenv("LHAMA_WEIGHTS_COPY_SECONDS", "soon")
    with pytest.raises(ValueError, match="LHAMA_WEIGHTS_COPY_SECONDS"):
        load_model("default")


@pytest.mark.skipif(not ggml_available() or sys.platform != "linux", reason="raw blocks need the ggml kernels")
def test_tensors_past_the_budget_are_copied_in_the_background_under_a_running_engine(monkeypatch):
    """With a zero copy budget every tensor loads as a view of the map and a background thread
    copies them into anonymous memory after the load, swapping the buffers while the engine decodes
    (the whole-step op's plan included): the same logits and greedy tokens before, during and after
    the swaps; every block buffer, and every weight the rebuilt decode plan holds, ends anonymous."""
    from lhama.engine import EngineConfig, LLMEngine
    from lhama.generate import SamplingParams
    from lhama.loader import load_model

    monkeypatch.delenv("LHAMA_WEIGHTS_MMAP", raising=False)
    monkeypatch.delenv("LHAMA_WEIGHTS_BACKGROUND_COPY", raising=False)
    monkeypatch.setenv("LHAMA_WEIGHTS_COPY_SECONDS", "0")
    with monkeypatch.context() as held:  # the thread waits until the model has run on the map views
        held.setattr(WeightCopies, "start", lambda self: self)
        lm = load_model("default")
    model, copies = lm.model, weight_copies(lm.model)
    assert copies is not None and not copies.done and copies.total >= 1 + 2 * lm.args.n_layers

    def block_buffers():
        return [b for m in model.modules() if isinstance(m, (BlockLinear, BlockEmbedding)) for b in m.buffers()]

    def plan_weights():
        plan = model.decode_plan()
        assert plan is not None  # the default model takes the whole-step op
        return [w for w in plan[0] if w.numel()]

    assert all(_mapping_of(b.data_ptr()) != "" for b in block_buffers() if b.numel())
    assert any(_mapping_of(w.data_ptr()).endswith(".gguf") for w in plan_weights())
    ids = torch.tensor([[1, 17, 300, 4000, 42, 7, 99, 1234]])
    prompts = [[1, 17, 300, 4000], [1, 9, 8], [1, *range(100, 113)]]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)

    def run():
        with torch.inference_mode():
            logits = model(ids)
        eng = LLMEngine(model, lm.tokenizer, EngineConfig(num_blocks=64, block_size=8))
        return logits, [r.completions[0].token_ids for r in eng.generate(prompts, params)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 OpenMP threads on a busy 2-core box: 10x slower steps, same bits
    try:
        want_logits, want_tokens = run()
        WeightCopies.start(copies)
        during = run()  # racing the swaps (~0.1-0.5 s of copies against ~0.5 s of steps)
        assert wait_for_weight_copies(model, timeout=120) and copies.done and copies.error is None
        after = run()
    finally:
        torch.set_num_threads(threads)
    assert copies.copied == copies.total
    assert all(_mapping_of(b.data_ptr()) == "" for b in block_buffers() if b.numel())
    assert not any(_mapping_of(w.data_ptr()).endswith(".gguf") for w in plan_weights())  # rebuilt
    heads = [m.blocks for m in (model.output, model.tok_embeddings)]
    assert lm.args.tie_embeddings and heads[0] is heads[1]  # the tied head and lookup: still one copy
    for logits, tokens in (during, after):
        assert torch.equal(logits, want_logits) and tokens == want_tokens
