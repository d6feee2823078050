"""``lhama serve``: flags to ``ServerConfig`` + ``EngineConfig``, then uvicorn.

Hooked into the main CLI by ``add_serve_parser(subparsers)``; ``python -m lhama.server`` runs
the same parser on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    from lhama.cli import _add_model_args  # lazy: lhama.cli imports this module

    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server with a web chat page",
                              description="Serve a model over HTTP: /v1/chat/completions, /v1/completions, "
                                          "/v1/embeddings, /v1/files, /v1/batches, /metrics, and a chat page at /.")
    _add_model_args(p)
    add_server_args(p)
    from lhama.safety.spec import add_shield_args

    add_shield_args(p)
    p.set_defaults(func=cmd_serve)
    return p


def add_server_args(p: argparse.ArgumentParser) -> None:
    from lhama.server.config import ServerConfig, default_data_dir

    d = ServerConfig()
    g = p.add_argument_group("server")
    g.add_argument("--host", default=d.host, help="address to bind (default: %(default)s, this machine only)")
    g.add_argument("--port", type=int, default=d.port, help="port (0: any free one; the chosen one is printed)")
    g.add_argument("--api-key", default=os.environ.get("LHAMA_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: $LHAMA_API_KEY)")
    g.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="requests held beyond --max-num-seqs before answering 429 (default: %(default)s)")
    g.add_argument("--served-model-name", action="append", default=[],
                   help="model id(s) clients use (repeatable; default: the checkpoint's name)")
    g.add_argument("--data-dir", type=Path, default=None,
                   help=f"where files and batches are kept (default: {default_data_dir()})")
    g.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 2**20, help="JSON body limit (413 past it)")
    g.add_argument("--batch-concurrency", type=int, default=d.batch_concurrency,
                   help="batch requests in flight at once (default: %(default)s)")
    g.add_argument("--graceful-timeout", type=float, default=None,
                   help="on SIGTERM, seconds to let in-flight requests finish (default: wait for all)")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    g.add_argument("--access-log", action="store_true", help="log every request")
    e = p.add_argument_group("engine")
    e.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="sequences run in one step")
    e.add_argument("--max-num-batched-tokens", type=int, default=256, help="tokens computed in one step")
    e.add_argument("--kv-cache-gb", type=float, help="KV-cache budget (default: see docs/engine.md)")
    e.add_argument("--max-model-len", type=int, help="cap on prompt + output tokens per request")
    e.add_argument("--no-prefix-caching", action="store_true")
    e.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    e.add_argument("--enforce-eager", action="store_true",
                   help="CUDA: launch every decode kernel from Python instead of replaying CUDA graphs")
    e.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (torch.distributed; see docs/scaling.md)")
    e.add_argument("--replicas", type=int, default=1, help="server copies as Ray actors behind this endpoint")
    e.add_argument("--ray-address", help="with --replicas: join this Ray cluster (default: start a local one)")


def configs_from_args(a):
    from lhama.engine.config import EngineConfig
    from lhama.server.config import ServerConfig

    server = ServerConfig(host=a.host, port=a.port, api_key=a.api_key or None, max_queue=a.max_queue,
                          max_num_seqs=a.max_num_seqs, max_body_bytes=int(a.max_body_mb * 2**20),
                          served_model_names=tuple(a.served_model_name), batch_concurrency=a.batch_concurrency,
                          **({"data_dir": a.data_dir} if a.data_dir else {}))
    engine = EngineConfig(max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
                          kv_cache_gb=a.kv_cache_gb, max_model_len=a.max_model_len,
                          enable_prefix_caching=not a.no_prefix_caching, compile=a.compile,
                          cuda_graphs=not a.enforce_eager)
    return server, engine


def cmd_serve(a) -> int:
    import uvicorn

    from lhama.cli import _load
    from lhama.engine import AsyncEngine
    from lhama.server.app import create_app

    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(a, "replicas", 1) > 1:
        from lhama.parallel.replicas import serve_replicas

        return serve_replicas(a)
    server_cfg, engine_cfg = configs_from_args(a)
    from lhama.safety.spec import shields_from_args

    shields = shields_from_args(a)  # before the model: a bad --shield fails fast
    if getattr(a, "tp", 1) > 1:  # tensor parallel: ranks > 0 never return from start_tp
        from lhama.parallel.serve import start_tp

        loaded, engine = start_tp(a, engine_cfg)
    else:
        loaded = _load(a)
        engine = AsyncEngine.from_loaded(loaded, engine_cfg)
    if logging.getLogger("lhama.engine").getEffectiveLevel() > logging.INFO:  # else the engine logged it
        print(engine.engine.plan.describe(), file=sys.stderr, flush=True)
    app = create_app(loaded, engine, server_cfg)
    if a.shield:
        from lhama.safety.serving import ServerShields

        app.state.lhama.shields = ServerShields(shields, app.state.lhama.metrics.registry)
    # Bind before uvicorn starts so --port 0 can report the port it got.
    family = socket.AF_INET6 if ":" in server_cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((server_cfg.host, server_cfg.port))
    host, port = sock.getsockname()[:2]
    names = ", ".join(app.state.lhama.model_names)
    print(f"lhama: serving {names} (loaded in {loaded.load_seconds:.1f}s) on http://{host}:{port}", flush=True)
    config = uvicorn.Config(app, log_level=a.log_level, access_log=a.access_log,
                            timeout_graceful_shutdown=a.graceful_timeout, log_config=None)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    from lhama.errors import LhamaError

    parser = argparse.ArgumentParser(prog="python -m lhama.server")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    args = parser.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.func(args)
    except LhamaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
