"""Load test for ``lhama serve``: N concurrent streaming chat clients for a fixed time.

Starts a server on 127.0.0.1 (or uses --url), runs the clients, then reports throughput,
time-to-first-token percentiles and errors by status, and checks two invariants: no 5xx, and
no KV-cache blocks still held once the load is gone (read from /metrics).

    python bench/load_test.py --clients 64 --duration 60 [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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

PROMPTS = [
    "Tell me a story about a lighthouse keeper.",
    "Explain how rainbows form.",
    "Write a haiku about autumn.",
    "What are three uses for a paperclip?",
    "Describe the taste of a lemon.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "List five animals that live in the ocean.",
]


def start_server(args) -> tuple[subprocess.Popen, str]:
    data = tempfile.mkdtemp(prefix="lhama-load-")
    cmd = [
        sys.executable,
        "-m",
        "lhama.server",
        "--model",
        args.model,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        data,
        "--log-level",
        "warning",
        "--max-num-seqs",
        str(args.max_num_seqs),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    for line in proc.stdout:
        print("server:", line.rstrip(), file=sys.stderr)
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if m:
            # Keep draining the server's output so a chatty log can never block it.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit("the server did not start")


def metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def client(c: httpx.AsyncClient, model: str, idx: int, deadline: float, max_tokens: int, stats: dict) -> None:
    n = idx
    while time.monotonic() < deadline:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        n += 1
        t0 = time.perf_counter()
        ttft = None
        try:
            async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    stats["status"][r.status_code] += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "0.5")))
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[5:])
                    if "error" in event:
                        stats["status"][event["error"].get("code") or "stream_error"] += 1
                        break
                    if ttft is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                        ttft = time.perf_counter() - t0
                    if event.get("usage"):
                        stats["tokens"] += event["usage"]["completion_tokens"]
            stats["status"][200] += 1
            stats["latency"].append(time.perf_counter() - t0)
            if ttft is not None:
                stats["ttft"].append(ttft)
        except httpx.HTTPError as e:
            stats["status"][type(e).__name__] += 1


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


async def run(args, url: str, model: str) -> dict:
    stats = {"status": collections.Counter(), "ttft": [], "latency": [], "tokens": 0}
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600, connect=30), limits=limits) as c:
        t0 = time.monotonic()
        deadline = t0 + args.duration
        await asyncio.gather(*(client(c, model, i, deadline, args.max_tokens, stats) for i in range(args.clients)))
        elapsed = time.monotonic() - t0
    return {
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "max_tokens": args.max_tokens,
        "requests_ok": stats["status"][200],
        "errors_by_status": {str(k): v for k, v in stats["status"].items() if k != 200},
        "output_tokens": stats["tokens"],
        "output_tokens_per_s": round(stats["tokens"] / elapsed, 1),
        "requests_per_s": round(stats["status"][200] / elapsed, 2),
        "ttft_p50_s": round(pct(stats["ttft"], 50), 3),
        "ttft_p99_s": round(pct(stats["ttft"], 99), 3),
        "latency_p50_s": round(pct(stats["latency"], 50), 3),
        "latency_mean_s": round(statistics.fmean(stats["latency"]), 3) if stats["latency"] else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an already running server (default: start one)")
    p.add_argument("--model", default="default")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--json", help="write the report here too")
    args = p.parse_args()
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    try:
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        report = asyncio.run(run(args, url, model))
        # Once the load is gone nothing may stay allocated: a leak would show as held KV blocks.
        deadline = time.monotonic() + 60
        while True:
            m = metrics(url)
            idle = m["lhama_kv_cache_blocks_used"] == 0 and m["lhama_running_requests"] == 0
            if idle or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        server_5xx = sum(v for k, v in m.items() if k.startswith("lhama_http_requests_total") and 'status="5' in k)
        report.update(
            kv_blocks_used_after=m["lhama_kv_cache_blocks_used"],
            server_5xx=server_5xx,
            preemptions=m.get("lhama_preemptions_total"),
            prefix_cache_hits=m.get("lhama_prefix_cache_hits_total"),
        )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    client_5xx = sum(v for k, v in report["errors_by_status"].items() if k.startswith("5"))
    ok = client_5xx == 0 and report["server_5xx"] == 0 and report["kv_blocks_used_after"] == 0
    print("PASS" if ok else "FAIL: 5xx responses or KV blocks leaked", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
