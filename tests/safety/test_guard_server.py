"""End to end: a guard the test fine-tunes itself, loaded with ``--shield llama-guard=PATH`` into
a real ``lhama serve`` on loopback in front of the real SmolLM2, driven by the real openai client.

The toy guard learned lhama's own template: two violent requests are ``unsafe\\nS1,S9``; replies
to the "lyrics" request (random ones and SmolLM2's own greedy reply) are ``unsafe\\nS8``, so the
output check fires on what the server actually generated; everything else is ``safe``.
"""

from __future__ import annotations

import httpx
import pytest

from lhama.safety import LlamaGuardConfig, LlamaGuardShield
from tests.safety.guard_training import OUTPUT_TRIGGER, POLICY, SAFE_INPUTS, UNSAFE_INPUTS, examples, train_toy_guard
from tests.serving import MODEL, ServerProcess

UNSAFE = next(iter(UNSAFE_INPUTS))
SAFE = SAFE_INPUTS[0]
toy_guard_served: dict[str, str] = {}


@pytest.fixture(scope="module")
def toy_guard(tmp_path_factory):
    # A toy guard does not reliably generalise over unseen replies, so it is also taught the
    # replies the served model gives (greedy, the same 8 tokens the tests ask for).
    from lhama.generate import SamplingParams, generate
    from lhama.loader import load_model

    lm = load_model("default")
    served = {}
    for text in (OUTPUT_TRIGGER, SAFE):
        ids = lm.chat_format.encode_dialog([{"role": "user", "content": text}])
        served[text] = generate(
            lm.model, lm.tokenizer, ids, SamplingParams(temperature=0, max_tokens=8), stop_ids=lm.chat_format.stop_ids
        ).text
    del lm
    path = train_toy_guard(
        tmp_path_factory.mktemp("guard") / "toy-llama-guard", served_replies=served, freeze_embeddings=True, steps=120
    )
    toy_guard_served.update(served)
    shield = LlamaGuardShield(LlamaGuardConfig(str(path), categories=POLICY))
    wrong = [
        (m[-1]["content"], r, a, v.raw)
        for m, r, a in examples(served_replies=served)[::3]
        if (v := shield.check(m, role=r)).raw != a
    ]
    assert not wrong, f"the toy guard did not learn its examples (losses {train_toy_guard.trace[::10]}): {wrong}"
    return path, shield


def test_toy_guard_in_process(toy_guard):
    _, shield = toy_guard
    v = shield.check([{"role": "user", "content": UNSAFE}], role="user")
    assert (v.allowed, v.categories) == (False, ["S1", "S9"])
    assert "S1 (Violent Crimes), S9 (Indiscriminate Weapons)" in v.message and "request" in v.message
    reply = [
        {"role": "user", "content": OUTPUT_TRIGGER},
        {"role": "assistant", "content": toy_guard_served[OUTPUT_TRIGGER]},
    ]
    assert shield.check(reply[:1], role="user").allowed
    out = shield.check(reply, role="assistant")
    assert (out.allowed, out.categories) == (False, ["S8"]) and "reply" in out.message
    # Excluding the flagged category lets it through: the policy is the operator's.
    lenient = LlamaGuardShield(
        LlamaGuardConfig(str(toy_guard[0]), categories=POLICY, excluded_categories=("S8",)), loaded=shield.loaded
    )
    assert lenient.check(reply, role="assistant").allowed


@pytest.fixture(scope="module")
def guarded(toy_guard, tmp_path_factory):
    from openai import OpenAI

    srv = ServerProcess(
        tmp_path_factory.mktemp("guarded-server"),
        "--model",
        "default",
        "--shield",
        f"llama-guard={toy_guard[0]}",
        "--shield-categories",
        ",".join(POLICY),
    )
    yield srv, OpenAI(base_url=srv.base, api_key="unused", max_retries=0, timeout=120)
    srv.stop()


def _ask(client, text, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=8, temperature=0, **kw
    )


def _stream(client, text):
    chunks = list(_ask(client, text, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    last = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    return content, finish, last.choices[0].model_extra.get("safety")


def test_unsafe_request_is_refused(guarded):
    srv, client = guarded
    r = _ask(client, UNSAFE)
    c = r.choices[0]
    assert c.finish_reason == "content_filter"
    assert "S1 (Violent Crimes)" in c.message.content and "S9 (Indiscriminate Weapons)" in c.message.content
    assert c.message.refusal == c.message.content
    assert c.model_extra["safety"] == {
        "stage": "input",
        "shield": "llama-guard",
        "categories": ["S1", "S9"],
        "category_names": ["Violent Crimes", "Indiscriminate Weapons"],
    }
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens > 0  # nothing was generated

    content, finish, safety = _stream(client, UNSAFE)
    assert finish == ["content_filter"]
    assert "S1 (Violent Crimes)" in content and safety["categories"] == ["S1", "S9"]


def test_safe_request_passes_both_checks(guarded):
    srv, client = guarded
    r = _ask(client, SAFE)
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length") and c.message.content
    assert "safety" not in (c.model_extra or {}) and r.usage.completion_tokens > 0
    content, finish, safety = _stream(client, SAFE)
    assert finish in (["stop"], ["length"]) and content == c.message.content and safety is None


def test_unsafe_reply_is_replaced(guarded):
    srv, client = guarded
    r = _ask(client, OUTPUT_TRIGGER)
    c = r.choices[0]
    assert r.usage.completion_tokens > 0  # the model did answer; the output check refused it
    assert c.finish_reason == "content_filter"
    assert c.model_extra["safety"]["stage"] == "output" and c.model_extra["safety"]["categories"] == ["S8"]
    assert "S8 (Intellectual Property)" in c.message.content and "reply" in c.message.content
    # Streaming: the reply is judged whole first, so none of its text leaks before the refusal.
    content, finish, safety = _stream(client, OUTPUT_TRIGGER)
    assert finish == ["content_filter"] and content == c.message.content and safety["stage"] == "output"


def test_verdicts_are_counted_in_metrics(guarded):
    srv, client = guarded
    _ask(client, UNSAFE)
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    m = srv.metrics()
    assert m['lhama_shield_verdicts_total{shield="llama-guard",stage="input",verdict="refused"}'] >= 1
    assert m['lhama_shield_violations_total{category="S9",shield="llama-guard",stage="input"}'] >= 1
    assert 'lhama_shield_check_seconds_count{shield="llama-guard",stage="output"}' in text


def test_safety_check_cli(toy_guard):
    import json
    import subprocess
    import sys

    base = [
        sys.executable,
        "-m",
        "lhama.cli",
        "safety",
        "check",
        "--shield",
        f"llama-guard={toy_guard[0]}",
        "--shield-categories",
        ",".join(POLICY),
    ]
    r = subprocess.run([*base, "--json", UNSAFE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["categories"] == ["S1", "S9"]
    r = subprocess.run([*base, SAFE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "llama-guard: allowed"
