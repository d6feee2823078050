"""Decode steps from CUDA graphs (``lhama.engine.cuda_graphs``).

Without a GPU the same padded, bucketed static-shape steps run eagerly (``decode_graphs=True`` on
a CPU): padding rows, bucket choice and the spare block are checked here on every machine; the
capture and replay themselves only where CUDA is available.
"""

from __future__ import annotations

import pytest
import torch
from engine_fakes import random_prompts, tiny_args

from lhama.engine import EngineConfig, LLMEngine
from lhama.engine.cuda_graphs import batch_buckets, block_buckets
from lhama.errors import ConfigError
from lhama.generate import SamplingParams, generate_tokens
from lhama.model import build_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert batch_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert block_buckets(1) == [1]
    assert block_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    with pytest.raises(ConfigError):
        EngineConfig(cuda_graph_max_len=0)


def _tokens(results):
    return [[c.token_ids for c in r.completions] for r in results]


def test_padded_static_decode_matches_plain_engine():
    """Five sequences (padded to a batch of 8), contexts crossing several block buckets, n=2
    forks sharing blocks, a long prompt that is chunked: the same greedy tokens as the plain
    engine, the spare block never handed out, and every block back at the end."""
    model = build_model(tiny_args("llama3"), init="random", seed=2).eval()
    cfg = EngineConfig(block_size=4, num_blocks=96, max_num_seqs=8, max_num_batched_tokens=16)
    prompts = random_prompts([1, 3, 7, 30, 12], seed=4)
    params = [
        SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, n=k)
        for n, k in [(40, 1), (25, 2), (33, 1), (20, 1), (9, 1)]
    ]
    want = _tokens(LLMEngine(model, None, cfg).generate(prompts, params))
    eng = LLMEngine(model, None, cfg, decode_graphs=True)
    assert eng.cache.kv.shape[2] == (cfg.num_blocks + 1) * model.args.n_kv_heads  # one spare block
    assert _tokens(eng.generate(prompts, params)) == want
    graphs = eng.runner.graphs
    used = set(graphs._entries)
    assert {b for b, _ in used} >= {8, 4, 2}, used  # batches padded up as sequences finish
    assert {m for _, m in used} >= {8, 16}, used  # contexts crossed block buckets
    assert graphs.num_captured == 0  # nothing captured on a CPU: the same steps, run eagerly
    assert eng.kv_manager.num_free_blocks == eng.kv_manager.num_blocks
    # The reference loop agrees for a sequence that went through the padded path.
    ref = [s.token_id for s in generate_tokens(model, prompts[0], params[0])]
    assert want[0][0] == ref


def test_long_contexts_fall_back_to_eager_steps():
    model = build_model(tiny_args("llama3"), init="random", seed=3).eval()
    cfg = EngineConfig(block_size=4, num_blocks=64, max_num_seqs=4, cuda_graph_max_len=16)
    prompts = random_prompts([6, 10], seed=5)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    want = _tokens(LLMEngine(model, None, cfg).generate(prompts, params))
    eng = LLMEngine(model, None, cfg, decode_graphs=True)
    assert _tokens(eng.generate(prompts, params)) == want
    assert max(m for _, m in eng.runner.graphs._entries) == 4  # 16 tokens / block of 4


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_engine_matches_eager(dtype):
    model = build_model(tiny_args("llama3"), init="random", seed=1, device="cuda", dtype=dtype).eval()
    cfg = EngineConfig(block_size=4, num_blocks=128, max_num_seqs=8, max_num_batched_tokens=16)
    prompts = random_prompts([1, 3, 5, 13, 29, 47], seed=3)
    for params in (
        SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, repetition_penalty=1.3, n=2),
        SamplingParams(temperature=0.8, seed=5, max_tokens=12, ignore_eos=True, logprobs=True),
    ):
        eager = LLMEngine(model, None, cfg.with_(cuda_graphs=False)).generate(prompts, params)
        eng = LLMEngine(model, None, cfg)
        graphed = eng.generate(prompts, params)
        assert eng.runner.graphs is not None and eng.runner.graphs.num_captured > 0
        if dtype == torch.float32 and params.temperature == 0:  # exact: the reference loop too
            for p, r in zip(prompts, graphed):
                want = [s.token_id for s in generate_tokens(model, p, params.with_(n=1))]
                assert r.completions[0].token_ids == want
        if dtype == torch.float32 or params.temperature == 0:
            assert _tokens(graphed) == _tokens(eager)
        assert eng.kv_manager.num_free_blocks == eng.kv_manager.num_blocks


@cuda
def test_cuda_graph_replays_across_buckets_and_engines():
    """Requests joining and leaving (batch buckets change every few steps), an abort mid-run, and
    a second engine on the same model: replays stay correct."""
    model = build_model(tiny_args("llama3"), init="random", seed=7, device="cuda").eval()
    cfg = EngineConfig(block_size=4, num_blocks=128, max_num_seqs=8, max_num_batched_tokens=16)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    prompts = random_prompts([4, 9, 2, 17, 6, 11, 3], seed=8)
    eng = LLMEngine(model, None, cfg)
    reqs = {f"a{i}": (p, eng.add_request(f"a{i}", p, params)) for i, p in enumerate(prompts[:3])}
    steps = 0
    while eng.has_unfinished():
        eng.step()
        steps += 1
        if steps == 5:
            assert eng.abort("a1")
        if steps in (7, 12, 13):
            p = prompts[3 + [7, 12, 13].index(steps)]
            reqs[f"b{steps}"] = (p, eng.add_request(f"b{steps}", p, params))
    assert eng.runner.graphs.num_captured >= 3
    for rid, (p, req) in reqs.items():
        if rid != "a1":
            got = LLMEngine.result(req).completions[0].token_ids
            assert got == [s.token_id for s in generate_tokens(model, p, params)], rid
    other = LLMEngine(model, None, cfg)
    out = other.generate(prompts, params)
    for p, r in zip(prompts, out):
        assert r.completions[0].token_ids == [s.token_id for s in generate_tokens(model, p, params)]
    assert eng.kv_manager.num_free_blocks == eng.kv_manager.num_blocks


def test_capture_ahead_covers_the_buckets():
    model = build_model(tiny_args("llama3"), init="random", seed=3).eval()
    eng = LLMEngine(model, None, EngineConfig(block_size=4, num_blocks=64, max_num_seqs=8), decode_graphs=True)
    n = eng.runner.graphs.capture([1, 3, 100], [10, 30])
    assert set(eng.runner.graphs._entries) == {(b, m) for b in (1, 4, 8) for m in (1, 2, 4, 8)}
    assert n == 12
