"""Ray Serve replicas against one plain `lhama serve`, in the same run on the same machine.

For each setup - `single` (one `lhama serve`, uvicorn, no Ray), `serve-1` (`--replicas 1` on Ray
Serve) and `serve-2` (`--replicas 2`) - it starts the server on a local Ray cluster where needed,
warms it up, then measures

* the hop: median latency of `GET /health` (no model work: what Serve's proxy, the ingress
  deployment and the handle call add) and of a 1-token chat completion, sequentially;
* throughput: `--requests` chat completions of `--max-tokens` tokens, `--concurrency` at once:
  requests/s and completion tokens/s.

It prints one table and the ratios against `single`. On a machine with fewer cores than
replicas x threads, a second replica cannot add throughput (both share the same cores).

    .venv/bin/python bench/serve_replicas.py --requests 32 --concurrency 8 --max-tokens 32
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx

READY = re.compile(r"(?:on|behind) (http://127\.0\.0\.1:\d+)")


def start(args: list[str], env: dict, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "lhama.cli", "serve", "--port", "0", "--log-level", "warning", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    url, lines, ready = [], [], threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line)
            m = READY.search(line)
            if m and not url:
                url.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=reader, daemon=True).start()
    if not ready.wait(timeout) or not url:
        stop(proc)
        raise RuntimeError("server did not start:\n" + "".join(lines[-40:]))
    return proc, url[0]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def measure(url: str, model: str, a) -> dict:
    c = httpx.Client(base_url=url, timeout=600)
    chat = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1, "temperature": 0}
    for _ in range(5):  # warm-up (both replicas)
        c.post("/v1/chat/completions", json=chat).raise_for_status()

    def timed(fn, n):
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return statistics.median(out) * 1000

    health_ms = timed(lambda: c.get("/health").raise_for_status(), a.hops)
    chat1_ms = timed(lambda: c.post("/v1/chat/completions", json=chat).raise_for_status(), a.hops)

    def one(i):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"Write a short story about the number {i}."}],
            "max_tokens": a.max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(a.concurrency) as pool:
        tokens = sum(pool.map(one, range(a.requests)))
    wall = time.perf_counter() - t
    return {"health_ms": health_ms, "chat1_ms": chat1_ms, "req_s": a.requests / wall, "tok_s": tokens / wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--hops", type=int, default=40, help="sequential requests for the latency medians")
    p.add_argument("--setups", default="single,serve-1,serve-2")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--model", a.model, "--kv-cache-gb", "0.2"]
    setups = {"single": [], "serve-1": ["--replicas", "1", "--max-replicas", "1"], "serve-2": ["--replicas", "2"]}
    results = {}
    for name in a.setups.split(","):
        with tempfile.TemporaryDirectory() as d:
            proc, url = start([*common, "--data-dir", d, *setups[name]], env)
            try:
                model = httpx.get(url + "/v1/models", timeout=60).json()["data"][0]["id"]
                results[name] = measure(url, model, a)
            finally:
                stop(proc)
        print(name, json.dumps({k: round(v, 2) for k, v in results[name].items()}), flush=True)
    base = results.get("single")
    print(f"\n{'setup':<10}{'GET /health ms':>16}{'1-token chat ms':>17}{'req/s':>8}{'tok/s':>8}  vs single")
    for name, r in results.items():
        vs = ""
        if base and name != "single":
            vs = (
                f"hop +{r['health_ms'] - base['health_ms']:.1f} ms (health), "
                f"+{r['chat1_ms'] - base['chat1_ms']:.1f} ms (chat); throughput x{r['tok_s'] / base['tok_s']:.2f}"
            )
        print(f"{name:<10}{r['health_ms']:>16.1f}{r['chat1_ms']:>17.1f}{r['req_s']:>8.2f}{r['tok_s']:>8.1f}  {vs}")
    print(f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results, "args": vars(a), "cores": os.cpu_count()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
