"""Engine test fixtures: tiny random models, and an engine factory that checks, after every
test, that no request is left and every KV block is back in the free pool."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine_fakes import tiny_loaded  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """Llama 3.1-shaped (GQA 4/2, llama3 RoPE scaling), vocab 300, context 256."""
    return tiny_loaded(seed=1)


@pytest.fixture(scope="session")
def tiny_mha():
    """Llama 2-shaped (no GQA)."""
    return tiny_loaded(seed=2, kind="llama2")


@pytest.fixture
def make_engine():
    from lhama.engine import EngineConfig, LLMEngine

    engines = []

    def make(loaded, **config):
        config.setdefault("num_blocks", 256)
        config.setdefault("block_size", 4)
        eng = LLMEngine(loaded.model, loaded.tokenizer, EngineConfig(**config))
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        assert not eng.has_unfinished(), "requests left running"
        kv = eng.kv_manager
        kv.check_consistency()
        assert kv.num_free_blocks == kv.num_blocks, f"leaked {kv.num_used_blocks} KV blocks"
        assert not eng.scheduler.running and not eng.scheduler.waiting
