"""Sampling parameters and batched logits processing, shared by the reference loop and the engine.

Every function works on a batch: row b of ``logits`` belongs to a sequence with its own
parameters, so the engine can sample a running batch of unrelated requests in one call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from lhama.errors import SamplingError

MAX_TOP_LOGPROBS = 20


class LogitsProcessor(Protocol):
    """Edits one sequence's logits before sampling: ``(output_ids, logits_row) -> logits_row``
    (e.g. ``lhama.generate.constrained.GrammarConstraint``). It may keep state about the output so
    far, so it belongs to exactly one sequence: a request carrying one has ``n == 1``."""

    def __call__(self, output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # CTRL-style, over prompt and output (1: off)
    frequency_penalty: float = 0.0  # OpenAI-style, over output tokens
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # keep going past the tokenizer's stop ids (benchmarks)
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    min_tokens: int = 0
    # Added to these tokens' logits before sampling (OpenAI's ``logit_bias``: -100 bans a token,
    # +100 all but forces it); given as a dict, kept as sorted (token id, bias) pairs.
    logit_bias: tuple[tuple[int, float], ...] = ()
    logits_processor: LogitsProcessor | None = field(default=None, compare=False, hash=False)
    # A per-request LoRA adapter (``lhama.model.lora_batch.LoraRequest``); None: the base model.
    lora: object | None = field(default=None, compare=False, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        object.__setattr__(self, "logit_bias", tuple(sorted((int(t), float(v)) for t, v in bias)))
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def with_(self, **changes) -> SamplingParams:
        return replace(self, **changes)

    def validate(self) -> None:
        def bad(param, msg):
            raise SamplingError(param, msg)

        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            bad("max_tokens", f"must be a positive integer, got {self.max_tokens!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            bad("temperature", f"must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            bad("top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not (0.0 <= self.min_p <= 1.0):
            bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            bad("repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        if not (-2.0 <= self.frequency_penalty <= 2.0):
            bad("frequency_penalty", f"must be in [-2, 2], got {self.frequency_penalty}")
        if not (-2.0 <= self.presence_penalty <= 2.0):
            bad("presence_penalty", f"must be in [-2, 2], got {self.presence_penalty}")
        if not (0 <= self.top_logprobs <= MAX_TOP_LOGPROBS):
            bad("top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}")
        if self.n < 1:
            bad("n", f"must be >= 1, got {self.n}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            bad("min_tokens", f"must be in [0, max_tokens], got {self.min_tokens}")
        if any(not s for s in self.stop):
            bad("stop", "stop strings must be non-empty")
        for t, v in self.logit_bias:
            if t < 0 or not -100.0 <= v <= 100.0:
                bad("logit_bias", f"token ids must be >= 0 and biases in [-100, 100], got {t}: {v}")
        if self.logits_processor is not None and self.n != 1:
            bad("n", "a logits processor belongs to one sequence: send n requests with n=1")


def apply_penalties(
    logits: torch.Tensor,
    output_counts: torch.Tensor,
    seen_mask: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """Penalise logits [B, V] in place.

    ``output_counts`` [B, V]: how often each token was generated so far (OpenAI frequency and
    presence penalties apply to the output only); ``seen_mask`` [B, V]: tokens in prompt or
    output (the repetition penalty divides positive and multiplies negative logits, as in CTRL
    and HF transformers).
    """
    rep = repetition.unsqueeze(1)
    if bool((repetition != 1.0).any()):
        penalised = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen_mask, penalised, logits)
    if bool((frequency != 0).any()) or bool((presence != 0).any()):
        counts = output_counts.to(logits.dtype)
        logits = logits - frequency.unsqueeze(1) * counts - presence.unsqueeze(1) * (counts > 0).to(logits.dtype)
    return logits


def filter_logits(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Temperature, then top-k, top-p (nucleus) and min-p, each row with its own values.
    Rows with temperature 0 are left for greedy selection by the caller."""
    temp = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).unsqueeze(1)
    logits = logits / temp
    V = logits.shape[-1]
    need_k = bool(((top_k > 0) & (top_k < V)).any())
    need_p = bool((top_p < 1.0).any())
    if need_k or need_p:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        remove = torch.zeros_like(sorted_logits, dtype=torch.bool)
        if need_k:
            k = torch.where(top_k > 0, top_k, torch.full_like(top_k, V)).clamp(max=V)
            ranks = torch.arange(V, device=logits.device).unsqueeze(0)
            remove |= ranks >= k.unsqueeze(1)
        if need_p:
            probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(-1)
            # Drop a token when the mass strictly before it already reaches top_p; the top one stays.
            before = probs.cumsum(-1) - probs
            remove |= before >= top_p.unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, sorted_idx, sorted_logits)
    if bool((min_p > 0).any()):
        probs = logits.softmax(-1)
        threshold = probs.max(-1, keepdim=True).values * min_p.unsqueeze(1)
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def sample_from(
    logits: torch.Tensor, greedy: torch.Tensor, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """One token per row: argmax where ``greedy``, else a draw from softmax(logits).

    Draws use the exponential race (argmax p/E with E ~ Exp(1)), which equals multinomial
    sampling and lets each row use its own seeded generator.
    """
    choice = logits.argmax(-1)
    if bool(greedy.all()):
        return choice
    probs = logits.float().softmax(-1)
    noise = torch.empty_like(probs)
    for b, gen in enumerate(generators):
        if not bool(greedy[b]):
            noise[b].exponential_(generator=gen)
    drawn = (probs / noise.clamp_min(1e-20)).argmax(-1)
    return torch.where(greedy, choice, drawn)


@dataclass
class SampleResult:
    tokens: torch.Tensor  # [B]
    logprobs: torch.Tensor | None  # [B] model log-probability of each chosen token
    top_ids: torch.Tensor | None  # [B, K]
    top_logprobs: torch.Tensor | None  # [B, K]


class BatchSampler:
    """Turns a batch of logits plus each row's params and history into next tokens."""

    def __init__(self, vocab_size: int, device: torch.device | str = "cpu"):
        self.vocab_size = vocab_size
        self.device = torch.device(device)

    def sample(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        *,
        generators: Sequence[torch.Generator | None],
        output_counts: torch.Tensor | None = None,
        seen_mask: torch.Tensor | None = None,
        banned: Sequence[Sequence[int]] | None = None,
        outputs: Sequence[Sequence[int]] | None = None,
    ) -> SampleResult:
        """``banned[b]`` lists ids row b may not pick now (stop ids before ``min_tokens``);
        ``outputs[b]`` is row b's output so far, needed when a row's params carry a
        ``logits_processor`` (applied first: logprobs are those of the constrained distribution)."""
        logits = apply_processors(logits.float(), params, outputs)
        raw = logits
        dev = logits.device

        def col(name, dtype=torch.float32):
            return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=dev)

        if output_counts is not None and seen_mask is not None:
            logits = apply_penalties(
                logits,
                output_counts,
                seen_mask,
                col("repetition_penalty"),
                col("frequency_penalty"),
                col("presence_penalty"),
            )
        if any(p.logit_bias for p in params):
            logits = apply_logit_bias(logits, params)
        if banned is not None and any(banned):
            logits = logits.clone()
            for b, ids in enumerate(banned):
                if ids:
                    logits[b, list(ids)] = float("-inf")
        greedy = torch.tensor([p.greedy for p in params], device=dev)
        if not bool(greedy.all()):
            logits = filter_logits(logits, col("temperature"), col("top_k", torch.long), col("top_p"), col("min_p"))
        tokens = sample_from(logits, greedy, generators)

        return with_logprobs(raw, tokens, params)


def with_logprobs(logits: torch.Tensor, tokens: torch.Tensor, params: Sequence[SamplingParams]) -> SampleResult:
    """``tokens`` [B] as a ``SampleResult``, with the logprobs the rows ask for: each chosen
    token's and the batch's widest ``top_logprobs``, from ``logits`` [B, V] as the model (and
    any logits processor) gave them, before penalties, bias and filters."""
    lp = top_ids = top_lp = None
    if any(p.logprobs or p.top_logprobs for p in params):
        logp = logits.log_softmax(-1)
        lp = logp.gather(-1, tokens.unsqueeze(1)).squeeze(1)
        k = max(p.top_logprobs for p in params)
        if k:
            top_lp, top_ids = logp.topk(k, dim=-1)
    return SampleResult(tokens, lp, top_ids, top_lp)


def apply_logit_bias(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """A copy of ``logits`` [B, V] with each row's ``logit_bias`` added. The logprobs a request
    gets stay the model's, as with the penalties."""
    logits = logits.clone()
    V = logits.shape[-1]
    for b, p in enumerate(params):
        if p.logit_bias:
            if p.logit_bias[-1][0] >= V:
                raise SamplingError("logit_bias", f"token ids must be < the vocabulary size {V}")
            ids = torch.tensor([t for t, _ in p.logit_bias], dtype=torch.long, device=logits.device)
            bias = torch.tensor([v for _, v in p.logit_bias], dtype=logits.dtype, device=logits.device)
            logits[b].index_add_(0, ids, bias)
    return logits


def apply_processors(
    logits: torch.Tensor, params: Sequence[SamplingParams], outputs: Sequence[Sequence[int]] | None
) -> torch.Tensor:
    """``logits`` [B, V] with each row's ``logits_processor`` applied (a copy when any is)."""
    rows = [(b, p.logits_processor) for b, p in enumerate(params) if p.logits_processor is not None]
    if not rows:
        return logits
    if outputs is None:
        raise ValueError("a logits_processor needs each row's output ids (outputs=...)")
    if logits.device.type == "cpu":
        # Rows edited through numpy: small torch ops on a busy CPU cost more than the edit itself.
        arr = logits.numpy().copy()
        for b, proc in rows:
            arr[b] = np.asarray(proc(outputs[b], torch.from_numpy(arr[b])))
        return torch.from_numpy(arr)
    logits = logits.clone()
    for b, proc in rows:
        logits[b] = proc(outputs[b], logits[b])
    return logits


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))
