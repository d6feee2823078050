"""Shields in the server: which run on requests and which on replies, running them off the event
loop, Prometheus counts of their verdicts, and the OpenAI-shaped refusal.

A refused request still answers 200 - the refusal is the assistant's message with
``finish_reason: "content_filter"`` (as OpenAI and Azure report filtered content) plus a
``safety`` object naming the shield, the stage and the violated categories.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from lhama.openai import responses
from lhama.openai.chat_tools import messages_as_dicts
from lhama.safety.base import ShieldVerdict
from lhama.safety.categories import CATEGORIES
from lhama.server.streaming import SSE_DONE, sse

log = logging.getLogger("lhama.safety")
ROLE_OF_STAGE = {"input": "user", "output": "assistant"}


class ServerShields:
    def __init__(self, shields: Sequence, registry=None):
        self.shields = list(shields)
        self.by_stage = {
            stage: [s for s in self.shields if stage in getattr(s, "stages", ("input", "output"))]
            for stage in ROLE_OF_STAGE
        }
        self._metrics = _ShieldMetrics(registry) if registry is not None else None

    def __bool__(self) -> bool:
        return bool(self.shields)

    @property
    def checks_output(self) -> bool:
        return bool(self.by_stage["output"])

    def names(self) -> list[str]:
        return [getattr(s, "name", type(s).__name__) for s in self.shields]

    async def check(self, messages: list[dict], stage: str) -> ShieldVerdict | None:
        """The first refusing verdict of the ``stage`` shields, or None when all allow. Shields run
        in a worker thread: a guard model's forward must not stall the event loop."""
        for shield in self.by_stage[stage]:
            name = getattr(shield, "name", type(shield).__name__)
            t0 = time.perf_counter()
            try:
                verdict = await asyncio.to_thread(shield.check, messages, role=ROLE_OF_STAGE[stage])
            except Exception:
                if self._metrics:
                    self._metrics.verdicts.labels(name, stage, "error").inc()
                raise
            if self._metrics:
                self._metrics.record(name, stage, verdict, time.perf_counter() - t0)
            if not verdict.allowed:
                log.info("%s refused the %s: %s", name, stage, verdict.raw.replace("\n", " ") or verdict.error)
                return verdict
        return None


class _ShieldMetrics:
    def __init__(self, registry):
        from prometheus_client import Counter, Histogram

        self.verdicts = Counter(
            "lhama_shield_verdicts",
            "shield verdicts by shield, stage (input/output) and verdict (allowed/refused/error)",
            ["shield", "stage", "verdict"],
            registry=registry,
        )
        self.violations = Counter(
            "lhama_shield_violations",
            "violated categories reported by refusing shields",
            ["shield", "stage", "category"],
            registry=registry,
        )
        self.seconds = Histogram(
            "lhama_shield_check_seconds",
            "time one shield took to judge",
            ["shield", "stage"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )

    def record(self, name: str, stage: str, v: ShieldVerdict, seconds: float) -> None:
        kind = "allowed" if v.allowed else "refused"
        if v.error:
            kind = "error"  # judged by on_error, not by the shield
        self.verdicts.labels(name, stage, kind).inc()
        for c in v.categories:
            self.violations.labels(name, stage, c).inc()
        self.seconds.labels(name, stage).observe(seconds)


def safety_info(v: ShieldVerdict, stage: str) -> dict:
    """The ``safety`` object of a refused choice."""
    info = {
        "stage": stage,
        "shield": v.shield,
        "categories": list(v.categories),
        "category_names": [CATEGORIES[c].title if c in CATEGORIES else c for c in v.categories],
    }
    if v.error:
        info["error"] = v.error
    return info


def refusal_message(v: ShieldVerdict) -> dict:
    # ``refusal`` is OpenAI's field for a declined answer; ``content`` carries it too so clients
    # that only show content still show why.
    return {"role": "assistant", "content": v.message, "refusal": v.message}


# -- /v1/chat/completions ---------------------------------------------------------------------
def _shields(state) -> ServerShields | None:
    s = getattr(state, "shields", None)
    return s if s else None


def screens_replies(state) -> bool:
    """True when replies must be judged whole before any of their text is sent."""
    s = _shields(state)
    return bool(s and s.checks_output)


async def screen_request(state, prep) -> ShieldVerdict | None:
    """Input check of a prepared chat (once: the verdict is kept on ``prep.verdict``, where
    ``False`` means allowed). Returns the refusing verdict or None."""
    if prep.verdict is None:
        s = _shields(state)
        verdict = None
        if s:
            verdict = await s.check(messages_as_dicts(prep.req), "input")
        prep.verdict = verdict or False
    return prep.verdict or None


async def screen_choice(state, prep, choice: dict) -> dict:
    """Output check of one finished choice (``message`` + ``finish_reason``): a refused reply is
    replaced by the refusal, with ``finish_reason: "content_filter"``."""
    s = _shields(state)
    if not s or not s.checks_output:
        return choice
    reply = {k: v for k, v in choice["message"].items() if k in ("role", "content", "tool_calls")}
    verdict = await s.check([*messages_as_dicts(prep.req), reply], "output")
    if verdict is None:
        return choice
    # The refused reply's logprobs would spell it out token by token: they go too.
    return {
        **choice,
        "message": refusal_message(verdict),
        "finish_reason": "content_filter",
        "safety": safety_info(verdict, "output"),
        **({"logprobs": None} if "logprobs" in choice else {}),
    }


def _refused_choices(prep, verdict: ShieldVerdict) -> list[dict]:
    return [
        {
            "index": c.index,
            "message": refusal_message(verdict),
            "logprobs": None,
            "finish_reason": "content_filter",
            "safety": safety_info(verdict, "input"),
        }
        for c in prep.gen.choices
    ]


def _usage(prep) -> dict:
    return responses.usage(sum(len(x) for x in prep.gen.prompts), 0)


def refused_body(prep) -> dict:
    """The whole response to a request an input shield refused: nothing was generated."""
    return responses.chat_completion(
        prep.id,
        prep.created,
        prep.req.model,
        _refused_choices(prep, prep.verdict),
        _usage(prep),
        fingerprint=prep.gen.state.fingerprint(prep.req.model),
    )


async def refused_events(prep):
    """The same refusal as server-sent events: role, refusal text, then ``content_filter``."""
    req = prep.req
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    fp = prep.gen.state.fingerprint(req.model)

    def chunk(choices: list[dict], usage=None) -> bytes:
        if include_usage:
            return sse(responses.chat_chunk(prep.id, prep.created, req.model, choices, usage=usage, fingerprint=fp))
        return sse(responses.chat_chunk(prep.id, prep.created, req.model, choices, fingerprint=fp))

    for c in _refused_choices(prep, prep.verdict):
        i, msg = c["index"], c["message"]
        yield chunk(
            [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        )
        yield chunk(
            [
                {
                    "index": i,
                    "delta": {"content": msg["content"], "refusal": msg["refusal"]},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
        yield chunk(
            [{"index": i, "delta": {}, "logprobs": None, "finish_reason": "content_filter", "safety": c["safety"]}]
        )
    if include_usage:
        yield chunk([], _usage(prep))
    yield SSE_DONE
