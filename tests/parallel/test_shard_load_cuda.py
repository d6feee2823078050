"""Per-rank shard loading onto a GPU (skipped without CUDA): the GPU memory a rank allocates while
loading is exactly its weights, where the ordinary loader needs twice the whole model; and two
ranks sharing the GPU (gloo all-reduces on CUDA tensors) give one process's logits."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lhama.checkpoints import load_model, read_checkpoint, write_checkpoint
from lhama.model import ModelArgs, build_model
from lhama.parallel.shard_load import load_shard_model
from lhama.parallel.tp import shard_tensor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
sys.path.insert(0, str(Path(__file__).parent))

# 0.77 GB at bf16: 16 heads, 8 KV heads (tp up to 8), a 32K vocabulary.
ARGS = ModelArgs(dim=2048, n_layers=4, n_heads=16, n_kv_heads=8, vocab_size=32768, hidden_dim=8192)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_shards")
    sd = {
        k: v.cpu()
        for k, v in build_model(ARGS, dtype=torch.bfloat16, device="cuda", init="random", seed=1).state_dict().items()
    }
    torch.cuda.empty_cache()
    return {
        "hf": write_checkpoint(sd, ARGS, d / "hf", "safetensors", max_shard_size="300MB"),
        "meta": write_checkpoint(sd, ARGS, d / "meta", "meta", n_shards=4),
    }


def _peak_gpu_bytes(fn):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - base


@pytest.mark.parametrize("fmt", ["hf", "meta"])
def test_gpu_memory_while_loading_is_the_ranks_weights(ckpts, fmt):
    path, full_bytes = ckpts[fmt], ARGS.n_params() * 2
    full = read_checkpoint(path, dtype=torch.bfloat16).state_dict
    for tp in (2, 8):
        rank = tp - 1
        (model, _, report), peak = _peak_gpu_bytes(
            lambda rank=rank, tp=tp: load_shard_model(path, rank, tp, dtype=torch.bfloat16, device="cuda")
        )
        assert report.bytes_loaded <= peak <= report.bytes_loaded + (1 << 20), (tp, peak, report)
        assert peak < full_bytes / tp + report.bytes_replicated + (1 << 20)
        for name, p in model.named_parameters():
            assert torch.equal(p.cpu(), shard_tensor(name, full[name], rank, tp)), (tp, name)
        del model
    (_model, _ckpt), peak = _peak_gpu_bytes(lambda: load_model(path, dtype=torch.bfloat16, device="cuda"))
    assert peak > 1.9 * full_bytes  # the state dict moved over whole, then the model: what TP ranks avoid


def test_two_ranks_sharing_the_gpu_give_single_process_logits(tmp_path):
    from tp_worker import run_rank_shard_logits

    small = ModelArgs(dim=256, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=512, hidden_dim=1024)
    path = write_checkpoint(
        build_model(small, init="random", seed=2).state_dict(), small, tmp_path / "hf", "safetensors"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        run_rank_shard_logits,
        args=(2, port, str(tmp_path), str(path), "cuda"),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    one, _ = load_model(path, dtype=torch.float32, device="cuda")
    with torch.inference_mode():
        want = one(torch.tensor([[7, 300, 21, 90, 4, 55, 123, 8, 8, 100]], device="cuda")).cpu()
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(tmp_path / f"shard_logits{rank}.pt"), want, atol=1e-5, rtol=1e-4)
