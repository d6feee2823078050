"""The KV-cache memory plan: blocks from a budget, context capping, the printed plan."""

from __future__ import annotations

import logging

import pytest
import torch
from engine_fakes import tiny_args

from lhama.engine import EngineConfig, LLMEngine, plan_kv_cache
from lhama.errors import ConfigError
from lhama.model import get_config
from tests import needs


def test_plan_from_a_gigabyte_budget_for_llama3_8b():
    args = get_config("llama3.1-8b").args  # 32 layers x 8 KV heads x 128 dims
    plan = plan_kv_cache(args, EngineConfig(kv_cache_gb=4.0), dtype=torch.bfloat16)
    per_token = 2 * 32 * 8 * 128 * 2
    assert plan.bytes_per_token == per_token == 131072
    assert plan.bytes_per_block == 16 * per_token
    assert plan.num_blocks == 4 * 1024**3 // (16 * per_token) == 2048
    # 32768 tokens of cache: less than the 128K context, so requests are capped and told why.
    assert plan.max_model_len == 32768 and plan.model_max_len == 131072
    text = plan.describe()
    assert "2048 blocks" in text and "32768 tokens" in text and "capped" in text and "--kv-cache-gb" in text
    assert "16.00 GiB" in text  # what the full context would need


def test_plan_respects_explicit_blocks_and_caps():
    args = tiny_args(max_seq_len=256)
    plan = plan_kv_cache(args, EngineConfig(num_blocks=100, block_size=8, max_model_len=128))
    assert plan.num_blocks == 100 and plan.capacity_tokens == 800 and plan.max_model_len == 128
    assert not any("capped" in n for n in plan.notes)
    with pytest.raises(ConfigError):
        plan_kv_cache(get_config("llama3-70b").args, EngineConfig(kv_cache_gb=0.001))
    with pytest.raises(ConfigError):
        EngineConfig(block_size=12)


def test_default_cpu_budget_is_bounded_and_logged(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="lhama.engine"):
        eng = LLMEngine(tiny.model, None, EngineConfig(max_num_seqs=4))
    # Without a budget: enough for max_num_seqs full contexts, no more.
    assert eng.plan.capacity_tokens == 4 * 256 and eng.max_model_len == 256
    assert "KV cache:" in caplog.text and "blocks" in caplog.text
    assert eng.cache.nbytes == eng.plan.kv_bytes


@pytest.mark.parametrize("choice", ["auto", "float32", "bfloat16"])
def test_engine_cache_is_the_dtype_its_plan_was_sized_for(tiny, choice, monkeypatch):
    """``EngineConfig.kv_cache_dtype`` reaches the cache, not only the plan: the bytes the plan
    promised are the bytes allocated, and the engine still generates."""
    monkeypatch.delenv("LHAMA_KV_CACHE_DTYPE", raising=False)
    from lhama.generate import SamplingParams

    eng = LLMEngine(tiny.model, None, EngineConfig(num_blocks=8, kv_cache_dtype=choice), stop_ids=())
    want = {"auto": torch.bfloat16, "float32": torch.float32, "bfloat16": torch.bfloat16}[choice]
    assert eng.cache.kv.dtype == want and eng.cache.nbytes == eng.plan.kv_bytes
    (res,) = eng.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert len(res.completions[0].token_ids) == 3


def test_default_budget_is_a_fraction_of_free_memory_capped_at_need(monkeypatch):
    from lhama.engine import memory

    args = tiny_args(max_seq_len=256)
    per_block = plan_kv_cache(args, EngineConfig(num_blocks=1)).bytes_per_block
    free = 1000 * per_block
    monkeypatch.setattr(memory, "_available_bytes", lambda device: (free, "available RAM"))
    # Need (64 x 256 tokens = 1024 blocks) exceeds a quarter of free memory: the fraction decides.
    plan = plan_kv_cache(args, EngineConfig(max_num_seqs=64))
    assert plan.num_blocks == int(free * memory.DEFAULT_CPU_FRACTION) // per_block == 250
    assert "25% of available RAM" in plan.budget_source
    # Two sequences need 2 x 16 blocks: the cache never holds more, whatever the budget says.
    for cfg in (
        EngineConfig(max_num_seqs=2),
        EngineConfig(max_num_seqs=2, kv_cache_fraction=1.0),
        EngineConfig(max_num_seqs=2, kv_cache_gb=4.0),
    ):
        plan = plan_kv_cache(args, cfg)
        assert plan.num_blocks == 2 * 256 // 16 and plan.max_model_len == 256, cfg
        assert "capped at max_num_seqs=2" in plan.budget_source
    # A context that is not a whole number of blocks still fits max_num_seqs times.
    plan = plan_kv_cache(tiny_args(max_seq_len=250), EngineConfig(max_num_seqs=3))
    assert plan.num_blocks == 3 * 16 and plan.max_model_len == 250
    # An explicit fraction below the default.
    plan = plan_kv_cache(args, EngineConfig(max_num_seqs=64, kv_cache_fraction=0.1))
    assert plan.num_blocks == 100


def test_cpu_cache_memory_is_committed_as_blocks_are_written():
    psutil = needs.module("psutil")
    from lhama.engine.paged_cache import PagedKVCache

    proc = psutil.Process()
    before = proc.memory_info().rss
    args = get_config("llama3.2-1b").args
    blocks = 1024**3 // (16 * 2 * args.n_layers * args.n_kv_heads * args.head_dim * 4)
    cache = PagedKVCache(args, blocks, 16, kv_dtype="float32")
    assert cache.nbytes == 1024**3
    idle = proc.memory_info().rss - before
    assert idle < 64 * 2**20, f"{idle / 2**20:.0f} MiB resident for an unwritten 1 GiB cache"
    cache.kv[:, :, :8] = 1.0  # the first blocks' rows of every layer: now those pages are resident
    grown = proc.memory_info().rss - before - idle
    written = cache.kv[:, :, :8].numel() * 4  # 1 MiB in 32 regions (per layer, K and V)
    assert written <= grown < written + 8 * 2**20, f"{grown / 2**20:.1f} MiB resident for 1 MiB written (huge pages?)"
    assert float(cache.kv[:, :, 8:].abs().sum()) == 0.0  # the rest reads as zeros, as padded rows need


def test_cpu_kv_cache_is_bf16_by_default_and_fp32_on_request(monkeypatch):
    """An fp32 model on a CPU stores K/V in bf16 (half the bytes, planned as such); float32 stays
    selectable (EngineConfig.kv_cache_dtype for the plan, kv_dtype for the cache, or
    LHAMA_KV_CACHE_DTYPE for both); other devices and dtypes keep the model's dtype."""
    from lhama.engine.paged_cache import PagedKVCache
    from lhama.model import kv_cache_dtype

    args = tiny_args(max_seq_len=256)
    auto = PagedKVCache(args, 8, 16)
    fp32 = PagedKVCache(args, 8, 16, kv_dtype="float32")
    assert auto.kv.dtype == torch.bfloat16 and 2 * auto.nbytes == fp32.nbytes
    plan, plan32 = plan_kv_cache(args, EngineConfig()), plan_kv_cache(args, EngineConfig(kv_cache_dtype="float32"))
    assert 2 * plan.bytes_per_token == plan32.bytes_per_token == 2 * args.n_layers * args.n_kv_heads * args.head_dim * 4
    assert kv_cache_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    assert kv_cache_dtype(torch.float32, "cuda") == torch.float32
    monkeypatch.setenv("LHAMA_KV_CACHE_DTYPE", "float32")
    assert PagedKVCache(args, 8, 16).kv.dtype == torch.float32
    with pytest.raises(ConfigError):
        EngineConfig(kv_cache_dtype="int3")
