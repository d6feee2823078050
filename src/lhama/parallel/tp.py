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

``load_tp_model`` reads each rank's blocks straight from the checkpoint (``shard_load``), so a
rank's memory is its share of the weights, never the whole model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lhama.errors import ConfigError
from lhama.model import ModelArgs, Transformer
from lhama.parallel.runtime import local_device
from lhama.parallel.vocab import VOCAB_SHARDED, VocabGather, VocabShard, all_reduce_hook, pad_rows

# Row blocks (column-parallel) and column blocks (row-parallel) of each layer's weights.
_COLWISE = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
            "feed_forward.w1.weight", "feed_forward.w3.weight")
_ROWWISE = ("attention.wo.weight", "feed_forward.w2.weight")


def check_tp(args: ModelArgs, tp: int) -> None:
    if tp < 1:
        raise ConfigError(f"--tp must be >= 1, got {tp}")
    for what, n in (("attention heads", args.n_heads), ("key-value heads", args.n_kv_heads),
                    ("MLP hidden units", args.hidden_dim)):
        if n % tp:
            raise ConfigError(f"--tp {tp} cannot split the model's {n} {what} evenly; choose a tensor-parallel "
                              f"size that divides {args.n_heads} heads, {args.n_kv_heads} KV heads and "
                              f"{args.hidden_dim} MLP units")


def shard_args(args: ModelArgs, tp: int) -> ModelArgs:
    """The shape one rank's model has: 1/tp of the heads and of the MLP, same head width."""
    check_tp(args, tp)
    return args.with_(n_heads=args.n_heads // tp, n_kv_heads=args.n_kv_heads // tp,
                      hidden_dim=args.hidden_dim // tp, head_dim_override=args.head_dim)


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


def shard_for_tp(full_state: dict[str, torch.Tensor], args: ModelArgs, rank: int, tp: int, *,
                 dtype=torch.float32, device="cpu", group=None) -> Transformer:
    """This rank's model from full weights already in memory (e.g. a model just trained): only
    its slices are kept. Loading from a file goes through ``load_tp_model``, which never holds
    the full weights."""
    from lhama.parallel.shard_load import empty_shard_model

    model = empty_shard_model(shard_args(args, tp), dtype, device, rank, tp)
    state = shard_state_dict(full_state, rank, tp)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (args.tie_embeddings and m == "output.weight")]
    if missing or unexpected:
        raise ConfigError(f"tensor-parallel shard: missing {missing}, unexpected {unexpected}")
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.full_args = args  # the whole model's shape, for reports and plans
    if tp > 1:
        attach_collectives(model, group)
    return model.eval()


def load_tp_model(spec, rank: int, tp: int, *, dtype=None, device=None, chat_format=None, tokenizer=None,
                  max_seq_len=None, seed: int = 0, group=None, quantize=None):
    """``lhama.loader.load_model`` for one rank: the same ``LoadedModel`` with a sharded model.

    A checkpoint is read block by block: the rank reads only the rows/columns it owns and never
    holds the full state dict (``lhama.parallel.shard_load``); ``model.load_report`` says how much it
    holds. A named config draws the same random weights on every rank (same seed), a tensor at a
    time, and keeps its slices. ``quantize`` ("int8", "int4", "fp8" or a ``QuantConfig``)
    quantizes the rank's shard after loading, before the collectives are hooked in.
    """
    import time

    from lhama.loader import LoadedModel, _format_of, default_dtype, resolve_model_spec
    from lhama.model import get_config
    from lhama.parallel.shard_load import load_shard_model, random_shard_model
    from lhama.tokenizer import load_chat_format, load_tokenizer

    t0 = time.perf_counter()
    device = local_device(device)
    dtype = dtype or default_dtype(device)
    target = resolve_model_spec(spec)
    if isinstance(target, str):
        named = get_config(target)
        args = named.args.with_(max_seq_len=max_seq_len) if max_seq_len else named.args
        model, report = random_shard_model(args, rank, tp, seed=seed, dtype=dtype, device=device)
        tok_src = fmt_src = tokenizer or named.tokenizer
        name, source, path = named.name, "config", None
    else:
        model, args, report = load_shard_model(target, rank, tp, dtype=dtype, device=device, max_seq_len=max_seq_len)
        tok_src, fmt_src = tokenizer or target, target
        name = target.stem if target.is_file() else target.name
        source, path = _format_of(target), target
    model.full_args = args  # the whole model's shape, for reports and plans
    model.load_report = report
    quant = None
    if quantize is not None:
        from lhama.quant import QuantConfig, quantize_model

        qcfg = QuantConfig.parse(quantize)
        quant = quantize_model(model, qcfg) if qcfg is not None else None
    if tp > 1:
        attach_collectives(model, group)
    model.eval()
    tok = load_tokenizer(tok_src)
    fmt = load_chat_format(fmt_src, tok, override=chat_format)
    return LoadedModel(model, tok, fmt, args, name, source, path, time.perf_counter() - t0, quant)


def tp_info(model: nn.Module) -> str:
    args = getattr(model, "full_args", None)
    if args is None or not dist.is_initialized():
        return "tensor parallel: off"
    return (f"tensor parallel: {dist.get_world_size()} ranks ({dist.get_backend()}), "
            f"{model.args.n_heads}/{args.n_heads} heads, {model.args.n_kv_heads}/{args.n_kv_heads} KV heads, "
            f"{model.args.hidden_dim}/{args.hidden_dim} MLP units"
            + (f", {shard.per_rank}/{args.vocab_size} vocab rows" if (shard := getattr(model, "vocab_shard", None)) else "")
            + " per rank"
            + (f"; {report.describe()}" if (report := getattr(model, "load_report", None)) else ""))
