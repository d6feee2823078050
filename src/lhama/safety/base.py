"""What every shield shares: the ``Shield`` protocol, its verdict, and its typed errors.

The server, the agent loop (``lhama.tools.agent``) and ``lhama safety check`` only ever talk to
shields through ``check(messages, role=...)``: this is the one ``Shield`` protocol they share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from lhama.errors import LhamaError

Role = Literal["user", "assistant"]  # "user": an input check; "assistant": an output check
ON_ERROR = ("refuse", "allow", "raise")  # fail closed, fail open, or surface the error


class ShieldError(LhamaError, RuntimeError):
    """A shield that could not reach a verdict (unreadable model answer, missing checkpoint,
    conversation it cannot render). The server answers 503: the request may be retried."""

    http_status = 503
    code = "shield_error"


class ShieldConfigError(LhamaError, ValueError):
    """A ``--shield`` spec or shield option that cannot work (unknown kind or category...)."""

    http_status = 400
    code = "invalid_shield_config"


@dataclass(frozen=True)
class ShieldVerdict:
    """One shield's judgement of one conversation.

    ``categories`` name what was violated: Llama Guard codes (``S1`` ... ``S14``) or Prompt
    Guard labels (``JAILBREAK``, ``INJECTION``). ``message`` is the refusal to show the user
    (empty when allowed); ``raw`` is what the classifier said, for logs and audits."""

    allowed: bool
    categories: list[str] = field(default_factory=list)
    message: str = ""
    raw: str = ""
    shield: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # set when the shield failed and ``on_error`` decided the verdict

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "allowed": self.allowed,
            "shield": self.shield,
            "categories": list(self.categories),
            "message": self.message,
            "raw": self.raw,
        }
        if self.scores:
            out["scores"] = dict(self.scores)
        if self.error:
            out["error"] = self.error
        return out

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


@runtime_checkable
class Shield(Protocol):
    """``check`` judges the last ``role`` turn of ``messages`` (OpenAI-style dicts): ``"user"``
    for input checks before generation, ``"assistant"`` for output checks of a reply.

    lhama's shields also carry ``name`` and ``stages`` (a subset of {"input", "output"}: where
    the server applies them); other objects with only ``check`` are treated as both stages."""

    def check(self, messages: list[dict], *, role: str) -> ShieldVerdict: ...


def check_role(role: str) -> Role:
    if role not in ("user", "assistant"):
        raise ShieldConfigError(f"a shield checks role 'user' (input) or 'assistant' (output), got {role!r}")
    return role  # type: ignore[return-value]


def check_on_error(value: str) -> str:
    if value not in ON_ERROR:
        raise ShieldConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {value!r}")
    return value


def failed_verdict(shield: str, on_error: str, error: str, refusal: str) -> ShieldVerdict:
    """The verdict when a shield could not judge: refused (fail closed) or allowed (fail open);
    ``on_error="raise"`` raises ``ShieldError`` instead."""
    if on_error == "raise":
        raise ShieldError(f"{shield}: {error}")
    if on_error == "allow":
        return ShieldVerdict(True, [], "", "", shield, error=error)
    return ShieldVerdict(False, [], refusal, "", shield, error=error)
