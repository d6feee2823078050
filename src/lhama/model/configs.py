"""Every named Llama config in one table, as data (shapes as Meta published them)."""

from __future__ import annotations

from dataclasses import dataclass

from lhama.errors import ModelNotFoundError
from lhama.model.args import ModelArgs, RopeScaling, swiglu_hidden_dim


@dataclass(frozen=True)
class NamedConfig:
    name: str
    args: ModelArgs
    tokenizer: str  # "llama2" (SentencePiece) or "llama3" (tiktoken)
    published_params: float  # as reported by Meta / the HF model card, for sanity checks


def _llama2(dim, n_layers, n_heads, n_kv_heads, hidden_dim) -> ModelArgs:
    return ModelArgs(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=32000,
        hidden_dim=hidden_dim,
        norm_eps=1e-5,
        rope_theta=10000.0,
        max_seq_len=4096,
    )


def _llama3(dim, n_layers, n_heads, multiple_of, ffn_mult, *, ctx, scaling=None, tied=False) -> ModelArgs:
    return ModelArgs(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=8,
        vocab_size=128256,
        hidden_dim=swiglu_hidden_dim(dim, multiple_of, ffn_mult),
        norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=scaling,
        max_seq_len=ctx,
        tie_embeddings=tied,
    )


_R31 = RopeScaling(factor=8.0)
_R32 = RopeScaling(factor=32.0)

CONFIGS: dict[str, NamedConfig] = {
    c.name: c
    for c in [
        NamedConfig("llama2-7b", _llama2(4096, 32, 32, 32, 11008), "llama2", 6.74e9),
        NamedConfig("llama2-13b", _llama2(5120, 40, 40, 40, 13824), "llama2", 13.02e9),
        NamedConfig("llama2-70b", _llama2(8192, 80, 64, 8, 28672), "llama2", 68.98e9),
        NamedConfig("llama3-8b", _llama3(4096, 32, 32, 1024, 1.3, ctx=8192), "llama3", 8.03e9),
        NamedConfig("llama3-70b", _llama3(8192, 80, 64, 4096, 1.3, ctx=8192), "llama3", 70.55e9),
        NamedConfig("llama3.1-8b", _llama3(4096, 32, 32, 1024, 1.3, ctx=131072, scaling=_R31), "llama3", 8.03e9),
        NamedConfig("llama3.1-70b", _llama3(8192, 80, 64, 4096, 1.3, ctx=131072, scaling=_R31), "llama3", 70.55e9),
        NamedConfig("llama3.1-405b", _llama3(16384, 126, 128, 4096, 1.2, ctx=131072, scaling=_R31), "llama3", 405.85e9),
        NamedConfig(
            "llama3.2-1b", _llama3(2048, 16, 32, 256, 1.5, ctx=131072, scaling=_R32, tied=True), "llama3", 1.24e9
        ),
        NamedConfig(
            "llama3.2-3b", _llama3(3072, 28, 24, 256, 1.0, ctx=131072, scaling=_R32, tied=True), "llama3", 3.21e9
        ),
        # Tiny shapes with the real vocabularies: every code path of the big models, runnable in
        # a unit test with random weights.
        NamedConfig(
            "tiny-llama3",
            ModelArgs(
                dim=64,
                n_layers=2,
                n_heads=4,
                n_kv_heads=2,
                vocab_size=128256,
                hidden_dim=192,
                rope_theta=500000.0,
                rope_scaling=_R31,
                max_seq_len=2048,
            ),
            "llama3",
            0,
        ),
        NamedConfig(
            "tiny-llama2",
            ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=32000, hidden_dim=192, max_seq_len=1024),
            "llama2",
            0,
        ),
    ]
}


def get_config(name: str) -> NamedConfig:
    try:
        return CONFIGS[name.lower()]
    except KeyError:
        raise ModelNotFoundError(f"unknown model config '{name}'; known configs: {', '.join(CONFIGS)}") from None
