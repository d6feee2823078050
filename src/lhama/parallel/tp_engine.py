"""The continuous-batching engine over tensor-parallel ranks.

Rank 0 runs the whole ``LLMEngine`` (scheduler, KV bookkeeping, sampling, the server). Before
every forward it broadcasts the step's inputs (token ids, positions, the attention metadata,
block copies) to the other ranks; they run the same forward on their shard of the model and of
the KV cache, and the all-reduces inside the model keep every rank in step. The LM head is
vocab-parallel, so every rank also computes its block of the logits of the rows rank 0 samples
from, for the all-gather that gives rank 0 the full logits; only rank 0 samples. This is vLLM's
driver/worker split without its RPC layer: the step inputs *are* the protocol.

The control messages go over a gloo group (pickled CPU tensors) even when the model's
all-reduces use NCCL, so a follower can wait for the next step without holding a GPU stream.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import torch
import torch.distributed as dist

from lhama.engine.config import EngineConfig
from lhama.engine.engine import LLMEngine
from lhama.engine.paged_cache import PagedKVCache
from lhama.engine.runner import ModelRunner

log = logging.getLogger("lhama.parallel")

_STEP, _STOP, _INIT, _FORWARD = "step", "stop", "init", "forward"


def _move(obj, device):
    """Tensors inside (nested) dataclasses and lists moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: _move(getattr(obj, f.name), device) for f in dataclasses.fields(obj) if f.init}
        )
    if isinstance(obj, list):
        return [_move(x, device) for x in obj]
    return obj


class ControlChannel:
    """Rank 0 -> followers messages (one broadcast each)."""

    def __init__(self):
        self.group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None

    def send(self, msg) -> None:
        dist.broadcast_object_list([msg], src=0, group=self.group)

    def recv(self):
        box = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def _gathering_head(runner: ModelRunner) -> ModelRunner:
    """The engine's head: this rank's logit block (the runner's packed CPU kernel, or the head
    module without its all-gather hook), gathered on rank 0 only, which alone samples."""
    gather = getattr(runner.model, "vocab_gather", None)
    if gather is not None:
        local = runner.model.output.forward if runner._head is runner.model.output else runner._head
        runner._head = lambda h: gather.gather_to_first(local(h))
    return runner


class TPModelRunner(ModelRunner):
    """Rank 0's runner: every step's inputs go to the followers before the step runs."""

    channel: ControlChannel
    lock: threading.Lock  # one forward at a time across the engine thread and other callers

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _gathering_head(self)

    def execute(self, sched):
        with self.lock:
            return super().execute(sched)

    def prepare(self, sched):
        inp = super().prepare(sched)
        # ``execute`` has already applied sched.copies to this rank's cache; followers do it first too.
        self.channel.send(
            (
                _STEP,
                list(sched.copies),
                _move(inp.tokens, "cpu"),
                _move(inp.positions, "cpu"),
                _move(inp.meta, "cpu"),
                _move(inp.sample_rows, "cpu") if inp.sample_seqs else None,
            )
        )
        return inp


def tp_engine(loaded, config: EngineConfig | None, channel: ControlChannel) -> LLMEngine:
    """Rank 0: the engine, with the followers told the cache geometry and sent every step."""
    engine = LLMEngine.from_loaded(loaded, config)
    # Every rank must hold the same number of blocks (the budget rank 0 measured), not its own plan.
    channel.send(
        (_INIT, engine.plan.num_blocks, engine.config.block_size, engine.config.compile, engine.config.packed_head)
    )
    runner = TPModelRunner(
        engine.model, engine.cache, compile=engine.config.compile, packed_head=engine.config.packed_head
    )
    runner.channel, runner.lock = channel, threading.Lock()
    engine.runner = runner
    _mirror_direct_forwards(engine.model, channel, runner.lock)
    return engine


def _mirror_direct_forwards(model, channel: ControlChannel, lock: threading.Lock) -> None:
    """Forwards outside the engine (``/v1/embeddings`` calls ``model.hidden_states``) must run on
    every rank too, or the all-reduces would pair with the wrong messages. The runner bound the
    original method before this, so only other callers go through here."""
    original = model.hidden_states

    def hidden_states(tokens, positions, cache=None):
        if cache is not None:
            raise RuntimeError("with tensor parallelism, cached forwards go through the engine")
        with lock:
            channel.send((_FORWARD, _move(tokens, "cpu"), _move(positions, "cpu")))
            return original(tokens, positions)

    model.hidden_states = hidden_states


def stop_followers(channel: ControlChannel) -> None:
    channel.send((_STOP,))


@torch.inference_mode()
def follow(model, channel: ControlChannel) -> int:
    """Ranks > 0: mirror rank 0's forwards until it says stop; returns the number of steps run."""
    msg = channel.recv()
    if msg[0] == _STOP:
        return 0
    _, num_blocks, block_size, compile, packed_head = msg
    cache = PagedKVCache(model.args, num_blocks, block_size, dtype=model.dtype, device=model.device)
    vocab_parallel = getattr(model, "vocab_gather", None) is not None
    runner = _gathering_head(ModelRunner(model, cache, compile=compile, packed_head=packed_head and vocab_parallel))
    log.info("rank %d: following rank 0 with %d KV blocks", dist.get_rank(), num_blocks)
    steps = 0
    while True:
        msg = channel.recv()
        if msg[0] == _STOP:
            return steps
        if msg[0] == _FORWARD:  # a forward outside the engine (embeddings): no cache
            model.hidden_states(msg[1].to(model.device), msg[2].to(model.device))
            continue
        _, copies, tokens, positions, meta, sample_rows = msg
        dev = model.device
        cache.copy_blocks(copies)
        cache.meta = _move(meta, dev)
        try:
            fn = runner._hidden_decode if runner._hidden_decode is not None and not meta.prefills else runner._hidden
            h = fn(tokens.to(dev), positions.to(dev), cache)
        finally:
            cache.meta = None
        if sample_rows is not None and vocab_parallel:  # this rank's logit block, for rank 0's all-gather
            runner._head(h[0].index_select(0, sample_rows.to(dev)))
        steps += 1
