"""Turning token timestamps into the reported numbers, the same way for every system.

Single stream: time to first token (TTFT) runs from the call to the first token; prefill
throughput is prompt tokens / TTFT (so it includes the first sampling step, as a user sees it);
decode throughput is (tokens - 1) / (time of the last token - time of the first).

Concurrent: all requests are submitted at once. Aggregate decode throughput counts the tokens
produced after every request has its first token, over the time from that moment to the end
(prefill excluded, like the single-stream decode figure); end-to-end throughput is all generated
tokens over the whole wall time (prefill included).
"""

from __future__ import annotations

import resource
import time

now = time.perf_counter


def single_stream(t0: float, token_times: list[float], prompt_len: int) -> dict:
    if not token_times:
        raise RuntimeError("no token was generated")
    ttft = token_times[0] - t0
    wall = token_times[-1] - t0
    out = {
        "ttft_s": ttft,
        "prefill_tok_s": prompt_len / ttft,
        "tokens": len(token_times),
        "wall_s": wall,
        "e2e_tok_s": len(token_times) / wall,
    }
    if len(token_times) > 1:
        out["decode_tok_s"] = (len(token_times) - 1) / (token_times[-1] - token_times[0])
    return out


def concurrent(t0: float, steps: list[tuple[float, int, int]], n_requests: int) -> dict:
    """``steps``: (time, tokens produced by this step, requests with >= 1 token after it)."""
    t_all = next((t for t, _, started in steps if started >= n_requests), None)
    if t_all is None:
        raise RuntimeError("some request never produced a token")
    after = sum(n for t, n, _ in steps if t > t_all)
    total = sum(n for _, n, _ in steps)
    t_end = steps[-1][0]
    out = {
        "requests": n_requests,
        "tokens": total,
        "wall_s": t_end - t0,
        "e2e_tok_s": total / (t_end - t0),
        "all_started_s": t_all - t0,
    }
    if after and t_end > t_all:
        out["agg_tok_s"] = after / (t_end - t_all)
    return out


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux: this process's own high-water mark, since each system runs
    # in its own subprocess.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
