"""Batch-job fixtures: the engine tests' tiny random model (no weights to download)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ENGINE_TESTS = Path(__file__).parent.parent / "engine"
sys.path.insert(0, str(ENGINE_TESTS))

from engine_fakes import tiny_loaded


@pytest.fixture(scope="session")
def tiny():
    """Llama 3.1-shaped (GQA 4/2, llama3 RoPE scaling), vocab 300, context 256."""
    return tiny_loaded(seed=1)
