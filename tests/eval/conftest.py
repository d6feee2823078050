"""Fixtures of the evaluation tests: one tiny random Llama 3 (fast) and one real SmolLM2."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_lm():
    from lhama.loader import load_model

    return load_model("tiny-llama3", device="cpu")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    from lhama.loader import load_model

    return load_model(smollm2_path, device="cpu")
