"""One tensor-parallel rank's model, built straight from the checkpoint: the rank reads only the
blocks it owns, tensor by tensor, and never holds the full state dict.

The rank's model is allocated once at its shard's shape (``shard_args``: 1/tp of the heads and
MLP), empty; each owned block is read from the file by the lazy reader full loading uses too
(``lhama.checkpoints.open_reader``) and copied into its parameter, so the peak is this rank's
weights plus one block in flight. With a 70B model at bf16 on 8 ranks that is ~17.6 GB per
rank (embeddings and head split by vocab rows too), not 140 GB. Named configs (random weights)
draw each full tensor in ``build_model``'s order from the same seeded generator and keep the
slice: every rank agrees, and with one process, at the cost of one full tensor at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lhama.checkpoints import open_reader
from lhama.checkpoints.layout import expected_shapes
from lhama.errors import CheckpointError, ConfigError
from lhama.model import ModelArgs, Transformer
from lhama.parallel.runtime import local_device
from lhama.parallel.tp import attach_collectives, check_tp, owned_range, shard_args, shard_state_dict
from lhama.parallel.vocab import VOCAB_SHARDED, shard_vocab

Reader = Callable[[str, "int | None", int, int], torch.Tensor]


@dataclass(frozen=True)
class ShardLoadReport:
    """What one rank loaded. Bytes are at the model's dtype."""

    rank: int
    tp: int
    source: str  # "gguf" | "hf" | "meta" | "config"
    bytes_loaded: int  # this rank's weights (tied embeddings counted once)
    bytes_replicated: int  # of which every rank holds a whole copy: the norms (tp=1: everything)
    bytes_full: int  # the whole model
    largest_block: int  # the biggest block read at once: the load's only transient
    seconds: float

    def describe(self) -> str:
        mb = 1e6
        return (
            f"rank {self.rank}/{self.tp} read its shard from the {self.source} checkpoint: "
            f"{self.bytes_loaded / mb:.1f} MB of the model's {self.bytes_full / mb:.1f} MB "
            f"({100 * self.bytes_loaded / max(self.bytes_full, 1):.0f}%; {self.bytes_replicated / mb:.1f} MB "
            f"replicated on every rank) in {self.seconds:.1f} s"
        )


def empty_shard_model(local: ModelArgs, dtype: torch.dtype, device, rank: int = 0, tp: int = 1) -> Transformer:
    """The shard-shaped model with uninitialised weights allocated directly at ``dtype``
    (``build_model`` would allocate fp32 first and convert: twice the memory for a moment).
    With tp > 1 the embedding and head hold only the rank's vocab rows (``lhama.parallel.vocab``)."""
    with torch.device("meta"):
        model = Transformer(local).to(dtype)
        if tp > 1:
            shard_vocab(model, rank, tp)
    model = model.to_empty(device=device)  # Transformer._apply recomputes the RoPE buffer there
    if local.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model


def _fill(
    model: Transformer,
    names: list[str],
    shapes: dict[str, tuple[int, ...]],
    read: Reader,
    rank: int,
    tp: int,
    where: object,
) -> tuple[int, int]:
    """Copy each owned block into its parameter; returns (replicated bytes, largest block)."""
    params = dict(model.named_parameters())
    replicated = largest = 0
    with torch.no_grad():
        for name in names:
            dim, start, stop = owned_range(name, shapes[name], rank, tp)
            block = read(name, dim, start, stop)
            p = params[name]
            if name in VOCAB_SHARDED and dim == 0 and block.shape[0] < p.shape[0]:
                p[block.shape[0] :].zero_()  # the last rank's padding rows: never looked up, logits cut
                p = p[: block.shape[0]]
            if tuple(block.shape) != tuple(p.shape):  # a reader bug, never the user's file
                raise CheckpointError(
                    where,
                    f"read a block of shape {tuple(block.shape)} for a parameter of shape {tuple(p.shape)}",
                    tensor=name,
                )
            p.copy_(block)
            nbytes = p.numel() * p.element_size()
            largest = max(largest, block.numel() * block.element_size())
            if dim is None:
                replicated += nbytes
            del block
    return replicated, largest


def _report(
    model: Transformer, args: ModelArgs, rank: int, tp: int, source: str, replicated: int, largest: int, t0: float
) -> ShardLoadReport:
    loaded = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() dedups the tie
    elem = model.tok_embeddings.weight.element_size()
    return ShardLoadReport(
        rank, tp, source, loaded, replicated, args.n_params() * elem, largest, time.perf_counter() - t0
    )


def load_shard_model(
    path: str | Path,
    rank: int,
    tp: int,
    *,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    max_seq_len: int | None = None,
) -> tuple[Transformer, ModelArgs, ShardLoadReport]:
    """(rank's model, the full model's args, report) reading only this rank's blocks of ``path``
    (GGUF file, HF folder or Meta folder). The model has no all-reduce hooks yet."""
    t0 = time.perf_counter()
    with open_reader(path) as src:  # every tensor present and of the right shape, from headers
        args = src.args.with_(max_seq_len=max_seq_len) if max_seq_len else src.args
        check_tp(args, tp)
        model = empty_shard_model(shard_args(args, tp), dtype, device, rank, tp)
        replicated, largest = _fill(model, list(expected_shapes(args)), src.shapes, src.read, rank, tp, src.path)
        source = src.format
    return model, args, _report(model, args, rank, tp, source, replicated, largest, t0)


def random_shard_model(
    args: ModelArgs, rank: int, tp: int, *, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"
) -> tuple[Transformer, ShardLoadReport]:
    """This rank's slices of ``build_model(args, init="random", seed=seed)``'s weights, drawn one
    full tensor at a time in the same order from the same generator (norms are ones)."""
    t0 = time.perf_counter()
    check_tp(args, tp)
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in Transformer(args).named_parameters()}  # build_model's order
    gen = torch.Generator(device=device).manual_seed(seed)

    def draw(name, dim, start, stop):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            return torch.ones(shape, device=device)
        full = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).mul_(0.02)
        return full if dim is None else full.narrow(dim, start, stop - start)

    model = empty_shard_model(shard_args(args, tp), dtype, device, rank, tp)
    replicated, largest = _fill(model, list(shapes), shapes, draw, rank, tp, "<random weights>")
    return model, _report(model, args, rank, tp, "config", replicated, largest, t0)


def shard_for_tp(
    full_state: dict[str, torch.Tensor],
    args: ModelArgs,
    rank: int,
    tp: int,
    *,
    dtype=torch.float32,
    device="cpu",
    group=None,
) -> Transformer:
    """This rank's model from full weights already in memory (e.g. a model just trained): only
    its slices are kept. Loading from a file goes through ``load_tp_model``, which never holds
    the full weights."""
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


def load_tp_model(
    spec,
    rank: int,
    tp: int,
    *,
    dtype=None,
    device=None,
    chat_format=None,
    tokenizer=None,
    max_seq_len=None,
    seed: int = 0,
    group=None,
    quantize=None,
):
    """``lhama.loader.load_model`` for one rank: the same ``LoadedModel`` with a sharded model.

    A checkpoint is read block by block: the rank reads only the rows/columns it owns and never
    holds the full state dict (``lhama.parallel.shard_load``); ``model.load_report`` says how much it
    holds. A named config draws the same random weights on every rank (same seed), a tensor at a
    time, and keeps its slices. ``quantize`` ("int8", "int4", "fp8" or a ``QuantConfig``)
    quantizes the rank's shard after loading, before the collectives are hooked in.
    """
    import time

    from lhama.checkpoints import detect_format
    from lhama.loader import LoadedModel, default_dtype, resolve_model_spec
    from lhama.model import get_config
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
        source, path = detect_format(target), target
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
