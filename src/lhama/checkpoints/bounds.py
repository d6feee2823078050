"""Sizes a checkpoint's metadata may claim, checked before anything is allocated from them.

A params.json, config.json or GGUF header is untrusted input: ``n_layers`` 10**9 would make
even ``lhama info`` build a billion-entry tensor table. Every size is first held to a bound far
above any published Llama (405B: 126 layers, dim 16384, hidden 53248, 128 heads, vocab 128256,
128K context); the reader then holds them to the tensor table of the file, whose extents the
format's own parser has checked against the file's size (``CheckpointReader.validate``).
"""

from __future__ import annotations

from lhama.errors import CheckpointError
from lhama.model.args import ModelArgs

# Generous ceilings: 8x the largest published Llama in each dimension.
MAX_SIZES = {
    "n_layers": 1024,
    "dim": 131072,
    "hidden_dim": 524288,
    "n_heads": 1024,
    "n_kv_heads": 1024,
    "head_dim": 4096,
    "vocab_size": 1 << 22,
    "max_seq_len": 1 << 24,
}


def check_bounds(args: ModelArgs, path: object) -> None:
    """Raise ``CheckpointError`` when a size is beyond any model lhama could run."""
    for key, limit in MAX_SIZES.items():
        value = getattr(args, key)
        if value > limit:
            raise CheckpointError(
                path,
                f"metadata claims {key} = {value:,}, beyond the sane limit of {limit:,}; "
                "the file's metadata is corrupt or hostile",
            )
