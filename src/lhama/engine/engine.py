"""``LLMEngine``: continuous batching over a paged KV cache, one synchronous ``step`` at a time.

Requests join and leave the running batch at every step. The engine wires the parts together
and keeps the books; the scheduler decides, the KV manager allocates, the runner executes.
Not thread-safe: ``AsyncEngine`` drives it from one background thread.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from collections.abc import Sequence as Seq

import torch

from lhama.engine.config import EngineConfig
from lhama.engine.cuda_graphs import DecodeGraphs
from lhama.engine.kv_cache_manager import KVCacheManager
from lhama.engine.memory import MemoryPlan, plan_kv_cache
from lhama.engine.metrics import EngineStats
from lhama.engine.outputs import (
    EngineDelta,
    RequestFailedError,
    RequestResult,
    SequenceOutput,
)
from lhama.engine.paged_cache import PagedKVCache
from lhama.engine.runner import ModelRunner
from lhama.engine.scheduler import Scheduler, SchedulerOutput
from lhama.engine.sequence import Request, SeqStatus, Sequence
from lhama.errors import ContextLengthExceededError, SamplingError
from lhama.generate.outputs import TokenStep, check_context
from lhama.generate.sampling import SampleResult, SamplingParams
from lhama.model import Transformer

log = logging.getLogger("lhama.engine")


_I64 = 2**63


class KVCacheCapacityError(ContextLengthExceededError):
    """The request fits the model's context but not the KV cache this server was started with."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, capacity: int, model_context: int):
        super().__init__(prompt_tokens, max_new_tokens, capacity)
        self.args = (
            (
                f"The KV cache of this server holds {capacity} tokens per request (the model supports "
                f"{model_context}), but the request needs {prompt_tokens + max_new_tokens} ({prompt_tokens} in the "
                f"prompt + {max_new_tokens} to generate). Shorten the prompt, lower max_tokens, or restart with a "
                f"larger --kv-cache-gb."
            ),
        )


class LLMEngine:
    def __init__(
        self,
        model: Transformer,
        tokenizer=None,
        config: EngineConfig | None = None,
        *,
        stop_ids: Iterable[int] | None = None,
        decode_graphs: bool | None = None,
    ):
        """``decode_graphs``: None follows ``config.cuda_graphs`` on CUDA devices; True on a CPU runs
        the same padded, bucketed decode steps eagerly (how the graph path is tested without a GPU)."""
        self.model = model.eval()
        self.args = model.args
        self.config = config = config or EngineConfig()
        self.tokenizer = tokenizer
        self.plan: MemoryPlan = plan_kv_cache(self.args, config, dtype=model.dtype, device=model.device)
        log.info("%s", self.plan.describe())
        self.max_model_len = self.plan.max_model_len
        self.kv_manager = KVCacheManager(
            self.plan.num_blocks, config.block_size, enable_prefix_caching=config.enable_prefix_caching
        )
        if decode_graphs is None:
            decode_graphs = config.cuda_graphs and model.device.type == "cuda" and not config.deterministic
        self.cache = PagedKVCache(
            self.args,
            self.plan.num_blocks,
            config.block_size,
            dtype=model.dtype,
            device=model.device,
            spare_blocks=1 if decode_graphs else 0,
            kv_dtype=config.kv_cache_dtype,  # the dtype the plan was sized for
        )
        self.scheduler = Scheduler(config, self.kv_manager)
        self.runner = ModelRunner(
            model,
            self.cache,
            compile=config.compile and not config.deterministic,
            packed_head=config.packed_head,
            deterministic=config.deterministic,
        )
        if decode_graphs:
            max_len = min(self.max_model_len, config.cuda_graph_max_len)
            self.runner.graphs = DecodeGraphs(
                model,
                self.cache,
                self.runner.hidden_decode_fn,
                max_batch=config.max_num_seqs,
                max_blocks=-(-max_len // config.block_size),
                spare_block=self.plan.num_blocks,
                capture=model.device.type == "cuda",
            )
        if stop_ids is None:
            stop_ids = tokenizer.stop_ids if tokenizer is not None else ()
        self.default_stop_ids = frozenset(int(t) for t in stop_ids)
        self.requests: dict[str, Request] = {}
        self._c = {
            k: 0
            for k in (
                "prompt_tokens",
                "prompt_computed",
                "generation",
                "added",
                "finished",
                "aborted",
                "failed",
                "steps",
            )
        }

    @classmethod
    def from_loaded(cls, loaded, config: EngineConfig | None = None) -> LLMEngine:
        """An engine for a ``lhama.loader.LoadedModel``: stops on the tokenizer's and the chat
        format's stop ids."""
        stops = set(getattr(loaded.tokenizer, "stop_ids", ()) or ())
        stops |= set(getattr(loaded.chat_format, "stop_ids", ()) or ())
        return cls(loaded.model, loaded.tokenizer, config, stop_ids=stops)

    # -- requests ------------------------------------------------------------------------
    def check_request(self, prompt_ids: Seq[int], params: SamplingParams) -> None:
        """Raise the error a request would get, without touching engine state (thread-safe)."""
        n = len(prompt_ids)
        check_context(n, params.max_tokens, self.args.max_seq_len)
        if n + params.max_tokens > self.max_model_len:
            raise KVCacheCapacityError(n, params.max_tokens, self.max_model_len, self.args.max_seq_len)
        lo, hi = min(prompt_ids), max(prompt_ids)
        if lo < 0 or hi >= self.args.vocab_size:
            raise SamplingError(
                "prompt", f"token id {lo if lo < 0 else hi} is outside the vocabulary (0..{self.args.vocab_size - 1})"
            )
        if params.stop and self.tokenizer is None:
            raise SamplingError("stop", "stop strings need a tokenizer; this engine has none")
        self._check_ranges(params)

    def _check_ranges(self, params: SamplingParams) -> None:
        """Integers the sampler turns into int64 tensors or generator seeds must fit them (a
        top_k of 2**63 used to fail the step); stop ids must be token ids."""
        if not -_I64 <= params.top_k < _I64:
            raise SamplingError("top_k", f"must be at most {_I64 - 1} (0 disables it), got {params.top_k}")
        if params.seed is not None and not -_I64 <= params.seed <= 2**64 - params.n:
            raise SamplingError("seed", f"must be in [{-_I64}, {2**64 - params.n}], got {params.seed}")
        bad = [t for t in params.stop_token_ids if not 0 <= t < self.args.vocab_size]
        if bad:
            raise SamplingError(
                "stop_token_ids", f"token id {bad[0]} is outside the vocabulary (0..{self.args.vocab_size - 1})"
            )

    def add_request(
        self,
        request_id: str | None,
        prompt_ids: Seq[int],
        params: SamplingParams,
        *,
        stop_ids: Iterable[int] | None = None,
    ) -> Request:
        prompt_ids = [int(t) for t in prompt_ids]
        self.check_request(prompt_ids, params)
        request_id = request_id or uuid.uuid4().hex
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        base = self.default_stop_ids if stop_ids is None else frozenset(int(t) for t in stop_ids)
        stops = (frozenset() if params.ignore_eos else base) | frozenset(params.stop_token_ids)
        req = Request(request_id, prompt_ids, params, stops)
        seq = self._new_seq(req, 0, list(prompt_ids))
        self.requests[request_id] = req
        self.scheduler.add(seq)
        self._c["added"] += 1
        self._c["prompt_tokens"] += len(prompt_ids)
        return req

    def _new_seq(self, req: Request, index: int, tokens: list[int]) -> Sequence:
        seq = Sequence(req, index, tokens, self.args.vocab_size, self.model.device)
        seq.out = SequenceOutput(self.tokenizer, req.stop_ids, req.params.stop, req.params.max_tokens)
        req.seqs.append(seq)
        return seq

    def abort(self, request_id: str) -> bool:
        """Cancel a request (its caller is gone) and free its blocks now; counted as aborted.
        False if it is unknown or already finished."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return False
        req.aborted = True
        for seq in req.seqs:
            if seq.status is not SeqStatus.FINISHED:
                self.scheduler.finish(seq)
        self._c["aborted"] += 1
        return True

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- the step --------------------------------------------------------------------------
    def step(self) -> list[EngineDelta]:
        """Schedule, run the model once, sample, and return every sequence's new output.

        A failure that concerns one request - preparing its inputs, the forward over it, its
        sampling, turning its token into text - fails that request alone: it ends with one
        delta per unfinished sequence whose ``finish_reason`` is "error" and whose ``error``
        is a ``RequestFailedError``; every other request goes on as if it had not been there."""
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            return []
        self._c["steps"] += 1
        failed: dict[Request, RequestFailedError] = {}
        logits, sample_seqs = self._execute(sched, failed)
        for e in sched.scheduled:
            seq = e.seq
            if seq.request not in failed and not (
                e.num_new == 1 and seq.num_output > 0 and e.start == seq.num_tokens - 1
            ):
                self._c["prompt_computed"] += e.num_new
        self.scheduler.update_from_output(sched, frozenset(e.seq for e in sched.scheduled if e.seq.request in failed))
        deltas = self._sample_and_emit(logits, sample_seqs, failed) if logits is not None else []
        return deltas + self._finish_failed(failed)

    def _failure(self, req: Request, stage: str, exc: Exception) -> RequestFailedError:
        log.error("request %s failed in the engine (%s); the others go on", req.request_id, stage, exc_info=exc)
        return RequestFailedError(req.request_id, stage, exc)

    @staticmethod
    def _by_request(items, request_of) -> dict[Request, list]:
        groups: dict[Request, list] = {}
        for it in items:
            groups.setdefault(request_of(it), []).append(it)
        return groups

    def _execute(self, sched: SchedulerOutput, failed: dict) -> tuple[torch.Tensor | None, list[Sequence]]:
        """The runner's forward; if the batch fails, each request's part runs alone so that only
        the culprit fails (the K/V a failed batch wrote is written again, identically)."""
        try:
            return self.runner.execute(sched)
        except Exception as e:  # noqa: BLE001 - isolated below
            groups = self._by_request(sched.scheduled, lambda en: en.seq.request)
            if len(groups) == 1:
                failed[next(iter(groups))] = self._failure(next(iter(groups)), "forward", e)
                return None, []
            log.warning("a batched forward over %d requests failed (%r); running them one by one", len(groups), e)
        parts: list[torch.Tensor] = []
        seqs: list[Sequence] = []
        for req, entries in groups.items():
            mine = {b for en in entries for b in en.blocks.block_ids}
            sub = SchedulerOutput(entries, [(s, d) for s, d in sched.copies if d in mine])
            try:
                logits, sampled = self.runner.execute(sub)
            except Exception as e:  # noqa: BLE001 - this request alone fails
                failed[req] = self._failure(req, "forward", e)
                continue
            if logits is not None:
                parts.append(logits)
                seqs += sampled
        return (torch.cat(parts) if parts else None), seqs

    def _fork(self, sample_seqs: list[Sequence], failed: dict) -> tuple[list[int], list[Sequence]]:
        """Logits row of each sequence to sample, with the ``n - 1`` forks of a finished prompt."""
        rows: list[int] = []
        seqs: list[Sequence] = []
        for r, seq in enumerate(sample_seqs):
            rows.append(r)
            seqs.append(seq)
            if not seq.pending_forks:
                continue
            try:
                for i in range(1, seq.params.n):
                    child = self._new_seq(seq.request, i, list(seq.token_ids))
                    self.scheduler.fork(seq, child)
                    rows.append(r)
                    seqs.append(child)
            except Exception as e:  # noqa: BLE001 - this request alone fails
                failed[seq.request] = self._failure(seq.request, "sample", e)
            seq.pending_forks = 0
        keep = [i for i, s in enumerate(seqs) if s.request not in failed]
        return [rows[i] for i in keep], [seqs[i] for i in keep]

    def _sample(self, logits: torch.Tensor, rows: list[int], seqs: list[Sequence], failed: dict) -> list:
        """One (token, logprob, top ids, top logprobs) per sequence, None where its request failed.
        Sampled as one batch; if that raises, per request, with the seeded generators rewound so
        the healthy requests draw exactly what they would have drawn."""
        gens = [s.generator for s in seqs]
        states = [g.get_state() if g is not None else None for g in gens]
        try:
            return _rows(self.runner.sample(logits, rows, seqs), len(seqs))
        except Exception as e:  # noqa: BLE001 - isolated below
            groups = self._by_request(range(len(seqs)), lambda i: seqs[i].request)
            if len(groups) == 1:
                failed[seqs[0].request] = self._failure(seqs[0].request, "sample", e)
                return [None] * len(seqs)
        for g, st in zip(gens, states):
            if g is not None:
                g.set_state(st)
        out: list = [None] * len(seqs)
        for req, idx in groups.items():
            try:
                part = _rows(self.runner.sample(logits, [rows[i] for i in idx], [seqs[i] for i in idx]), len(idx))
            except Exception as e:  # noqa: BLE001 - this request alone fails
                failed[req] = self._failure(req, "sample", e)
                continue
            for i, row in zip(idx, part):
                out[i] = row
        return out

    def _sample_and_emit(self, logits: torch.Tensor, sample_seqs: list[Sequence], failed: dict) -> list[EngineDelta]:
        rows, seqs = self._fork(sample_seqs, failed)
        sampled = self._sample(logits, rows, seqs, failed) if seqs else []
        deltas: list[EngineDelta] = []
        for seq, row in zip(seqs, sampled):
            req = seq.request
            if row is None or req in failed:
                continue
            try:
                deltas.append(self._emit(seq, *row))
            except Exception as e:  # noqa: BLE001 - this request alone fails
                failed[req] = self._failure(req, "output", e)
        return deltas

    def _emit(self, seq: Sequence, tok: int, lp, top_ids, top_lps) -> EngineDelta:
        p, req = seq.params, seq.request
        step = TokenStep(tok)
        if p.logprobs or p.top_logprobs:
            step.logprob = lp
        if p.top_logprobs:
            k = p.top_logprobs
            step.top_logprobs = list(zip(top_ids[:k], top_lps[:k]))
        seq.append_token(tok)
        text, ids = seq.out.add(step)
        self._c["generation"] += 1
        out = seq.out
        delta = EngineDelta(
            req.request_id,
            seq.index,
            text,
            ids,
            [step],
            out.finish_reason,
            out.stop_reason,
            seq.prompt_len,
            req.num_cached_tokens,
            len(out.token_ids),
        )
        if out.finish_reason is not None:
            self.scheduler.finish(seq)
            if req.finished and self.requests.pop(req.request_id, None) is not None:
                self._c["finished"] += 1
        return delta

    def fail(self, request_id: str, cause: Exception, stage: str = "step") -> list[EngineDelta]:
        """End a request with an error (its blocks are freed at once): the error deltas, or []
        if it is unknown or already finished. Counted as failed, not as aborted."""
        req = self.requests.get(request_id)
        if req is None:
            return []
        return self._finish_failed({req: RequestFailedError(request_id, stage, cause)})

    def _finish_failed(self, failed: dict[Request, RequestFailedError]) -> list[EngineDelta]:
        deltas: list[EngineDelta] = []
        for req, err in failed.items():
            req.error = err
            # One error delta per unfinished sequence (at least one, so every stream learns of it).
            for seq in [s for s in req.seqs if s.status is not SeqStatus.FINISHED] or req.seqs[:1]:
                if seq.status is not SeqStatus.FINISHED:
                    self.scheduler.finish(seq)
                    seq.out.finish_reason = "error"
                deltas.append(
                    EngineDelta(
                        req.request_id,
                        seq.index,
                        "",
                        [],
                        [],
                        "error",
                        None,
                        seq.prompt_len,
                        req.num_cached_tokens,
                        len(seq.out.token_ids),
                        error=err,
                    )
                )
            if self.requests.pop(req.request_id, None) is not None:
                self._c["failed"] += 1
        return deltas

    # -- convenience -----------------------------------------------------------------------
    def generate(
        self,
        prompts: Seq[Seq[int]],
        params: SamplingParams | Seq[SamplingParams],
        *,
        progress: bool = False,
        return_errors: bool = False,
    ) -> list[RequestResult]:
        """Run prompts to completion (offline use, tests); results in prompt order. A request the
        engine failed raises its ``RequestFailedError`` once all are done, unless
        ``return_errors``: then its result carries it (``RequestResult.error``)."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        reqs = [self.add_request(None, p, sp) for p, sp in zip(prompts, params)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(reqs), unit="req")
        done = 0
        while self.has_unfinished():
            self.step()
            if bar is not None:
                now = sum(r.finished for r in reqs)
                bar.update(now - done)
                done = now
        if bar is not None:
            bar.close()
        failed = next((r.error for r in reqs if r.error is not None), None)
        if failed is not None and not return_errors:
            raise failed
        return [self.result(r) for r in reqs]

    @staticmethod
    def result(req: Request) -> RequestResult:
        comps = [s.out.completion(s.prompt_len) for s in sorted(req.seqs, key=lambda s: s.index)]
        return RequestResult(req.request_id, len(req.prompt_ids), req.num_cached_tokens, comps, req.error)

    def stats(self) -> EngineStats:
        kv, c = self.kv_manager, self._c
        return EngineStats(
            num_waiting=len(self.scheduler.waiting),
            num_running=len(self.scheduler.running),
            kv_blocks_total=kv.num_blocks,
            kv_blocks_used=kv.num_used_blocks,
            kv_cache_usage=kv.usage,
            max_model_len=self.max_model_len,
            prompt_tokens_total=c["prompt_tokens"],
            prompt_tokens_computed_total=c["prompt_computed"],
            generation_tokens_total=c["generation"],
            prefix_cache_queries_total=kv.prefix_queries,
            prefix_cache_hits_total=kv.prefix_hits,
            preemptions_total=self.scheduler.num_preemptions,
            requests_added_total=c["added"],
            requests_finished_total=c["finished"],
            requests_aborted_total=c["aborted"],
            requests_failed_total=c["failed"],
            steps_total=c["steps"],
        )


def _rows(res: SampleResult, n: int) -> list[tuple]:
    """A batch's sampling result as one (token, logprob, top ids, top logprobs) per row."""
    toks = res.tokens.tolist()
    lps = res.logprobs.tolist() if res.logprobs is not None else [None] * n
    top_ids = res.top_ids.tolist() if res.top_ids is not None else [None] * n
    top_lps = res.top_logprobs.tolist() if res.top_logprobs is not None else [None] * n
    return list(zip(toks, lps, top_ids, top_lps))
