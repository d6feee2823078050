"""Tensor parallelism over ``torch.distributed`` (NCCL on GPUs, gloo on CPUs), Megatron-style.

Each rank builds the one ``Transformer`` with the *shard's* shape: its share of the query and KV
heads and of the MLP width (``shard_args``). wq/wk/wv and w1/w3 keep a block of rows (column-
parallel: each rank computes its heads / its slice of the hidden layer, no communication);
wo and w2 keep the matching block of columns (row-parallel: each rank's product is a partial
sum), and one all-reduce after each of them restores the full activation. Two all-reduces per
layer, as in Megatron-LM and gpt-fast's tp.py. The token embedding and the LM head are split by
vocab rows (``lhama.parallel.vocab``): one all-reduce after the lookup, one all-gather of the logits.
Only the norms are replicated.

Grouped-query attention splits cleanly when the KV heads divide by the rank count: rank r
keeps query heads [r*H/tp, (r+1)*H/tp) and exactly the KV heads those use.

This module holds the split (which block of each tensor a rank keeps) and the collectives;
``shard_load`` builds a rank's model: ``load_tp_model`` reads each rank's blocks straight from
the checkpoint, so a rank's memory is its share of the weights, never the whole model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lhama.errors import ConfigError
from lhama.model import ModelArgs, Transformer
from lhama.parallel.vocab import VOCAB_SHARDED, VocabGather, VocabShard, all_reduce_hook, pad_rows

# Row blocks (column-parallel) and column blocks (row-parallel) of each layer's weights.
_COLWISE = (
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "feed_forward.w1.weight",
    "feed_forward.w3.weight",
)
_ROWWISE = ("attention.wo.weight", "feed_forward.w2.weight")


def check_tp(args: ModelArgs, tp: int) -> None:
    if tp < 1:
        raise ConfigError(f"--tp must be >= 1, got {tp}")
    for what, n in (
        ("attention heads", args.n_heads),
        ("key-value heads", args.n_kv_heads),
        ("MLP hidden units", args.hidden_dim),
    ):
        if n % tp:
            raise ConfigError(
                f"--tp {tp} cannot split the model's {n} {what} evenly; choose a tensor-parallel "
                f"size that divides {args.n_heads} heads, {args.n_kv_heads} KV heads and "
                f"{args.hidden_dim} MLP units"
            )


def shard_args(args: ModelArgs, tp: int) -> ModelArgs:
    """The shape one rank's model has: 1/tp of the heads and of the MLP, same head width."""
    check_tp(args, tp)
    return args.with_(
        n_heads=args.n_heads // tp,
        n_kv_heads=args.n_kv_heads // tp,
        hidden_dim=args.hidden_dim // tp,
        head_dim_override=args.head_dim,
    )


def params_per_rank(args: ModelArgs, tp: int) -> int:
    """Parameters one rank holds: 1/tp of every matrix (the vocab rounded up to a multiple of tp,
    KV heads replicated when tp exceeds them, as vLLM does) plus the replicated norms. tp=1:
    ``args.n_params()``."""
    hd, kv_heads = args.head_dim, max(args.n_kv_heads // tp, 1)
    attn = 2 * args.dim * (args.n_heads // tp) * hd + 2 * args.dim * kv_heads * hd
    layer = attn + 3 * args.dim * (args.hidden_dim // tp) + 2 * args.dim
    vocab = VocabShard(args.vocab_size, 0, tp).per_rank * args.dim
    return args.n_layers * layer + vocab * (1 if args.tie_embeddings else 2) + args.dim


def owned_range(name: str, shape: tuple[int, ...], rank: int, tp: int) -> tuple[int | None, int, int]:
    """(dim, start, stop): the block of the full tensor ``name`` that ``rank`` keeps; dim None
    for replicated tensors (kept whole). Vocab rows: the real rows only (the last rank's block
    may be short; its parameter is padded with zeros)."""
    if name in VOCAB_SHARDED and tp > 1:
        shard = VocabShard(shape[0], rank, tp)
        return 0, shard.start, shard.stop
    dim = 0 if name.endswith(_COLWISE) else 1 if name.endswith(_ROWWISE) else None
    if dim is None:
        return None, 0, 0
    size = shape[dim] // tp  # check_tp guarantees it divides
    return dim, rank * size, (rank + 1) * size


def shard_tensor(name: str, t: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
    """The rank's parameter for the full tensor ``t`` (vocab shards padded with zero rows)."""
    dim, start, stop = owned_range(name, tuple(t.shape), rank, tp)
    if dim is None:
        return t
    block = t.narrow(dim, start, stop - start)
    return pad_rows(block, VocabShard(t.shape[0], rank, tp).per_rank) if name in VOCAB_SHARDED else block


def shard_state_dict(state_dict: dict[str, torch.Tensor], rank: int, tp: int) -> dict[str, torch.Tensor]:
    return {k: shard_tensor(k, v, rank, tp).contiguous() for k, v in state_dict.items()}


def attach_collectives(model: Transformer, group=None) -> None:
    """Hook the communication into a rank's model: an all-reduce after every row-parallel layer
    (wo, w2) and after the vocab-parallel lookup, an all-gather of the head's logit blocks.
    Call it last: quantization (``lhama.quant``) swaps modules and would drop their hooks."""
    hook = all_reduce_hook(group)
    for layer in model.layers:
        layer.attention.wo.register_forward_hook(hook)
        layer.feed_forward.w2.register_forward_hook(hook)
    shard = getattr(model, "vocab_shard", None)
    if shard is not None:
        model.tok_embeddings.register_forward_hook(hook)
        model.vocab_gather = VocabGather(shard, group)
        model.output.register_forward_hook(model.vocab_gather)


def tp_info(model: nn.Module) -> str:
    args = getattr(model, "full_args", None)
    if args is None or not dist.is_initialized():
        return "tensor parallel: off"
    return (
        f"tensor parallel: {dist.get_world_size()} ranks ({dist.get_backend()}), "
        f"{model.args.n_heads}/{args.n_heads} heads, {model.args.n_kv_heads}/{args.n_kv_heads} KV heads, "
        f"{model.args.hidden_dim}/{args.hidden_dim} MLP units"
        + (f", {shard.per_rank}/{args.vocab_size} vocab rows" if (shard := getattr(model, "vocab_shard", None)) else "")
        + " per rank"
        + (f"; {report.describe()}" if (report := getattr(model, "load_report", None)) else "")
    )
