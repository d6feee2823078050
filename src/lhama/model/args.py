"""The shape of a Llama model as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from lhama.errors import ConfigError


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 frequency-dependent RoPE scaling (``rope_type: llama3`` in HF configs).

    Wavelengths shorter than ``original_context / high_freq_factor`` keep their frequency, those
    longer than ``original_context / low_freq_factor`` are divided by ``factor``, and the band in
    between is interpolated smoothly. Llama 3.1 uses factor 8, Llama 3.2 factor 32.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    hidden_dim: int  # SwiGLU inner width
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    # Explicit head width for checkpoints where it isn't dim // n_heads (none of Meta's, but
    # GGUF and HF configs may carry it); 0 means dim // n_heads.
    head_dim_override: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ModelArgs.{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}) for grouped-query attention"
            )
        if not self.head_dim_override and self.dim % self.n_heads:
            raise ConfigError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head dimension {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.dim // self.n_heads

    def with_(self, **changes) -> ModelArgs:
        return replace(self, **changes)

    # -- derived sizes ---------------------------------------------------------------------
    def n_params(self) -> int:
        """Exact number of parameters of the model this config builds."""
        hd = self.head_dim
        attn = self.dim * self.n_heads * hd * 2 + self.dim * self.n_kv_heads * hd * 2
        mlp = 3 * self.dim * self.hidden_dim
        per_layer = attn + mlp + 2 * self.dim
        emb = self.vocab_size * self.dim
        return self.n_layers * per_layer + emb * (1 if self.tie_embeddings else 2) + self.dim

    def kv_cache_bytes_per_token(self, bytes_per_element: float = 2.0) -> float:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * bytes_per_element


def swiglu_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's rule (params.json) for the SwiGLU width: 2/3 of 4*dim, scaled, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)
