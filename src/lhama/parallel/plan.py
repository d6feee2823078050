"""``lhama plan``: will this model, at this dtype and context, fit on these GPUs?

Per device: the weights (what one tensor-parallel rank holds: every matrix split, the embedding
and LM head by vocab rows, only the norms whole), the KV cache for ``batch`` sequences of
``context`` tokens (KV heads split too, replicated when there are more GPUs than KV heads) and
the activations of one engine step (a prefill chunk through the widest layer, the sampled
logits, the gathered K/V of the longest context). The sizes come from ``lhama.model.sizing``
(bytes per weight) and ``ModelArgs.kv_cache_bytes_per_token`` (the formula the engine's KV
planner uses), so the plan and the engine never disagree about a byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lhama.errors import ConfigError
from lhama.model import ModelArgs
from lhama.model.sizing import GIB, WEIGHT_BYTES
from lhama.parallel.tp import params_per_rank

KV_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0, "fp8": 1.0, "int8": 1.0}
# Activations run in bf16 on GPUs whatever the weight format (weight-only quantization).
ACT_BYTES = 2.0


@dataclass(frozen=True)
class PlanRequest:
    dtype: str = "bf16"  # weights: a key of lhama.model.sizing.WEIGHT_BYTES
    context: int | None = None  # tokens per sequence (None: the model's full context)
    batch: int = 1  # sequences held in the KV cache at full context at once
    gpus: int = 1
    gpu_mem_gib: float = 80.0
    kv_dtype: str | None = None  # None: bf16, or fp8 when the weights are fp8
    utilization: float = 0.9  # share of each GPU the engine may use (the rest: CUDA context, fragmentation)
    chunk_tokens: int = 2048  # tokens per prefill step (chunked prefill)

    def __post_init__(self) -> None:
        if self.dtype not in WEIGHT_BYTES:
            raise ConfigError(f"--dtype {self.dtype!r}: choose one of {', '.join(WEIGHT_BYTES)}")
        if self.kv_dtype is not None and self.kv_dtype not in KV_BYTES:
            raise ConfigError(f"--kv-dtype {self.kv_dtype!r}: choose one of {', '.join(KV_BYTES)}")
        for name in ("batch", "gpus", "chunk_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.context is not None and self.context < 1:
            raise ConfigError(f"--context must be >= 1, got {self.context}")
        if not self.gpu_mem_gib > 0:
            raise ConfigError(f"--gpu-mem must be > 0 GiB, got {self.gpu_mem_gib}")
        if not 0 < self.utilization <= 1:
            raise ConfigError(f"--gpu-util must be in (0, 1], got {self.utilization}")

    @property
    def kv(self) -> str:
        return self.kv_dtype or ("fp8" if self.dtype == "fp8" else "bf16")


@dataclass(frozen=True)
class DevicePlan:
    """What one GPU holds, in bytes."""

    weights: float
    kv_cache: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations


@dataclass(frozen=True)
class Plan:
    model: str
    request: PlanRequest
    context: int
    model_context: int
    n_params: int
    weights_total: float  # bytes, whole model
    kv_per_token: float  # bytes, whole model, one token
    per_device: DevicePlan
    usable_per_device: float
    fits: bool
    max_context: int  # longest context that fits `batch` sequences here (0: not even the weights)
    suggestions: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        d = asdict(self)
        d["per_device"]["total"] = self.per_device.total
        d["request"]["kv_dtype"] = self.request.kv
        return d

    def describe(self) -> str:
        r, dev = self.request, self.per_device
        g = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
        lines = [
            f"model        {self.model}: {self.n_params / 1e9:.2f}B parameters, context {self.context} "
            f"(model supports {self.model_context}), batch {r.batch}",
            f"setup        {r.gpus} x {r.gpu_mem_gib:g} GiB GPU, weights {r.dtype}, KV cache {r.kv}, "
            f"{r.utilization:.0%} of each GPU usable",
            f"weights      {self.weights_total / 1e9:.1f} GB in all ({self.weights_total / GIB:.1f} GiB)",
            f"KV cache     {self.kv_per_token / 1024:.1f} KiB per token, "
            f"{self.kv_per_token * self.context * r.batch / GIB:.2f} GiB for {r.batch} x {self.context} tokens",
            "per GPU:",
            f"  weights     {g(dev.weights)}",
            f"  KV cache    {g(dev.kv_cache)}",
            f"  activations {g(dev.activations)}  (prefill chunk of {r.chunk_tokens} tokens, logits, K/V gather)",
            f"  total       {g(dev.total)}  of {self.usable_per_device / GIB:.2f} GiB usable",
            ("FITS" if self.fits else "DOES NOT FIT")
            + (
                f": up to {self.max_context} tokens per sequence fit (batch {r.batch})"
                if self.max_context
                else ": the weights alone exceed the usable memory"
            ),
        ]
        return "\n".join(lines + [f"  - {s}" for s in self.suggestions])


def _kv_heads_per_device(args: ModelArgs, gpus: int) -> float:
    # More GPUs than KV heads: each GPU keeps a copy of the head its query heads use (vLLM does the same).
    return max(args.n_kv_heads / gpus, 1.0)


def device_plan(args: ModelArgs, req: PlanRequest, context: int) -> DevicePlan:
    # What one rank of lhama's tensor parallelism holds: 1/gpus of every matrix, the embedding and
    # LM head included (vocab-parallel, padded to a multiple of gpus), plus the norms.
    weights = params_per_rank(args, req.gpus) * WEIGHT_BYTES[req.dtype]
    kv_token = 2 * args.n_layers * _kv_heads_per_device(args, req.gpus) * args.head_dim * KV_BYTES[req.kv]
    kv = kv_token * context * req.batch
    chunk = min(req.chunk_tokens, context * req.batch)
    # Widest point of a layer: residual + normed input (dim each) and w1, w3, silu(w1)*w3 (hidden/tp each).
    layer = chunk * (2 * args.dim + 3 * args.hidden_dim / req.gpus) * ACT_BYTES
    logits = req.batch * args.vocab_size * 4 * 2  # fp32 logits and their softmax
    gather = 2 * context * _kv_heads_per_device(args, req.gpus) * args.head_dim * KV_BYTES[req.kv]
    return DevicePlan(weights, kv, layer + logits + gather)


def _max_context(args: ModelArgs, req: PlanRequest, usable: float, limit: int) -> int:
    if device_plan(args, req, 1).total > usable:
        return 0
    lo, hi = 1, limit
    while lo < hi:  # totals grow with the context: bisect for the largest that fits
        mid = (lo + hi + 1) // 2
        if device_plan(args, req, mid).total <= usable:
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan(args: ModelArgs, req: PlanRequest, name: str = "") -> Plan:
    context = req.context or args.max_seq_len
    if req.gpus > 1 and (args.n_heads % req.gpus or args.hidden_dim % req.gpus):
        raise ConfigError(
            f"{req.gpus} GPUs cannot split {args.n_heads} attention heads and a {args.hidden_dim}-wide "
            f"MLP evenly; use a GPU count that divides both (e.g. "
            f"{', '.join(str(d) for d in (1, 2, 4, 8, 16) if not args.n_heads % d and not args.hidden_dim % d)})"
        )
    usable = req.gpu_mem_gib * GIB * req.utilization
    dev = device_plan(args, req, context)
    fits = dev.total <= usable
    max_ctx = _max_context(args, req, usable, max(context, args.max_seq_len))
    notes: list[str] = []
    if context > args.max_seq_len:
        notes.append(
            f"the model supports {args.max_seq_len} tokens; a longer context needs RoPE scaling it was not trained with"
        )
    if not fits:
        if max_ctx:
            notes.append(f"cap the context at {max_ctx} tokens (--max-model-len {max_ctx}), or lower --batch")
        for gpus in (2, 4, 8, 16, 32, 64):
            if gpus > req.gpus and not args.n_heads % gpus and not args.hidden_dim % gpus:
                other = PlanRequest(**{**asdict(req), "gpus": gpus})
                if device_plan(args, other, context).total <= usable:
                    notes.append(f"{gpus} x {req.gpu_mem_gib:g} GiB GPUs hold it at {req.dtype}")
                    break
        for dt in ("fp8", "int8", "int4"):
            if WEIGHT_BYTES[dt] < WEIGHT_BYTES[req.dtype]:
                other = PlanRequest(**{**asdict(req), "dtype": dt})
                if device_plan(args, other, context).total <= usable:
                    notes.append(f"{dt} weights fit on these {req.gpus} GPU(s) (lhama serve --quantize {dt})")
                    break
    elif max_ctx > context and context < args.max_seq_len:
        notes.append(f"room for up to {min(max_ctx, args.max_seq_len)} tokens per sequence")
    return Plan(
        name,
        req,
        context,
        args.max_seq_len,
        args.n_params(),
        args.n_params() * WEIGHT_BYTES[req.dtype],
        args.kv_cache_bytes_per_token(KV_BYTES[req.kv]),
        dev,
        usable,
        fits,
        max_ctx,
        tuple(notes),
    )
