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
import sys
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


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(key + ":")), None)
    except OSError:
        return None


def peak_rss_mib() -> float:
    """This process's own peak RSS: the kernel's VmHWM. Not getrusage's ru_maxrss: on Linux it
    survives exec, so a worker started by a big parent reported the parent's peak."""
    kib = _status_kib("VmHWM")
    if kib is None:  # no /proc (macOS): ru_maxrss is the best there is (bytes on macOS)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024
    return kib / 1024


def rss_mib() -> float | None:
    """This process's resident set now (VmRSS), or None without /proc."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def mark_rss(details: dict, phase: str) -> None:
    """The process's RSS and peak RSS (MiB) after ``phase``: where the peak comes from."""
    details.setdefault("rss_by_phase", {})[phase] = {"rss_mib": rss_mib(), "peak_rss_mib": peak_rss_mib()}


def rss_note(details: dict, who: str) -> str | None:
    """One line for the report: ``who``'s RSS after each phase (peak when it is higher)."""
    phases = details.get("rss_by_phase")
    if not phases:
        return None

    def fmt(v):
        now, peak = v["rss_mib"], v["peak_rss_mib"]
        if now is None:  # no /proc: the peak is all there is
            return f"peak {peak:.0f}"
        return f"{now:.0f}" if peak <= now + 1 else f"{now:.0f} (peak {peak:.0f})"

    return f"{who} RSS after each phase, MiB: " + ", ".join(f"{k} {fmt(v)}" for k, v in phases.items())
