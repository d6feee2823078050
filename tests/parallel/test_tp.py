"""Tensor parallelism: 2 gloo processes on CPU give the logits and tokens of one process."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lhama.engine import EngineConfig, LLMEngine
from lhama.errors import ConfigError
from lhama.generate import SamplingParams
from lhama.loader import load_model
from lhama.model import get_config
from lhama.parallel.tp import check_tp, shard_args

sys.path.insert(0, str(Path(__file__).parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, config: str, engine: bool) -> None:
    from tp_worker import run_rank

    mp.start_processes(
        run_rank, args=(2, _free_port(), str(tmp_path), config, engine), nprocs=2, join=True, start_method="spawn"
    )


def _reference(config: str):
    lm = load_model(
        config, dtype=torch.float32, device="cpu", seed=5, tokenizer="llama3" if "llama2" in config else None
    )
    prompt = torch.tensor([[7, 300, 21, 9000, 4, 55, 123, 8, 8, 100]])
    from tp_worker import full_and_step

    full, step = full_and_step(lm.model, prompt)
    return lm, full, step


# GQA (4 heads / 2 KV heads) plus the engine by default; MHA in the slow job (each spawn costs ~20 s here).
@pytest.mark.parametrize("config", ["tiny-llama3", pytest.param("tiny-llama2", marks=pytest.mark.slow)])
def test_two_gloo_ranks_give_single_process_logits(tmp_path, config):
    _run(tmp_path, config, engine=config == "tiny-llama3")
    lm, full, step = _reference(config)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"logits{rank}.pt")
        torch.testing.assert_close(got["full"], full, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got["step"], step, atol=1e-5, rtol=1e-4)
    if config == "tiny-llama3":
        # The engine on rank 0, rank 1 following every step: the single-process engine's tokens.
        eng = LLMEngine.from_loaded(lm, EngineConfig(num_blocks=64, block_size=8, max_num_batched_tokens=16))
        prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [3, 4], [5, 6, 7, 8, 9, 1]]
        want = [
            r.completions[0].token_ids
            for r in eng.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
        ]
        assert torch.load(tmp_path / "engine.pt") == want
        assert torch.load(tmp_path / "follower_steps.pt") >= 6  # chunked prefill + decodes, all mirrored
        with torch.inference_mode():
            h = lm.model.hidden_states(
                torch.tensor([[7, 300, 21, 9000, 4, 55, 123, 8, 8, 100]]), torch.arange(10).unsqueeze(0)
            )
        torch.testing.assert_close(torch.load(tmp_path / "hidden.pt"), h, atol=1e-5, rtol=1e-4)


def test_shard_shapes_and_bad_sizes():
    a = get_config("llama3.1-70b").args
    s = shard_args(a, 8)
    assert (s.n_heads, s.n_kv_heads, s.head_dim, s.hidden_dim, s.dim) == (8, 1, 128, 28672 // 8, 8192)
    with pytest.raises(ConfigError, match="--tp 16"):
        check_tp(a, 16)  # 8 KV heads
    with pytest.raises(ConfigError, match="--tp 3"):
        check_tp(get_config("tiny-llama3").args, 3)
