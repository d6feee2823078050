"""Tensor-parallel ranks read only their own blocks of a checkpoint (safetensors, Meta .pth, GGUF):
the blocks equal the slices of the full loader's weights, 2 gloo ranks loaded that way give one
process's logits, and a rank's memory while loading is its share of the model, not all of it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from lhama.checkpoints import read_checkpoint, write_checkpoint
from lhama.errors import CheckpointError, ConfigError
from lhama.loader import load_model
from lhama.model import ModelArgs, build_model, get_config
from lhama.parallel.shard_load import load_shard_model, random_shard_model
from lhama.parallel.tp import shard_tensor

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

# GQA with 8 query / 4 KV heads of width 8, so tp 2 and 4 both split it; 2 layers, vocab 320.
ARGS = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=320, hidden_dim=256, max_seq_len=256)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("shard_ckpts")
    sd = build_model(ARGS, init="random", seed=3).state_dict()
    return {
        "hf": write_checkpoint(sd, ARGS, d / "hf", "safetensors", max_shard_size=60_000),  # 11 files + index
        "meta": write_checkpoint(sd, ARGS, d / "meta", "meta", n_shards=4),  # Meta's MP=4 read by tp 2
        "meta1": write_checkpoint(sd, ARGS, d / "meta1", "meta", n_shards=1),
        "gguf-q8_0": write_checkpoint(sd, ARGS, d / "q8.gguf", "gguf", gguf_type="q8_0"),
        "gguf-f16": write_checkpoint(sd, ARGS, d / "f16.gguf", "gguf", gguf_type="f16"),
        "gguf-bf16": _write_bf16_gguf(sd, d / "bf16.gguf"),
        "gguf-tied": write_checkpoint(
            build_model(ARGS.with_(tie_embeddings=True), init="random", seed=8).state_dict(),
            ARGS.with_(tie_embeddings=True),
            d / "tied.gguf",
            "gguf",
            gguf_type="q8_0",
        ),
    }


def _write_bf16_gguf(sd, path):
    """lhama writes f32/f16/q8_0 GGUFs; llama.cpp's converter also writes BF16: add it for the writer."""
    import gguf

    from lhama.checkpoints import gguf_write

    with pytest.MonkeyPatch.context() as mp_:
        mp_.setitem(gguf_write.WRITE_TYPES, "bf16", (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16))
        return write_checkpoint(sd, ARGS, path, "gguf", gguf_type="bf16")


def _assert_shards_equal_full(path, tps=(1, 2, 4)):
    full = read_checkpoint(path).state_dict  # the ordinary loader, whole tensors
    for tp in tps:
        for rank in range(tp):
            model, args, report = load_shard_model(path, rank, tp)
            got = dict(model.named_parameters())
            assert set(got) == set(full), (tp, rank)
            for name, t in full.items():
                assert torch.equal(got[name], shard_tensor(name, t, rank, tp)), (path, tp, rank, name)
            assert report.bytes_loaded == sum(p.numel() * 4 for p in model.parameters())
    return args


@pytest.mark.parametrize("fmt", ["hf", "meta", "meta1", "gguf-q8_0", "gguf-f16", "gguf-bf16"])
def test_each_rank_reads_exactly_its_slices(ckpts, fmt):
    # hf: Q/K rows permuted from rotate-half per rank; meta: 4 Meta files re-cut for 1, 2, 4 ranks;
    # q8_0: tp 2 dequantizes only its column blocks of wo/w2, tp 4 (16 columns < one 32-block) the tensor.
    args = _assert_shards_equal_full(ckpts[fmt])
    assert args == ARGS


def test_real_smollm2_gguf_in_three_shards(smollm2_path):
    # 9 heads, 3 KV heads: tp 3. Q4_1 rows and 32-column blocks dequantized alone; tied Q8_0 embeddings.
    args = _assert_shards_equal_full(smollm2_path, tps=(3,))
    assert args.tie_embeddings and args.n_kv_heads == 3


def test_tied_embeddings_each_format(tmp_path):
    args = ARGS.with_(tie_embeddings=True)
    sd = build_model(args, init="random", seed=4).state_dict()
    paths = [
        write_checkpoint(sd, args, tmp_path / "hf", "safetensors"),
        write_checkpoint(sd, args, tmp_path / "meta", "meta", n_shards=2),  # output.weight = a copy
        write_checkpoint(sd, args, tmp_path / "t.gguf", "gguf", gguf_type="f32"),
    ]
    for path in paths:
        model, got_args, report = load_shard_model(path, 1, 2)
        assert got_args.tie_embeddings, path
        assert model.output.weight is model.tok_embeddings.weight
        assert torch.equal(model.tok_embeddings.weight, sd["tok_embeddings.weight"][160:])  # rank 1's vocab rows
        assert report.bytes_replicated == (2 * args.n_layers * args.dim + args.dim) * 4  # the norms only


def test_meta_files_with_replicated_kv_heads_and_column_split_embeddings(tmp_path):
    """Meta's own layouts: more model-parallel files than KV heads (405B: 16 files, 8 KV heads)
    puts each KV head on consecutive files; Llama 2 splits the embedding by columns."""
    args = ARGS.with_(n_heads=4, n_kv_heads=2)  # head width 16
    sd = build_model(args, init="random", seed=6).state_dict()
    folder = write_checkpoint(sd, args, tmp_path / "meta", "meta", n_shards=4)
    hd = args.head_dim
    for r, file in enumerate(sorted(folder.glob("consolidated.*.pth"))):
        shard = torch.load(file, weights_only=True)
        for i in range(args.n_layers):
            for w in ("wk", "wv"):  # files 0,1 hold KV head 0; files 2,3 KV head 1
                head = r // 2
                shard[f"layers.{i}.attention.{w}.weight"] = sd[f"layers.{i}.attention.{w}.weight"][
                    head * hd : (head + 1) * hd
                ].clone()
        shard["tok_embeddings.weight"] = sd["tok_embeddings.weight"].chunk(4, dim=1)[r].clone()
        torch.save(shard, file)
    for tp in (1, 2):
        for rank in range(tp):
            model, _, _ = load_shard_model(folder, rank, tp)
            got = dict(model.named_parameters())
            for name, t in sd.items():
                assert torch.equal(got[name], shard_tensor(name, t, rank, tp)), (tp, rank, name)


def test_named_config_draws_the_single_process_weights():
    args = get_config("tiny-llama3").args
    full = build_model(args, init="random", seed=5).state_dict()
    for rank in range(2):
        model, report = random_shard_model(args, rank, 2, seed=5)
        got = dict(model.named_parameters())
        for name, t in got.items():
            assert torch.equal(t, shard_tensor(name, full[name], rank, 2)), name
        assert report.source == "config"


def test_bad_sizes_and_bad_files(ckpts, tmp_path):
    with pytest.raises(ConfigError, match="--tp 3"):
        load_shard_model(ckpts["hf"], 0, 3)
    # A tensor missing from a safetensors file: named with its HF name, before anything is read.
    hf = write_checkpoint(build_model(ARGS, init="random").state_dict(), ARGS, tmp_path / "hf", "safetensors")
    tensors = load_file(hf / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, hf / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight.*missing"):
        load_shard_model(hf, 0, 2)
    # Meta files that do not hold the same tensors.
    meta = write_checkpoint(build_model(ARGS, init="random").state_dict(), ARGS, tmp_path / "meta", "meta", n_shards=2)
    shard = torch.load(meta / "consolidated.01.pth", weights_only=True)
    del shard["layers.0.ffn_norm.weight"]
    torch.save(shard, meta / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match="shards disagree"):
        load_shard_model(meta, 1, 2)
    # A GGUF file cut short.
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(ckpts["gguf-f16"].read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_shard_model(cut, 0, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_loaded_from_each_format_give_single_process_logits(ckpts, tmp_path):
    from tp_worker import full_and_step, run_rank_checkpoints

    paths = [str(ckpts[k]) for k in ("hf", "meta", "gguf-q8_0", "gguf-tied")]
    mp.start_processes(
        run_rank_checkpoints, args=(2, _free_port(), str(tmp_path), paths), nprocs=2, join=True, start_method="spawn"
    )
    prompt = torch.tensor([[7, 300, 21, 90, 4, 55, 123, 8, 8, 100]])
    for path in paths:
        lm = load_model(path, dtype=torch.float32, device="cpu", tokenizer="llama3")
        full, step = full_and_step(lm.model, prompt)
        for rank in (0, 1):
            got = torch.load(tmp_path / f"ckpt_logits{rank}.pt")[path]
            torch.testing.assert_close(got["full"], full, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got["step"], step, atol=1e-5, rtol=1e-4)
            assert torch.equal(got["full"].argmax(-1), full.argmax(-1))  # the same greedy tokens
            assert got["shapes"]["layers.0.attention.wk.weight"] == (16, 64)  # 2 of 4 KV heads of width 8
            assert got["shapes"]["tok_embeddings.weight"] == (160, 64)  # half the vocab rows
            assert got["report"]["tp"] == 2 and got["report"]["rank"] == rank


# -- memory ----------------------------------------------------------------------------------
# ~216 MB at fp32 (54M parameters, nearly all in the sharded matrices), big enough that a rank's
# share stands out of the measurement's noise, small enough to write in a second.
MEM_ARGS = ModelArgs(dim=512, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=512, hidden_dim=8192, max_seq_len=256)


def _measure(jobs: list[list[str]]) -> list[dict]:
    """Run the memory worker for each argument list, all at once, each in a fresh process."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "shard_mem_worker.py"), *job],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for job in jobs
    ]
    results = []
    for job, p in zip(jobs, procs, strict=True):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, (job, err[-2000:])
        results.append(json.loads(out))
    return results


@pytest.fixture(scope="module")
def mem_ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("shard_mem")
    sd = build_model(MEM_ARGS, init="random", seed=1).state_dict()
    paths = {
        "hf": write_checkpoint(sd, MEM_ARGS, d / "hf", "safetensors"),
        "meta": write_checkpoint(sd, MEM_ARGS, d / "meta", "meta", n_shards=2),
        "gguf": write_checkpoint(sd, MEM_ARGS, d / "m.gguf", "gguf", gguf_type="q8_0"),
    }
    del sd
    return paths


def test_a_rank_allocates_only_its_share_while_loading(mem_ckpts):
    full = MEM_ARGS.n_params() * 4
    results = _measure([[str(p), "1", "2"] for p in mem_ckpts.values()])
    for fmt, r in zip(mem_ckpts, results, strict=True):
        share = r["weights"] / full
        assert 0.49 < share < 0.52, (fmt, r)  # half the matrices + replicated embeddings and norms
        # The whole load's peak is this rank's weights (+ GGUF's dequantization scratch, ~15% here),
        # nowhere near the model (the slow test below shows the measurement sees a full load).
        assert r["weights"] * 0.8 < r["peak"] < r["weights"] * 1.3, (fmt, r)
        assert r["peak"] < 0.65 * full, (fmt, r)


@pytest.mark.slow
def test_rank_memory_shrinks_with_tp_and_the_full_loader_holds_everything(mem_ckpts):
    full = MEM_ARGS.n_params() * 4
    results = _measure(
        [[str(p), "3", "4"] for p in mem_ckpts.values()] + [[str(mem_ckpts[f]), "full"] for f in ("meta", "gguf")]
    )
    for r in results[:3]:
        assert r["peak"] < 0.33 * full, r  # a quarter of the matrices + the replicated rest
    for r in results[3:]:  # the measurement sees a whole-model load when there is one
        assert r["peak"] > 0.95 * full, r
