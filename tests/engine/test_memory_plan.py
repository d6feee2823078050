"""The KV-cache memory plan: blocks from a budget, context capping, the printed plan."""

from __future__ import annotations

import logging

import pytest
import torch

from engine_fakes import tiny_args
from lhama.engine import EngineConfig, LLMEngine, plan_kv_cache
from lhama.errors import ConfigError
from lhama.model import get_config


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
