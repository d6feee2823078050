"""`lhama serve --replicas 2 --ray-address ...`: the server on Ray Serve, on a real local Ray
cluster (a head and worker nodes started with `ray start` on loopback by the fixture), driven
with the real openai client: chat, streaming, files -> batch -> results split across replicas,
vector stores created on one replica and searched on another, a replica killed during a batch,
and the shared state in a real PostgreSQL (slow tests).

The cluster's processes are stopped by their process group (``ray start --block`` in a session
of its own), never with ``ray stop`` (other Ray users may share the machine)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests import needs
from tests.rag.test_pgvector import postgres  # noqa: F401 - the real-PostgreSQL fixture
from tests.serving import MODEL, ServerProcess

needs.module("ray.serve")
openai = needs.module("openai")
RAY = str(Path(sys.executable).with_name("ray"))
READY = re.compile(r"behind (http://127\.0\.0\.1:\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    """`ray start --head` plus worker nodes, each `--block`ed in its own process group."""

    def __init__(self, workers: int, cpus_per_worker: int = 1):
        self.tmp = tempfile.mkdtemp(prefix="r21", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # A token of its own (Ray's token auth): no other cluster on the machine can be reached by mistake.
        self.env = env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "OMP_NUM_THREADS": "1",
        }
        common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]

        def ports() -> list[str]:  # each node's own (several nodes on one machine; other Ray users)
            names = ("dashboard-agent-listen", "metrics-export")
            return [f"--{n}-port={_free_port()}" for n in names]

        self.procs = [
            subprocess.Popen(
                [RAY, "start", "--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false"]
                + [f"--temp-dir={self.tmp}", f"--ray-client-server-port={_free_port()}", *common, *ports()],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        ]
        self._wait_nodes(1)
        for i in range(workers):  # one at a time: nodes starting together on one machine can collide
            self.procs.append(
                subprocess.Popen(
                    [RAY, "start", f"--address={self.address}", f"--num-cpus={cpus_per_worker}", *common, *ports()],
                    env=env,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            )
            self._wait_nodes(2 + i)

    def _wait_nodes(self, n: int, timeout: float = 120) -> None:
        code = f"import ray; ray.init(address='{self.address}', log_to_driver=False); print(len(ray.nodes()))"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=self.env)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"the Ray cluster did not reach {n} nodes")

    def stop(self) -> None:
        # SIGKILL to each node's process group (SIGTERM would drain each node for up to 30 s).
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            p.wait(30)


class ServeProcess(ServerProcess):
    """`lhama serve` on the cluster (tests/serving.py's helper, with Serve's ready line, its own
    process group and SIGINT to stop); its output is kept for failure messages."""

    ready = READY
    stop_signal = signal.SIGINT
    new_session = True
    wait_healthy = False  # /health goes through Serve's router: replica_pids polls it

    def __init__(self, cluster: RayCluster | None, data_dir: Path, *args: str, timeout: float = 300):
        """On ``cluster``, or (None) on the local Ray that `lhama serve` starts itself."""
        cmd = [sys.executable, "-m", "lhama.cli", "serve", "--port", "0"]  # the default model (MODEL)
        cmd += ["--data-dir", str(data_dir), "--kv-cache-gb", "0.05", *args]
        cmd += ["--ray-address", cluster.address] if cluster else []
        env = (
            cluster.env
            if cluster
            else {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        )
        self._start(cmd, {**env, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}, timeout)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="x", max_retries=0)

    def replica_pids(self, n: int = 2, tries: int = 60) -> dict[str, int]:
        """Serve replica id -> process id of each replica that answers /health."""
        seen: dict[str, int] = {}
        for _ in range(tries):
            r = httpx.get(self.url + "/health", timeout=30)
            if r.status_code == 200:
                seen[r.headers["x-lhama-replica"]] = r.json()["pid"]
            if len(seen) >= n:
                break
        return seen

    def per_replica_metric(self, name: str, n: int = 2, tries: int = 60) -> dict[str, float]:
        """Serve replica id -> the value of one line of its /metrics."""
        seen: dict[str, float] = {}
        for _ in range(tries):
            r = httpx.get(self.url + "/metrics", timeout=30)
            for line in r.text.splitlines():
                if line.startswith(name + " "):
                    seen[r.headers["x-lhama-replica"]] = float(line.split()[-1])
            if len(seen) >= n:
                break
        return seen

    def stop(self, timeout: float = 60) -> int:
        return super().stop(timeout)


def _batch_file(n: int, max_tokens: int) -> bytes:
    rows = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Count to {i + 3}."}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _wait(pred, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return None


# -- the default suite: one end-to-end case (on the local Ray that `lhama serve --replicas` starts) ----
def test_two_replicas_on_ray_serve_answer_chat_and_streams(tmp_path):
    srv = ServeProcess(None, tmp_path, "--replicas", "2", "--batch-concurrency", "2")
    try:
        c = srv.client

        def chat(_):
            raw = c.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0
            )
            return raw.headers["x-lhama-replica"], raw.parse().choices[0].message.content

        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # concurrent: Serve's router spreads them
            answers = list(pool.map(chat, range(8)))
        replicas, texts = {r for r, _ in answers}, [t for _, t in answers]
        assert len(replicas) == 2, replicas  # Serve's router used both replicas
        assert all(texts), texts
        stream = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0, stream=True
        )
        chunks = list(stream)
        assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason in ("stop", "length")
        # A file uploaded through one replica is read back through any.
        f = c.files.create(file=("in.jsonl", _batch_file(2, 2)), purpose="batch")
        assert {c.files.retrieve(f.id).id for _ in range(4)} == {f.id}
        assert c.models.list().data[0].id == MODEL
        r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "nope", "messages": []}, timeout=30)
        assert r.status_code in (400, 404) and r.json()["error"]["code"]  # the app's own errors pass through
    finally:
        srv.stop()


# -- slow: batches, vector stores, faults, PostgreSQL ----------------------------------------------
@pytest.fixture(scope="module")
def cluster3():
    c = RayCluster(workers=2, cpus_per_worker=1)
    yield c
    c.stop()


@pytest.mark.slow
def test_batch_split_across_replicas_and_vector_stores_shared(cluster3, tmp_path):
    srv = ServeProcess(cluster3, tmp_path, "--replicas", "2", "--batch-concurrency", "2")
    try:
        c = srv.client
        f = c.files.create(file=("in.jsonl", _batch_file(12, 8)), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        done = _wait(lambda: (x := c.batches.retrieve(b.id)).status == "completed" and x, timeout=600)
        assert done, c.batches.retrieve(b.id)
        assert done.request_counts.completed == 12 and done.request_counts.failed == 0
        lines = srv.per_replica_metric('lhama_batch_lines_total{outcome="completed"}')
        assert len(lines) == 2 and all(lines.values()) and sum(lines.values()) == 12, lines  # split, each once
        out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(12)]

        doc = b"The quokka is a small marsupial found on Rottnest Island near Perth.\n"
        kb = c.files.create(file=("quokka.txt", doc), purpose="assistants")
        raw = c.vector_stores.with_raw_response.create(name="kb", file_ids=[kb.id])
        vs, made_on = raw.parse(), raw.headers["x-lhama-replica"]
        assert vs.file_counts.completed == 1
        other = None
        for _ in range(20):
            r = c.vector_stores.with_raw_response.search(vs.id, query="Where does the quokka live?")
            if r.headers["x-lhama-replica"] != made_on:
                other = r.parse()
                break
        assert other is not None, "no search reached the other replica"
        assert other.data and "Rottnest" in other.data[0].content[0].text
    finally:
        srv.stop()


@pytest.mark.slow
def test_replica_killed_during_a_batch(cluster3, tmp_path):
    srv = ServeProcess(cluster3, tmp_path, "--replicas", "2", "--batch-concurrency", "2", "--batch-lease", "4")
    try:
        c = srv.client
        pids = srv.replica_pids()
        assert len(pids) == 2, pids
        f = c.files.create(file=("in.jsonl", _batch_file(16, 16)), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert _wait(lambda: c.batches.retrieve(b.id).request_counts.completed >= 2, timeout=600)

        def chat(_):
            try:
                r = httpx.post(
                    srv.url + "/v1/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": "Tell a story."}], "max_tokens": 24},
                    timeout=300,
                )
                return r.status_code, r.json()
            except httpx.HTTPError as e:
                return None, repr(e)

        victim = next(iter(pids.values()))
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            calls = [pool.submit(chat, i) for i in range(6)]
            time.sleep(1.0)
            os.kill(victim, signal.SIGKILL)
            results = [x.result() for x in calls]
        for status, body in results:  # answered by the survivor (retried), or a clear retryable 503
            assert status == 200 or (status == 503 and body["error"]["code"] == "replica_unavailable"), (status, body)
        assert any(s == 200 for s, _ in results)

        done = _wait(lambda: (x := c.batches.retrieve(b.id)).status == "completed" and x, timeout=600)
        assert done, c.batches.retrieve(b.id)
        assert done.request_counts.completed == 16 and done.request_counts.failed == 0
        out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(16)]  # none lost, none twice
        # Serve brought a new replica up in place of the killed one.
        again = _wait(lambda: len(p := srv.replica_pids()) == 2 and victim not in p.values() and p, timeout=300)
        assert again, srv.replica_pids()
    finally:
        srv.stop()


@pytest.mark.slow
def test_state_in_postgresql(cluster3, postgres, tmp_path):  # noqa: F811 - the imported fixture
    srv = ServeProcess(cluster3, tmp_path, "--replicas", "2", "--state-db", postgres)
    try:
        c = srv.client
        doc = b"Lhama replicas share one PostgreSQL database with pgvector for their vector stores.\n"
        kb = c.files.create(file=("notes.txt", doc), purpose="assistants")
        vs = c.vector_stores.create(name="pg", file_ids=[kb.id])
        seen = set()
        for _ in range(8):
            r = c.vector_stores.with_raw_response.search(vs.id, query="what do replicas share?")
            seen.add(r.headers["x-lhama-replica"])
            assert "PostgreSQL" in r.parse().data[0].content[0].text
        assert len(seen) == 2, seen
        f = c.files.create(file=("in.jsonl", _batch_file(4, 4)), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        done = _wait(lambda: (x := c.batches.retrieve(b.id)).status == "completed" and x, timeout=600)
        assert done and done.request_counts.completed == 4, c.batches.retrieve(b.id)
        assert not (tmp_path / "state.db").exists()  # nothing went to the local SQLite default
        resp = c.responses.create(model=MODEL, input="Say hi.", max_output_tokens=4)
        assert {c.responses.retrieve(resp.id).id for _ in range(4)} == {resp.id}
    finally:
        srv.stop()


@pytest.mark.slow
def test_tensor_parallel_replica_in_a_placement_group(tmp_path):
    """`--tp 3`: one replica of 3 ranks (rank 0 the Serve replica, ranks 1-2 Ray actors in its
    placement group's other bundles, gloo); its greedy answer is one process's."""
    prompt = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    single = ServerProcess(tmp_path / "single")
    try:
        want = httpx.post(single.url + "/v1/completions", json=prompt, timeout=300).json()["choices"][0]["text"]
    finally:
        single.stop()
    srv = ServeProcess(
        None, tmp_path / "tp", "--replicas", "1", "--max-replicas", "1", "--tp", "3", "--replica-cpus", "0.5"
    )
    try:
        r = httpx.post(srv.url + "/v1/completions", json=prompt, timeout=300)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want
    finally:
        srv.stop()
