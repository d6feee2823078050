"""Engine counters and gauges, as one snapshot the server turns into Prometheus metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EngineStats:
    # gauges
    num_waiting: int  # queue depth: admitted to the engine, not running yet (incl. preempted)
    num_running: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_cache_usage: float  # used / total blocks (cached free blocks count as free)
    max_model_len: int
    # counters (since start)
    prompt_tokens_total: int  # prompt tokens of admitted requests
    prompt_tokens_computed_total: int  # tokens actually run through the model for prompts (incl. recompute)
    generation_tokens_total: int
    prefix_cache_queries_total: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits_total: int  # ... and found
    preemptions_total: int
    requests_added_total: int
    requests_finished_total: int
    requests_aborted_total: int  # cancelled by their caller (client gone, ``abort``)
    requests_failed_total: int  # ended by an engine failure (their own, a failed step, shutdown)
    steps_total: int

    @property
    def prefix_cache_hit_rate(self) -> float:
        return (
            self.prefix_cache_hits_total / self.prefix_cache_queries_total if self.prefix_cache_queries_total else 0.0
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["prefix_cache_hit_rate"] = self.prefix_cache_hit_rate
        return d
