"""Prompt Guard through a real (tiny, locally trained) Hugging Face classifier checkpoint."""

from __future__ import annotations

import pytest

from lhama.safety import PromptGuardConfig, PromptGuardShield, ShieldConfigError
from tests import needs
from tests.safety.classifier_training import BENIGN, INJECTION, JAILBREAK, build_prompt_guard

needs.module("transformers")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = build_prompt_guard(tmp_path_factory.mktemp("prompt-guard"))
    assert build_prompt_guard.final_loss < 0.3, build_prompt_guard.final_loss
    return path


@pytest.fixture(scope="module")
def guard(classifier):
    return PromptGuardShield(PromptGuardConfig(str(classifier), threshold=0.5, stride_tokens=8), device="cpu")


def test_labels_come_from_the_checkpoint(guard):
    assert guard.labels == ["BENIGN", "INJECTION", "JAILBREAK"]
    assert guard.benign == "BENIGN"
    assert guard.user_labels == ("JAILBREAK",)  # Meta's guidance: users may give instructions
    assert guard.tool_labels == ("INJECTION", "JAILBREAK")
    assert guard.window == 64


def test_benign_user_message_passes(guard):
    v = guard.check([{"role": "user", "content": BENIGN[0]}], role="user")
    assert v.allowed and v.categories == []
    assert v.scores["BENIGN"] > 0.5


def test_jailbreak_user_message_is_refused(guard):
    v = guard.check([{"role": "user", "content": f"{BENIGN[1]} {JAILBREAK}"}], role="user")
    assert not v.allowed
    assert v.categories == ["JAILBREAK"]
    assert "JAILBREAK" in v.message and v.scores["JAILBREAK"] >= 0.5


def test_injection_in_a_tool_result_is_refused_but_not_in_a_user_turn(guard):
    conv = [
        {"role": "user", "content": "summarise the page"},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "fetch", "arguments": "{}"}}]},
        {"role": "tool", "content": f"{BENIGN[2]} {INJECTION}"},
    ]
    v = guard.check(conv, role="user")
    assert not v.allowed and v.categories[0] == "INJECTION"
    # The same words typed by the user are an instruction, not an attack, under the default labels.
    assert guard.check([{"role": "user", "content": INJECTION}], role="user").allowed
    # ... unless the operator asks for injection checks on user turns too.
    strict = PromptGuardShield(
        PromptGuardConfig(str(guard.config.path), threshold=0.5, user_labels=("INJECTION", "JAILBREAK")), device="cpu"
    )
    assert strict.check([{"role": "user", "content": INJECTION}], role="user").categories == ["INJECTION"]


def test_long_text_is_scored_in_windows(guard):
    filler = " ".join(BENIGN * 6)  # several windows of 64 tokens
    text = f"{filler} {JAILBREAK} {filler}"
    assert len(guard.windows(text)) > 3
    assert all(len(w) <= guard.window for w in guard.windows(text))
    v = guard.check([{"role": "user", "content": text}], role="user")
    assert not v.allowed and v.categories == ["JAILBREAK"]
    # Without the phrase the worst window scores lower (a toy classifier is not calibrated enough
    # on long benign text to promise it stays under 0.5 in every window).
    assert guard.scores(filler)["JAILBREAK"] < v.scores["JAILBREAK"]


def test_only_the_newest_turns_are_judged_and_output_is_not(guard):
    old_attack = [
        {"role": "user", "content": JAILBREAK},
        {"role": "assistant", "content": "no"},
        {"role": "user", "content": BENIGN[3]},
    ]
    assert guard.check(old_attack, role="user").allowed
    assert guard.check(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": JAILBREAK}], role="assistant"
    ).allowed


def test_threshold_and_bad_configs(classifier):
    lenient = PromptGuardShield(PromptGuardConfig(str(classifier), threshold=1.0), device="cpu")
    assert lenient.check([{"role": "user", "content": JAILBREAK}], role="user").allowed
    with pytest.raises(ShieldConfigError, match="threshold"):
        PromptGuardConfig(str(classifier), threshold=0)
    with pytest.raises(ShieldConfigError, match="not among the classifier's labels"):
        PromptGuardShield(PromptGuardConfig(str(classifier), user_labels=("MALICIOUS",)), device="cpu")
    with pytest.raises(ShieldConfigError, match="no config.json"):
        PromptGuardShield(PromptGuardConfig(str(classifier / "nope")))
    with pytest.raises(ShieldConfigError, match="role"):
        lenient.check([{"role": "user", "content": "x"}], role="system")
