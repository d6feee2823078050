"""What a Llama state dict must contain, and the machinery every format shares to rename and
check it.

The model uses Meta's parameter names; each format module keeps ONE table from our names to its
own (``{i}`` stands for the layer number), and ``NameTable`` turns it into both directions.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lhama.errors import CheckpointError
from lhama.model.args import ModelArgs

LAYER_NAMES = (
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
    "attention_norm.weight",
    "ffn_norm.weight",
)


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint for ``args`` must provide, with its torch shape (out, in)."""
    d, hd, h = args.dim, args.head_dim, args.hidden_dim
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (args.vocab_size, d)}
    per_layer = {
        "attention.wq.weight": (args.n_heads * hd, d),
        "attention.wk.weight": (args.n_kv_heads * hd, d),
        "attention.wv.weight": (args.n_kv_heads * hd, d),
        "attention.wo.weight": (d, args.n_heads * hd),
        "feed_forward.w1.weight": (h, d),
        "feed_forward.w2.weight": (d, h),
        "feed_forward.w3.weight": (h, d),
        "attention_norm.weight": (d,),
        "ffn_norm.weight": (d,),
    }
    for i in range(args.n_layers):
        for name, shape in per_layer.items():
            shapes[f"layers.{i}.{name}"] = shape
    shapes["norm.weight"] = (d,)
    if not args.tie_embeddings:  # tied models reuse tok_embeddings; no separate tensor
        shapes["output.weight"] = (args.vocab_size, d)
    return shapes


def check_state_dict(
    state_dict: dict[str, torch.Tensor], args: ModelArgs, path: object, *, name_of=lambda n: n
) -> None:
    """Raise ``CheckpointError`` naming the file and tensor for the first missing, misshapen or
    unexpected tensor. ``name_of`` maps our name back to the file's own, for the message."""
    expected = expected_shapes(args)
    for name, shape in expected.items():
        t = state_dict.get(name)
        if t is None:
            raise CheckpointError(
                path,
                "tensor missing from the checkpoint; the file is incomplete or was written for a different model shape",
                tensor=name_of(name),
            )
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(path, f"expected a tensor, found {type(t).__name__}", tensor=name_of(name))
        if tuple(t.shape) != shape:
            raise CheckpointError(
                path, f"shape {tuple(t.shape)} does not match the config, which needs {shape}", tensor=name_of(name)
            )
    for name in state_dict:
        if name not in expected:
            hint = " (the config says embeddings are tied)" if name == "output.weight" else ""
            raise CheckpointError(path, f"unexpected tensor, not part of this Llama model{hint}", tensor=name_of(name))


def drop_tied_head(state_dict: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """A tied model's ``state_dict()`` lists the shared head as ``output.weight`` too; accept it
    when it really is the embedding matrix."""
    out = state_dict.get("output.weight")
    emb = state_dict.get("tok_embeddings.weight")
    if not args.tie_embeddings or out is None or emb is None:
        return state_dict
    if out is emb or (out.shape == emb.shape and torch.equal(out, emb)):
        return {k: v for k, v in state_dict.items() if k != "output.weight"}
    return state_dict  # a different head: check_state_dict reports it


class NameTable:
    """Two-way renaming from a table ``{our_pattern: their_pattern}`` with ``{i}`` = layer."""

    def __init__(self, table: dict[str, str]):
        self.table = table
        self._ours = [(self._regex(o), t) for o, t in table.items()]
        self._theirs = [(self._regex(t), o) for o, t in table.items()]

    @staticmethod
    def _regex(pattern: str) -> re.Pattern:
        return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    @staticmethod
    def _apply(name: str, rules) -> str | None:
        for rx, target in rules:
            m = rx.match(name)
            if m:
                return target.format(i=m.group("i")) if "i" in rx.groupindex else target
        return None

    def to_ours(self, their_name: str) -> str | None:
        return self._apply(their_name, self._theirs)

    def to_theirs(self, our_name: str) -> str:
        name = self._apply(our_name, self._ours)
        if name is None:
            raise KeyError(our_name)
        return name


def cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``dtype=None`` keeps the precision the file stores (for conversions that should not
    round or inflate the weights)."""
    return t if dtype is None else t.to(dtype)


def require_file(path: Path) -> Path:
    """Missing paths are the user's typo, not a broken file: say so with the right error."""
    from lhama.errors import ModelNotFoundError

    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file or folder")
    return path
