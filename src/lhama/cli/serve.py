"""``lhama serve``: flags to ``ServerConfig`` + ``EngineConfig``, then uvicorn.
``python -m lhama.server`` runs the same command (``main``)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from lhama.cli.args import (
    Parser,
    add_engine_args,
    add_model_args,
    add_sampling_args,
    load_model_from_args,
    quant_config_from_args,
    sampling_defaults_from_args,
)
from lhama.sampling_defaults import REQUEST_SAMPLING_DEFAULTS

DESCRIPTION = (
    "Serve a model over HTTP: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/files, "
    "/v1/batches, /metrics, and a chat page at /."
)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    from lhama.safety.spec import add_shield_args

    p.description = DESCRIPTION
    add_model_args(p)
    add_server_args(p)
    add_sampling_args(
        p,
        defaults=REQUEST_SAMPLING_DEFAULTS,
        title="sampling: what a request's omitted fields take (docs/generation.md)",
        stop=False,
    )
    add_shield_args(p)
    p.set_defaults(func=run_serve)


def add_server_args(p: argparse.ArgumentParser) -> None:
    from lhama.paths import server_data_dir as default_data_dir
    from lhama.server.config import ServerConfig

    d = ServerConfig()
    g = p.add_argument_group("server (docs/server.md)")
    g.add_argument("--host", default=d.host, help="address to bind (default: %(default)s, this machine only)")
    g.add_argument("--port", type=int, default=d.port, help="port (0: any free one; the chosen one is printed)")
    g.add_argument(
        "--api-key",
        default=os.environ.get("LHAMA_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 routes (default: $LHAMA_API_KEY)",
    )
    g.add_argument(
        "--max-queue", type=int, default=d.max_queue, help="requests held beyond --max-num-seqs before answering 429"
    )
    g.add_argument(
        "--served-model-name",
        action="append",
        default=[],
        help="model id(s) clients use (repeatable; default: the checkpoint's name)",
    )
    g.add_argument(
        "--data-dir", type=Path, default=None, help=f"where files and batches are kept (default: {default_data_dir()})"
    )
    g.add_argument(
        "--state-db",
        default=None,
        help="database for files, batches, vector stores and stored responses: a SQLite path or "
        "postgresql://... that every replica shares (default: DATA_DIR/state.db; docs/scaling.md)",
    )
    g.add_argument(
        "--batch-lease",
        type=float,
        default=d.batch_lease_s,
        help="seconds before a batch line claimed by a server that stopped renewing it goes to another",
    )
    g.add_argument(
        "--max-body-mb", type=float, default=d.max_body_bytes / 2**20, help="JSON body limit in MiB (413 past it)"
    )
    g.add_argument(
        "--batch-concurrency", type=int, default=d.batch_concurrency, help="batch requests in flight at once"
    )
    g.add_argument(
        "--graceful-timeout",
        type=float,
        default=None,
        help="on SIGTERM, seconds to let in-flight requests finish (default: wait for all)",
    )
    g.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="server log level"
    )
    g.add_argument("--access-log", action="store_true", help="log every request")
    g.add_argument(
        "--enable-lora",
        action="store_true",
        help="serve LoRA adapters per request (loaded with --lora NAME=PATH or POST /v1/load_lora_adapter)",
    )
    g.add_argument("--max-loras", type=int, default=4, help="adapters loaded at once (default: %(default)s)")
    g.add_argument("--max-lora-rank", type=int, default=16, help="largest adapter rank accepted (default: %(default)s)")
    e = add_engine_args(p)
    e.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (torch.distributed; see docs/scaling.md)")
    r = p.add_argument_group("scale-out on Ray Serve (docs/scaling.md)")
    r.add_argument(
        "--replicas", type=int, default=1, help="model replicas as Ray Serve deployments behind this endpoint"
    )
    r.add_argument(
        "--ray-address", help="run on this Ray cluster (e.g. auto, or HOST:6379; default: start a local one)"
    )
    r.add_argument("--min-replicas", type=int, help="autoscaling: fewest replicas (with --max-replicas)")
    r.add_argument("--max-replicas", type=int, help="autoscaling: most replicas (turns autoscaling on)")
    r.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=None,
        help="autoscaling: requests in flight per replica to aim for (default: --max-num-seqs / 2)",
    )
    r.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (per rank with --tp)")
    r.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs Ray reserves per replica (per rank with --tp)")


def configs_from_args(a):
    from lhama.cli.args import engine_config_from_args
    from lhama.generate import SamplingParams
    from lhama.server.config import ServerConfig

    sampling = sampling_defaults_from_args(a, REQUEST_SAMPLING_DEFAULTS)
    SamplingParams(**vars(sampling))  # a bad --temperature etc. fails here, before the model loads

    server = ServerConfig(
        host=a.host,
        port=a.port,
        api_key=a.api_key or None,
        max_queue=a.max_queue,
        max_num_seqs=a.max_num_seqs,
        max_body_bytes=int(a.max_body_mb * 2**20),
        served_model_names=tuple(a.served_model_name),
        batch_concurrency=a.batch_concurrency,
        state_db=getattr(a, "state_db", None),
        batch_lease_s=getattr(a, "batch_lease", 30.0),
        sampling=sampling,
        **({"data_dir": a.data_dir} if a.data_dir else {}),
    )
    return server, engine_config_from_args(a)


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a busy port is a one-line error
    that costs no loading time (and --port 0 can report the port it got)."""
    from lhama.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; stop what uses the port or pick another with --port"
        ) from None
    return sock


def lora_slots_from_args(a, loaded):
    """``LoraSlots`` over the loaded model with the --lora NAME=PATH adapters in, or None."""
    from lhama.cli.args import split_lora_flags

    _, named = split_lora_flags(getattr(a, "lora", None))
    if not (named or getattr(a, "enable_lora", False)):
        return None
    from lhama.model.lora_batch import LoraSlots
    from lhama.peft_adapter import read_peft_weights

    slots = LoraSlots(loaded.model, max_loras=a.max_loras, max_rank=a.max_lora_rank)
    for name, path in named:
        cfg, weights = read_peft_weights(path, loaded.model.args)
        slots.load(name, path, cfg, weights)
    return slots


def _is_tp_follower() -> bool:
    return int(os.environ.get("RANK", "0")) != 0  # torchrun's rank: only rank 0 listens


def uses_ray_serve(a) -> bool:
    """More than one replica, autoscaling, or a Ray cluster named: the server runs on Ray Serve."""
    return (
        getattr(a, "replicas", 1) > 1
        or getattr(a, "max_replicas", None) is not None
        or getattr(a, "ray_address", None) is not None
    )


def build_app(a):
    """The server's app over a loaded model and a started-with-the-app engine, and the model.
    A tensor-parallel rank other than 0 never returns (it follows rank 0 until it stops)."""
    from lhama.engine import AsyncEngine
    from lhama.server.app import create_app

    server_cfg, engine_cfg = configs_from_args(a)
    from lhama.safety.spec import shields_from_args

    shields = shields_from_args(a)  # before the model: a bad --shield fails fast
    slots = None
    if getattr(a, "tp", 1) > 1:  # tensor parallel: ranks > 0 never return from start_tp
        from lhama.parallel.serve import start_tp

        loaded, engine = start_tp(a, engine_cfg, quant_config_from_args(a))
    else:
        loaded = load_model_from_args(a, named_lora_ok=True)
        slots = lora_slots_from_args(a, loaded)  # before the engine: it wraps the model's projections
        engine = AsyncEngine.from_loaded(loaded, engine_cfg)
    if logging.getLogger("lhama.engine").getEffectiveLevel() > logging.INFO:  # else the engine logged it
        print(engine.engine.plan.describe(), file=sys.stderr, flush=True)
    app = create_app(loaded, engine, server_cfg)
    if getattr(a, "tp", 1) <= 1:
        app.state.lhama.loras = slots
    if a.shield:
        from lhama.server.shields import ServerShields

        app.state.lhama.shields = ServerShields(shields, app.state.lhama.metrics.registry)
    return app, loaded


def run_serve(a) -> int:
    import uvicorn

    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if uses_ray_serve(a) and not _is_tp_follower():
        from lhama.cli.ray_serve import serve_on_ray

        return serve_on_ray(a, build_app)
    server_cfg, _ = configs_from_args(a)
    sock = None if _is_tp_follower() else bind_socket(server_cfg.host, server_cfg.port)
    app, loaded = build_app(a)
    host, port = sock.getsockname()[:2]
    names = ", ".join(app.state.lhama.model_names)
    print(f"lhama: serving {names} (loaded in {loaded.load_seconds:.1f}s) on http://{host}:{port}", flush=True)
    config = uvicorn.Config(
        app,
        log_level=a.log_level,
        access_log=a.access_log,
        timeout_graceful_shutdown=a.graceful_timeout,
        log_config=None,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lhama.server [flags]``, the same as ``lhama serve [flags]``."""
    from lhama.cli import run_command

    parser = Parser(prog="python -m lhama.server", description=DESCRIPTION)
    add_serve_args(parser)
    return run_command(parser, sys.argv[1:] if argv is None else argv)
