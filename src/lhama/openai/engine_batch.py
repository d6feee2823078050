"""Batch lines on an in-process ``LLMEngine`` (``lhama batch``, and each Ray actor of
``lhama batch --ray``): lines are checked by the same rules as the server's routes
(``lhama.openai.requests``), kept in flight up to a bound, and answered as they finish.

A step of the engine that raises cannot say which request caused it, so the lines in flight
are then rerun one at a time: the one that fails alone gets its error record, the others their
answers. When every line fails alone the engine itself is broken and the job stops (a rerun
resumes it).

LoRA adapters (``lhama batch --lora NAME=PATH``, a ``LoraSlots`` over the model): a line whose
``model`` names a loaded adapter runs through it, beside lines for the base model and other
adapters in the same engine steps; its ``system_fingerprint`` names the adapter. Other names
run on the base model, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lhama.engine.config import EngineConfig
from lhama.engine.engine import LLMEngine
from lhama.generate.constrained import GrammarCompiler
from lhama.openai.batch import Answer, BatchLine, BatchSummary, run_batch
from lhama.openai.chat_tools import final_message
from lhama.openai.fingerprint import model_settings, system_fingerprint
from lhama.openai.requests import (
    PreparedRequest,
    RequestLimits,
    engine_requests,
    parse_request,
    prepare,
)
from lhama.openai.responses import (
    chat_completion,
    chat_logprobs,
    completion_logprobs,
    content_steps,
    finish_reason,
    new_id,
    now,
    text_completion,
    usage,
)

log = logging.getLogger("lhama.openai")


@dataclass
class _Job:
    line: BatchLine
    prep: PreparedRequest
    requests: list = field(default_factory=list)  # (first choice index, engine Request)

    @property
    def finished(self) -> bool:
        return all(r.finished for _, r in self.requests)


class EngineExecutor:
    """Runs batch lines on ``engine`` (built from ``loaded`` and ``config`` when not given)."""

    def __init__(
        self,
        loaded,
        engine: LLMEngine | None = None,
        config: EngineConfig | None = None,
        *,
        max_in_flight: int | None = None,
        limits: RequestLimits | None = None,
        loras=None,
    ):
        self.loaded = loaded
        self.loras = loras  # lhama.model.lora_batch.LoraSlots (placed before the engine is built), or None
        self.engine = engine or LLMEngine.from_loaded(loaded, config)
        self.settings = model_settings(loaded, self.engine.config)
        self.fingerprint = system_fingerprint(self.settings)
        self.max_in_flight = max_in_flight or 2 * self.engine.config.max_num_seqs
        self.limits = limits or RequestLimits()
        self._compiler: GrammarCompiler | None = None

    @property
    def compiler(self) -> GrammarCompiler:
        if self._compiler is None:  # built on first use: most batches never constrain output
            self._compiler = GrammarCompiler.for_model(self.loaded)
        return self._compiler

    # -- one line ------------------------------------------------------------------------------
    def prepare(self, line: BatchLine) -> PreparedRequest:
        req = parse_request(line.url, line.body, default_model=self.loaded.name)
        prep = prepare(self.loaded, req, self.compiler, context=self.engine.max_model_len, limits=self.limits)
        lora = self.loras.acquire(req.model) if self.loras is not None else None
        if lora is not None:  # the line names a loaded adapter
            prep.params = prep.params.with_(lora=lora)
        return prep

    def _submit(self, line: BatchLine) -> _Job:
        job = _Job(line, self.prepare(line))
        try:
            for index, prompt, params in engine_requests(job.prep, self.compiler):
                job.requests.append((index, self.engine.add_request(None, prompt, params)))
        except BaseException:
            self._abort(job)
            raise
        return job

    def _abort(self, job: _Job) -> None:
        for _, r in job.requests:
            self.engine.abort(r.request_id)

    def body(self, job: _Job) -> dict:
        """The response body of a finished job."""
        prep, tok = job.prep, self.loaded.tokenizer
        choices, cached = [], 0
        seen_prompts = set()
        for first, req in job.requests:
            result = self.engine.result(req)
            if getattr(result, "error", None) is not None:
                raise result.error
            if first // prep.params.n not in seen_prompts:
                seen_prompts.add(first // prep.params.n)
                cached += result.cached_tokens
            choices += [(first + k, comp) for k, comp in enumerate(result.completions)]
        choices.sort(key=lambda c: c[0])
        out_tokens = sum(len(c.token_ids) for _, c in choices)
        used = usage(sum(len(p) for p in prep.prompts), out_tokens, cached)
        want_lp = prep.params.logprobs
        lora = prep.params.lora
        fp = self.fingerprint if lora is None else system_fingerprint(self.settings, lora.name)
        if prep.kind == "chat":
            fmt = self.loaded.chat_format
            out = []
            for i, c in choices:
                message, is_call = final_message(prep.plan, fmt, c.text, c.token_ids, c.stop_reason)
                lp = {"content": chat_logprobs(tok, content_steps(c.steps, c.token_ids))} if want_lp else None
                out.append(
                    {
                        "index": i,
                        "message": message,
                        "logprobs": lp,
                        "finish_reason": finish_reason(c.finish_reason, is_call),
                    }
                )
            return chat_completion(new_id("chatcmpl"), now(), prep.req.model, out, used, fingerprint=fp)
        out = [
            {
                "index": i,
                "text": c.text,
                "logprobs": completion_logprobs(tok, content_steps(c.steps, c.token_ids)) if want_lp else None,
                "finish_reason": c.finish_reason or "stop",
            }
            for i, c in choices
        ]
        return text_completion(new_id("cmpl"), now(), prep.req.model, out, used, fingerprint=fp)

    # -- many lines ------------------------------------------------------------------------------
    def run(self, lines: Sequence[BatchLine], answer: Answer) -> None:
        pending = iter(lines)
        in_flight: list[_Job] = []
        exhausted = False
        try:
            while True:
                while not exhausted and sum(len(j.requests) for j in in_flight) < self.max_in_flight:
                    line = next(pending, None)
                    if line is None:
                        exhausted = True
                        break
                    try:
                        in_flight.append(self._submit(line))
                    except Exception as e:  # noqa: BLE001 - this line's error record
                        answer(line, e)
                if not in_flight:
                    if exhausted:
                        return
                    continue
                try:
                    self.engine.step()
                except Exception as e:  # noqa: BLE001 - find the line that caused it
                    log.warning("an engine step failed (%r); rerunning its %d lines one at a time", e, len(in_flight))
                    jobs, in_flight = in_flight, []
                    self._isolate(jobs, answer, e)
                    continue
                in_flight = self._answer_finished(in_flight, answer)
        finally:
            for job in in_flight:  # interrupted (KeyboardInterrupt...): free the engine for reuse
                self._abort(job)

    def _answer_finished(self, jobs: list[_Job], answer: Answer) -> list[_Job]:
        still = []
        for job in jobs:
            if not job.finished:
                still.append(job)
                continue
            try:
                result: dict | BaseException = self.body(job)
            except Exception as e:  # noqa: BLE001 - this line's error record
                result = e
            answer(job.line, result)
        return still

    def _isolate(self, jobs: list[_Job], answer: Answer, error: Exception) -> None:
        for job in jobs:
            self._abort(job)
        outcomes: list[tuple[BatchLine, dict | BaseException]] = []
        for job in jobs:
            alone = None
            try:
                alone = self._submit(job.line)
                while not alone.finished:
                    self.engine.step()
                outcomes.append((job.line, self.body(alone)))
            except Exception as e:  # noqa: BLE001 - this line's error record
                if alone is not None:
                    self._abort(alone)
                outcomes.append((job.line, e))
        if len(jobs) > 1 and all(isinstance(r, BaseException) for _, r in outcomes):
            raise error  # every line fails alone: the engine is broken, not a line
        for line, result in outcomes:
            answer(line, result)


def run_batch_file(
    loaded,
    in_path: str | Path,
    out_path: str | Path,
    config: EngineConfig | None = None,
    *,
    progress: bool = True,
    engine: LLMEngine | None = None,
    max_in_flight: int | None = None,
    loras=None,
) -> BatchSummary:
    """``lhama batch``: answer every line of ``in_path`` into ``out_path`` on one in-process
    engine (appending; resumes an earlier run). ``loras``: a ``LoraSlots`` over ``loaded.model``
    whose adapters lines pick by ``model`` name."""
    executor = EngineExecutor(loaded, engine, config, max_in_flight=max_in_flight, loras=loras)
    return run_batch(in_path, out_path, executor, progress=progress)
