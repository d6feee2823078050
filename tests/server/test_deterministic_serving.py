"""``lhama serve --deterministic`` end to end, and ``system_fingerprint`` on every response."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serving import MODEL, ServerProcess

FP = re.compile(r"^fp_[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def det_server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("det-data"), "--deterministic")
    yield srv
    srv.stop()


def _client(srv):
    from openai import OpenAI

    return OpenAI(base_url=srv.base, api_key="unused", max_retries=0, timeout=300)


def _fingerprints(client) -> set[str]:
    msgs = [{"role": "user", "content": "Say hi."}]
    fps = {client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2).system_fingerprint}
    fps |= {
        c.system_fingerprint
        for c in client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, stream=True)
    }
    fps.add(client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).system_fingerprint)
    fps |= {
        c.system_fingerprint for c in client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, stream=True)
    }
    return fps


def test_fingerprint_on_every_response_and_changes_with_settings(client, det_server):
    normal = _fingerprints(client)
    det = _fingerprints(_client(det_server))
    assert len(normal) == 1 and FP.match(next(iter(normal)))  # every body and chunk, one setup
    assert len(det) == 1 and FP.match(next(iter(det)))
    assert normal != det  # --deterministic changes the numbers, so it changes the fingerprint


def test_fingerprint_inputs(tmp_path):
    from lhama.openai.fingerprint import file_digest, system_fingerprint

    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"x" * 1000)
    b.write_bytes(b"x" * 999 + b"y")
    assert file_digest(a) != file_digest(b)
    base = {
        "model": file_digest(a),
        "lhama": "0.1.0",
        "dtype": "torch.float32",
        "quant": ["int4/g32"],
        "deterministic": False,
    }
    fps = {
        system_fingerprint(base),
        system_fingerprint({**base, "model": file_digest(b)}),
        system_fingerprint({**base, "dtype": "torch.bfloat16"}),
        system_fingerprint({**base, "quant": None}),
        system_fingerprint({**base, "deterministic": True}),
        system_fingerprint({**base, "lhama": "0.2.0"}),
        system_fingerprint(base, adapter="sql"),
    }
    assert len(fps) == 7
    assert system_fingerprint(dict(base)) == system_fingerprint(base)


def test_deterministic_server_alone_equals_concurrent(det_server):
    """One request's tokens and logprobs over HTTP, alone and beside 7 concurrent others."""
    client = _client(det_server)

    def ask(prompt: str):
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, logprobs=1)
        return r.choices[0].text, r.choices[0].logprobs.token_logprobs, r.choices[0].logprobs.top_logprobs

    target = "The river town kept a record of every ship that"
    alone = ask(target)
    others = [f"Write {i} short words about the sea and" for i in range(7)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, [*others[:3], target, *others[3:]]))
    assert results[3] == alone
