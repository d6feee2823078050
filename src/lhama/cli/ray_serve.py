"""``lhama serve --replicas N`` (or ``--max-replicas``, or ``--ray-address``): the server on Ray Serve.

One Serve application of two deployments (docs/scaling.md):

* ``LhamaReplica``: the whole lhama server - model, engine, the FastAPI app of
  ``lhama.server.app`` with its lifespan (batch worker included) - in one Ray actor. ``--replicas
  N`` of them, or autoscaled between ``--min-replicas`` and ``--max-replicas`` on the requests in
  flight per replica. With ``--tp K`` a replica is K ranks in a Ray placement group of K bundles:
  rank 0 is the replica, ranks 1..K-1 are Ray actors in the other bundles that follow it over
  torch.distributed (``lhama.parallel.serve``).
* ``LhamaIngress``: the HTTP ingress behind Serve's proxy. It forwards each request, as ASGI
  messages, to a replica through a deployment handle (Serve's router picks the replica with the
  shorter queue of two) and streams the answer back. If a replica dies before it sent the
  answer's first message, a request that is safe to repeat (a GET, a generation, an embedding)
  goes to another replica, up to three tries; otherwise the client gets a 503
  (``replica_unavailable``) it can retry. A stream cut by a replica's death ends with an SSE
  error event. Serve restarts the dead replica.

All replicas share the state database (``--state-db``, ``lhama.server.state_db``): files,
batches, vector stores and stored responses, so any replica answers any request and a batch
runs on all of them. Ray is imported only here, through ``lhama.extras.require``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
import time

from lhama.errors import ConfigError
from lhama.extras import require

log = logging.getLogger("lhama.serve")
APP_NAME = "lhama"
TRIES = 3
# Requests that may run twice without harm when the first replica died before answering.
RETRYABLE_POSTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
GENERATION = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


def _unavailable(message: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "server_error", "param": None, "code": "replica_unavailable"}}
    ).encode()


def _scope(request) -> dict:
    """The picklable part of a request's ASGI scope."""
    s = request.scope
    keep = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string", "client", "server")
    out = {k: s[k] for k in keep if k in s}
    out["root_path"] = ""
    out["headers"] = [(bytes(k), bytes(v)) for k, v in s["headers"]]
    return out


def replica_class():
    """The model replica's class (defined after Ray is imported)."""
    serve = require("ray.serve", "ray")

    class LhamaReplica:
        async def __init__(self, a, build):
            self.lifespan, self.followers = None, []
            if getattr(a, "tp", 1) > 1:
                self.followers = _start_tp_followers(a, build)
            self.app, self.loaded = await asyncio.to_thread(build, a)
            self.lifespan = self.app.router.lifespan_context(self.app)
            await self.lifespan.__aenter__()
            ctx = serve.get_replica_context()
            self.name = ctx.replica_id.unique_id if ctx is not None else str(os.getpid())

        async def http(self, scope: dict, body: bytes):
            """Run one request through the app; yields its ASGI messages."""
            queue: asyncio.Queue = asyncio.Queue()
            left = asyncio.Event()
            sent = False

            async def receive():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await left.wait()
                return {"type": "http.disconnect"}

            async def send(message):
                if message["type"] == "http.response.start":
                    message = {
                        **message,
                        "headers": [*message.get("headers", []), (b"x-lhama-replica", self.name.encode())],
                    }
                await queue.put(message)

            task = asyncio.get_running_loop().create_task(self.app(scope, receive, send))
            task.add_done_callback(lambda _t: queue.put_nowait(None))
            try:
                while (message := await queue.get()) is not None:
                    yield message
                await task  # raises what the app raised
            finally:
                left.set()  # the client went away (or the answer is complete): the app sees a disconnect
                if not task.done():
                    try:
                        await asyncio.wait_for(asyncio.shield(task), 10)
                    except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
                        task.cancel()

        async def check_health(self):
            err = getattr(self.app.state.lhama.engine, "error", None)
            if err is not None:
                raise RuntimeError(f"engine failed: {err!r}")

        async def __del__(self):
            if getattr(self, "lifespan", None) is not None:  # None: the constructor failed
                await self.lifespan.__aexit__(None, None, None)

    return LhamaReplica


def _start_tp_followers(a, build) -> list:
    """Ranks 1..tp-1 of this replica as Ray actors in the other bundles of its placement group;
    sets this process up as rank 0 (torch.distributed's env:// rendezvous)."""
    ray = require("ray", "ray")
    from ray.util.placement_group import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = get_current_placement_group()
    if pg is None:
        raise ConfigError("a --tp replica must run in its placement group")
    addr = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": addr, "MASTER_PORT": str(port), "WORLD_SIZE": str(a.tp)}
    os.environ.update(env, RANK="0", LOCAL_RANK="0")

    @ray.remote
    class TPFollower:
        def __init__(self, a, build, rank: int):
            os.environ.update(env, RANK=str(rank), LOCAL_RANK="0")
            self.thread = threading.Thread(target=build, args=(a,), daemon=True)  # follows until rank 0 stops
            self.thread.start()

        def alive(self) -> bool:
            return self.thread.is_alive()

    return [
        TPFollower.options(
            num_cpus=a.replica_cpus,
            num_gpus=a.replica_gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
        ).remote(a, build, rank)
        for rank in range(1, a.tp)
    ]


def ingress_class():
    """The HTTP ingress's class (defined after Ray is imported)."""
    ray = require("ray", "ray")
    import starlette.responses as starlette_responses

    class LhamaIngress:
        def __init__(self, replicas):
            self.replicas = replicas.options(stream=True)

        async def __call__(self, request):
            body = await request.body()
            scope = _scope(request)
            path, method = scope["path"], scope["method"]
            retryable = method in ("GET", "HEAD") or path in RETRYABLE_POSTS
            for attempt in range(TRIES):
                stream = self.replicas.http.remote(scope, body)
                try:  # the answer is committed once its status and first bytes are here
                    head = [await stream.__anext__()]
                    while head[-1]["type"] != "http.response.body":
                        head.append(await stream.__anext__())
                    break
                except StopAsyncIteration:
                    break
                except (ray.exceptions.RayError, RuntimeError) as e:
                    stream.cancel()
                    log.warning("%s %s: replica failed before answering (try %d): %r", method, path, attempt + 1, e)
                    if not retryable or attempt == TRIES - 1:
                        return starlette_responses.Response(
                            _unavailable(
                                "the server replica handling this request stopped before answering; retry the request"
                            ),
                            status_code=503,
                            media_type="application/json",
                            headers={"Retry-After": "1"},
                        )
                    await asyncio.sleep(0.5 * (attempt + 1))
            start = head[0]
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)

            async def chunks():
                for message in head[1:]:
                    if message.get("body"):
                        yield message["body"]
                if not head[-1].get("more_body", False):
                    return
                try:
                    async for message in stream:
                        if message["type"] == "http.response.body" and message.get("body"):
                            yield message["body"]
                except ray.exceptions.RayError as e:
                    log.warning("%s %s: replica failed mid-answer: %r", method, path, e)
                    if sse:
                        yield (
                            b"data: "
                            + _unavailable("the server replica stopped mid-answer; retry the request")
                            + b"\n\n"
                        )
                finally:
                    stream.cancel()  # the client left (or the answer is complete): stop the replica's work

            response = starlette_responses.StreamingResponse(chunks(), status_code=start["status"])
            response.raw_headers = headers
            return response

    return LhamaIngress


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def deployment_options(a) -> dict:
    """Serve options of the replica deployment from the flags: replicas or autoscaling, the
    resources of one replica, its placement group with --tp, how many requests it takes."""
    if a.replicas < 1:
        raise ConfigError(f"--replicas must be >= 1, got {a.replicas}")
    tp = getattr(a, "tp", 1)
    per_rank = {"CPU": a.replica_cpus, **({"GPU": a.replica_gpus} if a.replica_gpus else {})}
    opts: dict = {"max_ongoing_requests": a.max_num_seqs + a.max_queue, "health_check_period_s": 5}
    if a.max_replicas is not None:
        lo = a.min_replicas if a.min_replicas is not None else 1
        if not 0 <= lo <= a.max_replicas or a.max_replicas < 1:
            raise ConfigError(f"need 0 <= --min-replicas <= --max-replicas >= 1, got {lo} and {a.max_replicas}")
        opts["autoscaling_config"] = {
            "min_replicas": lo,
            "max_replicas": a.max_replicas,
            "initial_replicas": min(max(a.replicas, lo), a.max_replicas),
            "target_ongoing_requests": a.target_ongoing_requests or max(1.0, a.max_num_seqs / 2),
        }
    elif a.min_replicas is not None or a.target_ongoing_requests is not None:
        raise ConfigError("--min-replicas and --target-ongoing-requests need --max-replicas (autoscaling)")
    else:
        opts["num_replicas"] = a.replicas
    if tp > 1:
        opts["placement_group_bundles"] = [dict(per_rank) for _ in range(tp)]
        opts["placement_group_strategy"] = "PACK"  # one machine when it fits, else several
    opts["ray_actor_options"] = {"num_cpus": a.replica_cpus, "num_gpus": a.replica_gpus}
    return opts


def build_serve_app(a, build):
    serve = require("ray.serve", "ray")
    replica = serve.deployment(name="LhamaReplica", **deployment_options(a))(replica_class())
    ingress = serve.deployment(
        name="LhamaIngress", num_replicas=1, max_ongoing_requests=100_000, ray_actor_options={"num_cpus": 0}
    )(ingress_class())
    return ingress.bind(replica.bind(a, build))


def serve_on_ray(a, build) -> int:
    ray = require("ray", "ray")
    serve = require("ray.serve", "ray")

    if a.data_dir is None and a.state_db is None and a.ray_address is not None:
        log.warning("--ray-address without --state-db: replicas on other machines get their own SQLite state")
    app = build_serve_app(a, build)  # flag errors before Ray starts
    port = a.port or _free_port(a.host)
    if not ray.is_initialized():
        tp = getattr(a, "tp", 1)
        need = int(max(a.replicas, a.max_replicas or 0) * tp * a.replica_cpus + 0.999)
        local = {} if a.ray_address else {"num_cpus": max(os.cpu_count() or 1, need), "include_dashboard": False}
        ray.init(address=a.ray_address, **local)
    serve.start(http_options={"host": a.host, "port": port, "location": "EveryNode"})
    t0 = time.perf_counter()
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    except Exception as e:
        serve.shutdown()
        ray.shutdown()
        raise ConfigError(f"the replicas did not start: {e}") from None
    n = f"{a.min_replicas or 1}-{a.max_replicas} autoscaled" if a.max_replicas else str(a.replicas)
    print(
        f"lhama: {n} replicas on Ray Serve (started in {time.perf_counter() - t0:.1f}s) behind http://{a.host}:{port}",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("lhama: stopping the replicas", flush=True)
    try:
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
