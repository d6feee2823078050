"""Fixtures for the training tests: tiny random models and deterministic synthetic data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from lhama.model import ModelArgs, build_model
from lhama.train.data import Example, make_rows


@pytest.fixture
def tiny_args() -> ModelArgs:
    return ModelArgs(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64, rope_theta=10000.0, max_seq_len=128
    )


@pytest.fixture
def tiny_model(tiny_args):
    return build_model(tiny_args, init="random", seed=0)


def synthetic_examples(n: int, vocab: int = 64, seed: int = 0) -> list[Example]:
    """Prompt/answer pairs of random lengths where the answer is the prompt reversed: learnable,
    and only the answer is labeled."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [r.randrange(2, vocab) for _ in range(r.randint(3, 9))]
        answer = list(reversed(prompt)) + [1]
        ids = [0] + prompt + answer
        labels = [-100] * (1 + len(prompt)) + answer
        out.append(Example(tuple(ids), tuple(labels)))
    return out


@pytest.fixture
def synthetic_rows():
    return make_rows(synthetic_examples(48), 32, pack=True)


def write_chat_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """Chat JSONL where the assistant answers in a fixed format the base model does not use."""
    r = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = r.randint(2, 60), r.randint(2, 60)
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": f"What is {a} plus {b}?"},
                            {"role": "assistant", "content": f"#### {a + b}"},
                        ]
                    }
                )
                + "\n"
            )
    return path


@pytest.fixture
def chat_jsonl(tmp_path) -> Path:
    return write_chat_jsonl(tmp_path / "chat.jsonl", 24)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are all overhead: a second intra-op thread only contends with the other
    processes on a shared 2-core machine (where a waiting OpenMP thread can make a 135M-parameter
    forward 20x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
