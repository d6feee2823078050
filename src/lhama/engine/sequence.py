"""A request and its sequences: the state the scheduler, KV manager and runner share.

A request with ``n`` samples starts as one sequence; when its prompt is computed the other
``n - 1`` are forked from it and share its prompt blocks.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from lhama.generate.sampling import SamplingParams, make_generator

if TYPE_CHECKING:
    from lhama.engine.outputs import RequestFailedError, SequenceOutput


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_arrivals = itertools.count()


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]  # effective: tokenizer stops (unless ignore_eos) + params.stop_token_ids
    arrival: int = field(default_factory=lambda: next(_arrivals))
    arrival_time: float = field(default_factory=time.monotonic)
    seqs: list[Sequence] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    admitted: bool = False
    aborted: bool = False
    error: RequestFailedError | None = None  # set when the engine failed this request alone

    @property
    def finished(self) -> bool:
        if self.error is not None:
            return True
        return len(self.seqs) == self.params.n and all(s.status is SeqStatus.FINISHED for s in self.seqs)


class Sequence:
    """One sample of a request: its tokens, how many have KV computed, its sampling state. Where
    its KV lives is the KV manager's business (``KVCacheManager.get_blocks``)."""

    __slots__ = (
        "generator",
        "index",
        "num_computed",
        "num_preemptions",
        "out",
        "output_counts",
        "pending_forks",
        "prompt_len",
        "request",
        "seen_mask",
        "status",
        "token_ids",
    )

    def __init__(self, request: Request, index: int, token_ids: list[int], vocab_size: int, device="cpu"):
        self.request = request
        self.index = index
        self.token_ids = token_ids
        self.prompt_len = len(request.prompt_ids)
        self.num_computed = 0  # tokens with K/V in the cache (the scheduler's count)
        self.status = SeqStatus.WAITING
        p = request.params
        # Sample i of a seeded request draws from seed + i, so sample 0 equals the n=1 output.
        self.generator = make_generator(None if p.seed is None else p.seed + index, device)
        self.output_counts = self.seen_mask = None
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            self.output_counts = torch.zeros(vocab_size, dtype=torch.int32, device=device)
            self.seen_mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen_mask[torch.tensor(token_ids, dtype=torch.long, device=device)] = True
        self.pending_forks = p.n - 1 if index == 0 else 0
        self.out: SequenceOutput | None = None
        self.num_preemptions = 0

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def sort_key(self) -> tuple[int, int]:
        """Scheduling priority: earlier requests first (preemption takes the last)."""
        return (self.request.arrival, self.index)

    def append_token(self, token: int) -> None:
        self.token_ids.append(token)
        if self.output_counts is not None:
            self.output_counts[token] += 1
            self.seen_mask[token] = True

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request.request_id}#{self.index}, {self.status.value}, tokens={self.num_tokens}, "
            f"computed={self.num_computed})"
        )
