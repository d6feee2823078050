"""Prometheus metrics: HTTP requests by route and status, tokens in and out, latency
histograms, and the engine's gauges (queue depth, running requests, KV-cache usage) read at
scrape time so they are never stale. One registry per app, so tests can run several apps."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Buckets sized for CPU through GPU serving: TTFT from 10 ms to a minute, per token 1 ms to 5 s.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 60, 120)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300)


class _EngineCollector:
    """Exports an ``EngineStats`` snapshot plus the server's own queue at each scrape."""

    def __init__(self, stats: Callable[[], object], server_gauges: Callable[[], dict]):
        self.stats = stats
        self.server_gauges = server_gauges

    def collect(self):
        s = self.stats()
        g = self.server_gauges()
        yield _gauge("lhama_queue_depth", "requests waiting for the engine to run them", g["queue_depth"])
        yield _gauge("lhama_running_requests", "sequences the engine is running", s.num_running)
        yield _gauge("lhama_in_flight_requests", "generation requests being served (HTTP and batch)", g["in_flight"])
        yield _gauge("lhama_kv_cache_usage_ratio", "fraction of KV-cache blocks in use", s.kv_cache_usage)
        yield _gauge("lhama_kv_cache_blocks_used", "KV-cache blocks held by sequences", s.kv_blocks_used)
        yield _gauge("lhama_kv_cache_blocks_total", "KV-cache blocks in the pool", s.kv_blocks_total)
        yield _gauge("lhama_max_model_len", "longest context (prompt + output) a request may use", s.max_model_len)
        for name, value, doc in [
            ("lhama_engine_prompt_tokens", s.prompt_tokens_total, "prompt tokens admitted to the engine"),
            (
                "lhama_engine_prompt_tokens_computed",
                s.prompt_tokens_computed_total,
                "prompt tokens run through the model (prefix-cache hits excluded, recompute included)",
            ),
            ("lhama_engine_generation_tokens", s.generation_tokens_total, "tokens sampled by the engine"),
            ("lhama_prefix_cache_queries", s.prefix_cache_queries_total, "prompt tokens looked up in the prefix cache"),
            ("lhama_prefix_cache_hits", s.prefix_cache_hits_total, "prompt tokens found in the prefix cache"),
            ("lhama_preemptions", s.preemptions_total, "sequences preempted for lack of KV blocks"),
            ("lhama_engine_requests_finished", s.requests_finished_total, "requests the engine finished"),
            ("lhama_engine_requests_aborted", s.requests_aborted_total, "requests aborted (client gone, cancelled)"),
            (
                "lhama_engine_requests_failed",
                s.requests_failed_total,
                "requests the engine failed (their own error, a failed step, shutdown); never counted as aborted",
            ),
            ("lhama_engine_steps", s.steps_total, "engine steps run"),
        ]:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


class ServerMetrics:
    def __init__(self, stats: Callable[[], object], server_gauges: Callable[[], dict]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "lhama_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter("lhama_prompt_tokens", "prompt tokens of served requests", ["route"], registry=r)
        self.completion_tokens = Counter(
            "lhama_completion_tokens", "tokens generated for served requests", ["route"], registry=r
        )
        self.ttft = Histogram(
            "lhama_time_to_first_token_seconds",
            "arrival to first generated token",
            ["route"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "lhama_time_per_output_token_seconds",
            "mean gap between generated tokens, per request",
            ["route"],
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "lhama_request_duration_seconds", "arrival to last token", ["route"], buckets=E2E_BUCKETS, registry=r
        )
        self.rejected = Counter(
            "lhama_requests_rejected", "generation requests refused with 429 (queue full)", registry=r
        )
        self.cancelled = Counter(
            "lhama_requests_cancelled", "requests stopped because the client went away", ["route"], registry=r
        )
        self.failed = Counter(
            "lhama_requests_failed",
            "requests that failed while running (an engine error, not the client's doing)",
            ["route"],
            registry=r,
        )
        self.in_progress = Gauge("lhama_http_requests_in_progress", "HTTP requests being handled", registry=r)
        r.register(_EngineCollector(stats, server_gauges))

    def render(self) -> bytes:
        return generate_latest(self.registry)
