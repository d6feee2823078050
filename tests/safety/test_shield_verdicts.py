"""Verdict logic without a model: the guard's generate step replaced by fixed answers, and the
server-side shield set (stages, first refusal wins, metrics, errors)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from lhama.safety import LlamaGuardConfig, LlamaGuardShield, ShieldError, ShieldVerdict
from lhama.server.shields import ServerShields
from lhama.tokenizer import load_tokenizer

USER = [{"role": "user", "content": "hello"}]


class _Loaded:
    tokenizer = load_tokenizer("llama3")
    chat_format = None

    class args:
        dim, max_seq_len = 64, 4096


def _guard(answer: str, **kw) -> LlamaGuardShield:
    g = LlamaGuardShield(LlamaGuardConfig("unused", **kw), loaded=_Loaded())
    g.generate = lambda ids: answer
    return g


def test_verdicts_from_answers():
    v = _guard("unsafe\nS10,S2").check(USER, role="user")
    assert (v.allowed, v.categories, v.raw) == (False, ["S10", "S2"], "unsafe\nS10,S2")
    assert (
        v.message == "I can't help with that: the request was flagged as unsafe (S10 (Hate), S2 (Non-Violent Crimes))."
    )
    assert _guard("safe").check(USER, role="user").allowed
    # Categories outside the policy do not refuse; a mix refuses with the ones inside it.
    assert _guard("unsafe\nS6", excluded_categories=("S6",)).check(USER, role="user").allowed
    assert _guard("unsafe\nS6,S1", categories=("S1",)).check(USER, role="user").categories == ["S1"]
    # 'unsafe' without a code still refuses: fail closed.
    assert not _guard("unsafe").check(USER, role="user").allowed
    out = _guard("unsafe\nS1", refusal="Blocked ({stage}): {categories}").check(
        [*USER, {"role": "assistant", "content": "x"}], role="assistant"
    )
    assert out.message == "Blocked (reply): S1 (Violent Crimes)"


def test_on_error_modes():
    closed = _guard("I am a teapot").check(USER, role="user")
    assert not closed.allowed and closed.error and "could not be checked" in closed.message
    opened = _guard("I am a teapot", on_error="allow").check(USER, role="user")
    assert opened.allowed and opened.error
    with pytest.raises(ShieldError, match="neither 'safe' nor 'unsafe'"):
        _guard("I am a teapot", on_error="raise").check(USER, role="user")


def test_code_interpreter_category_follows_the_guard_size():
    assert "S14" not in _guard("safe").codes
    _Loaded.args.dim = 4096
    try:
        assert "S14" in _guard("safe").codes
        assert "S14" not in _guard("safe", code_interpreter=False).codes
    finally:
        _Loaded.args.dim = 64


class _Fixed:
    def __init__(self, name, verdict, stages=("input", "output")):
        self.name, self.verdict, self.stages, self.calls = name, verdict, frozenset(stages), []

    def check(self, messages, *, role):
        self.calls.append(role)
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict


def test_server_shield_set_order_stages_and_metrics():
    registry = CollectorRegistry()
    pg = _Fixed("prompt-guard", ShieldVerdict(True, shield="prompt-guard"), stages=("input",))
    lg = _Fixed("llama-guard", ShieldVerdict(False, ["S1"], "no", "unsafe\nS1", "llama-guard"))
    shields = ServerShields([pg, lg], registry)
    assert shields.checks_output and shields.names() == ["prompt-guard", "llama-guard"]
    v = asyncio.run(shields.check(USER, "input"))
    assert v.categories == ["S1"] and pg.calls == ["user"] and lg.calls == ["user"]
    asyncio.run(shields.check(USER, "output"))
    assert pg.calls == ["user"] and lg.calls == ["user", "assistant"]  # Prompt Guard is input-only
    text = generate_latest(registry).decode()
    assert 'lhama_shield_verdicts_total{shield="prompt-guard",stage="input",verdict="allowed"} 1.0' in text
    assert 'lhama_shield_verdicts_total{shield="llama-guard",stage="output",verdict="refused"} 1.0' in text
    assert 'lhama_shield_violations_total{category="S1",shield="llama-guard",stage="input"} 1.0' in text
    broken = ServerShields([_Fixed("llama-guard", ShieldError("down"))], registry=CollectorRegistry())
    with pytest.raises(ShieldError):
        asyncio.run(broken.check(USER, "input"))
    assert asyncio.run(ServerShields([], None).check(USER, "input")) is None


def test_shield_specs():
    from lhama.safety import ShieldConfigError
    from lhama.safety.spec import parse_shield_spec

    with pytest.raises(ShieldConfigError, match="expected KIND=PATH"):
        parse_shield_spec("llama-guard")
    with pytest.raises(ShieldConfigError, match="unknown kind"):
        parse_shield_spec("nemo-guard=/tmp")
    with pytest.raises(ShieldConfigError, match="does not exist"):
        parse_shield_spec("llama-guard=/no/such/guard.gguf")
    assert parse_shield_spec("Prompt_Guard=/tmp") == ("prompt-guard", "/tmp")


def test_serve_refuses_a_bad_shield_before_loading_anything():
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "lhama.cli", "serve", "--shield", "llama-guard=/no/such/guard.gguf"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "does not exist" in r.stderr
