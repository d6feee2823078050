"""``lhama serve --tp N``: one server over N tensor-parallel ranks.

Launched plainly (``lhama serve --tp 2``), the process becomes rank 0 and starts ranks 1..N-1
as copies of itself on this machine (same arguments, RANK/WORLD_SIZE in the environment, like
torchrun does). Launched by ``torchrun --nproc-per-node N -m lhama.cli serve --tp N`` (or across
machines with torchrun's rendezvous flags), it uses the environment torchrun set up. Rank 0 runs
the HTTP server and the engine; the others follow its steps (``lhama.parallel.tp_engine``).
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import signal
import socket
import subprocess
import sys

import torch

from lhama.errors import ConfigError

log = logging.getLogger("lhama.parallel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_followers(tp: int) -> list[subprocess.Popen]:
    port = _free_port()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(tp), RANK="0", LOCAL_RANK="0")
    argv = [sys.executable, *sys.orig_argv[1:]]
    procs = []
    for r in range(1, tp):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "LHAMA_TP_CHILD": "1"}
        procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL))

    def reap():
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.terminate()

    atexit.register(reap)
    return procs


def _die_with_parent() -> None:
    # A follower started by rank 0 must not outlive it (Linux: PR_SET_PDEATHSIG).
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start_tp(a, engine_cfg, quantize=None):
    """Rank 0: returns (loaded, AsyncEngine). Other ranks follow rank 0 and exit when it stops."""
    from lhama.engine import AsyncEngine
    from lhama.parallel.runtime import init_distributed
    from lhama.parallel.shard_load import load_tp_model
    from lhama.parallel.tp_engine import ControlChannel, follow, stop_followers, tp_engine

    tp = a.tp
    if "WORLD_SIZE" not in os.environ:
        _spawn_followers(tp)
    elif os.environ.get("LHAMA_TP_CHILD"):
        _die_with_parent()
    world = int(os.environ["WORLD_SIZE"])
    if world != tp:
        raise ConfigError(f"--tp {tp} but the launcher started {world} processes (WORLD_SIZE); make them equal")
    if engine_cfg.compile:
        raise ConfigError("--compile is not supported with --tp yet (the all-reduce hooks break the graph)")
    if getattr(a, "lora", None):
        raise ConfigError(
            "--lora is not supported with --tp yet: merge the adapter into the weights first "
            "(lhama.model.lora.merge_lora, then export the merged checkpoint)"
        )
    # A server can sit idle for days between requests: followers wait in a broadcast that long.
    rank, _ = init_distributed(device=a.device, timeout=datetime.timedelta(days=365))
    dtype = getattr(torch, a.dtype) if a.dtype else None
    # --quantize: each rank quantizes its own shard after loading (int8 scales are per row, so
    # the vocab-parallel head's shard quantizes exactly like those rows of the whole head).
    loaded = load_tp_model(
        a.model,
        rank,
        tp,
        dtype=dtype,
        device=a.device,
        chat_format=a.chat_format,
        tokenizer=a.tokenizer,
        max_seq_len=a.max_seq_len,
        quantize=quantize,
    )
    channel = ControlChannel()
    if rank != 0:
        steps = follow(loaded.model, channel)
        log.info("rank %d: rank 0 stopped after %d steps", rank, steps)
        sys.exit(0)
    engine = tp_engine(loaded, engine_cfg, channel)
    from lhama.parallel.tp import tp_info

    print(f"lhama: {tp_info(loaded.model)}", file=sys.stderr, flush=True)
    async_engine = AsyncEngine(engine)

    def shutdown():
        async_engine.shutdown()  # no step may run after the followers were told to stop
        stop_followers(channel)

    atexit.register(shutdown)
    return loaded, async_engine
