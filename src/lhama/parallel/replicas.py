"""``lhama serve --replicas N``: N copies of the server as Ray actors behind one endpoint.

Each replica is the ordinary ``lhama serve`` (same flags) running inside a Ray actor on a
loopback port; the driver serves the public port with a small reverse proxy that sends each
request to the replica with the fewest requests in flight (round robin among ties) and streams
the answer back untouched (SSE included). Files and batches live in one replica's data
directory, so ``/v1/files`` and ``/v1/batches`` always go to replica 0. Why not Ray Serve: it
would need the app rebuilt as a Serve deployment and brings a controller and HTTP proxy actor of
its own; the existing app, unchanged, behind 100 lines of proxy is less to run and to trust.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import socket
import sys
import threading
import time

from lhama.errors import ConfigError
from lhama.extras import require

log = logging.getLogger("lhama.parallel")

_PINNED = ("/v1/files", "/v1/batches")
_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
    "host",
}


class ServerReplica:
    """A Ray actor running ``lhama serve`` on a loopback port."""

    def __init__(self, args, index: int):
        a = copy.copy(args)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        a.host, a.port, a.replicas, a.data_dir = "127.0.0.1", self.port, 1, _data_dir(args, index)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, args=(a,), daemon=True)
        self.thread.start()

    def _serve(self, a) -> None:
        try:
            a.func(a)
        except BaseException as e:  # noqa: BLE001 - reported by ready()
            self.error = e

    def ready(self, timeout: float = 600.0) -> int:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.error is not None:
                raise RuntimeError(f"replica failed to start: {self.error}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self.port
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("replica did not become healthy")


def _data_dir(args, index: int):
    from pathlib import Path

    from lhama.paths import server_data_dir

    base = Path(args.data_dir) if args.data_dir else server_data_dir()
    return base if index == 0 else base / f"replica-{index}"


def build_proxy(ports: list[int]):
    """The public app: forwards every request to a replica and streams the answer back."""
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0), limits=httpx.Limits(max_connections=None))
    in_flight = [0] * len(ports)
    order = itertools.count()

    def pick(path: str) -> list[int]:
        if path.startswith(_PINNED):
            return [0]
        start = next(order)
        ranked = sorted(range(len(ports)), key=lambda i: (in_flight[i], (i - start) % len(ports)))
        return ranked

    async def forward(request: Request):
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        for i in pick(request.url.path):
            url = httpx.URL(f"http://127.0.0.1:{ports[i]}{request.url.path}", query=request.url.query.encode())
            req = client.build_request(request.method, url, headers=headers, content=body)
            try:
                resp = await client.send(req, stream=True)
            except httpx.ConnectError:  # never reached the replica: safe to try the next one
                log.warning("replica %d on port %d refused the connection", i, ports[i])
                continue
            in_flight[i] += 1

            async def done(resp=resp, i=i):
                in_flight[i] -= 1
                await resp.aclose()

            out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            out_headers["x-lhama-replica"] = str(i)
            return StreamingResponse(
                resp.aiter_raw(), status_code=resp.status_code, headers=out_headers, background=BackgroundTask(done)
            )
        return JSONResponse(
            {
                "error": {
                    "message": "no server replica is reachable",
                    "type": "server_error",
                    "code": "replicas_unavailable",
                }
            },
            status_code=503,
        )

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await client.aclose()

    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def serve_replicas(a) -> int:
    ray = require("ray", "ray")
    import uvicorn

    n = a.replicas
    if n < 1:
        raise ConfigError(f"--replicas must be >= 1, got {n}")
    if getattr(a, "tp", 1) > 1:
        raise ConfigError("--replicas with --tp is not supported yet; run tensor-parallel replicas separately")
    if not ray.is_initialized():
        ray.init(address=a.ray_address, num_cpus=None if a.ray_address else n, include_dashboard=False)
    replica_cls = ray.remote(num_cpus=1)(ServerReplica)
    replicas = [replica_cls.remote(a, i) for i in range(n)]
    ports = ray.get([r.ready.remote() for r in replicas])
    app = build_proxy(ports)
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((a.host, a.port))
    host, port = sock.getsockname()[:2]
    print(
        f"lhama: {n} replicas (Ray actors on ports {', '.join(map(str, ports))}) behind http://{host}:{port}",
        flush=True,
    )
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=a.log_level, access_log=a.access_log, log_config=None)).run(
            sockets=[sock]
        )
    finally:
        for r in replicas:
            ray.kill(r)
        ray.shutdown()
    print("lhama: replicas stopped", file=sys.stderr, flush=True)
    return 0
