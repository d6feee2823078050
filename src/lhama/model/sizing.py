"""Parameter counts and memory figures for ``lhama info`` (and, later, the memory planner)."""

from __future__ import annotations

from dataclasses import dataclass

from lhama.model.args import ModelArgs

# Bytes per weight. int4 is group-wise (32 weights share one fp16 scale): 4 + 16/32 bits.
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2 / 32}
GIB = 1024**3


@dataclass(frozen=True)
class ModelSize:
    n_params: int
    weights_bytes: dict[str, float]
    kv_bytes_per_1k_tokens: float  # bf16 cache
    kv_bytes_full_context: float

    def as_dict(self) -> dict:
        return {
            "parameters": self.n_params,
            "weights_gib": {k: v / GIB for k, v in self.weights_bytes.items()},
            "kv_cache_gib_per_1k_tokens_bf16": self.kv_bytes_per_1k_tokens / GIB,
            "kv_cache_gib_full_context_bf16": self.kv_bytes_full_context / GIB,
        }


def model_size(args: ModelArgs) -> ModelSize:
    n = args.n_params()
    per_tok = args.kv_cache_bytes_per_token(2.0)
    return ModelSize(n, {k: n * b for k, b in WEIGHT_BYTES.items()}, per_tok * 1024, per_tok * args.max_seq_len)


def human_count(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def describe(args: ModelArgs, name: str = "") -> str:
    size = model_size(args)
    rope = "none"
    if args.rope_scaling:
        s = args.rope_scaling
        rope = (
            f"llama3 (factor {s.factor:g}, low/high freq {s.low_freq_factor:g}/{s.high_freq_factor:g}, "
            f"original context {s.original_context})"
        )
    lines = [
        f"model            {name}",
        f"layers           {args.n_layers}",
        f"dim              {args.dim}",
        f"heads            {args.n_heads} query / {args.n_kv_heads} key-value (head dim {args.head_dim})",
        f"ffn hidden       {args.hidden_dim} (SwiGLU)",
        f"vocab            {args.vocab_size}",
        f"context          {args.max_seq_len}",
        f"rope theta       {args.rope_theta:g}",
        f"rope scaling     {rope}",
        f"embeddings       {'tied' if args.tie_embeddings else 'untied'}",
        f"norm eps         {args.norm_eps:g}",
        f"parameters       {human_count(size.n_params)} ({size.n_params:,})",
        "weights memory   "
        + ", ".join(
            f"{k} {size.weights_bytes[k] / 1e9:.{1 if size.weights_bytes[k] > 1e10 else 3}f} GB ({size.weights_bytes[k] / GIB:.2f} GiB)"
            for k in ("bf16", "fp8", "int4")
        ),
        f"KV cache (bf16)  {size.kv_bytes_per_1k_tokens / 2**20:.1f} MiB per 1K tokens, "
        f"{size.kv_bytes_full_context / GIB:.2f} GiB for the full {args.max_seq_len}-token context",
    ]
    return "\n".join(lines)
