"""Continuous batching: scheduler, paged KV cache with prefix caching, async front end,
offline batch jobs. See docs/engine.md."""

from lhama.engine.config import EngineConfig
from lhama.engine.engine import KVCacheCapacityError, LLMEngine
from lhama.engine.kv_cache_manager import KVCacheBlocks, KVCacheManager
from lhama.engine.memory import MemoryPlan, plan_kv_cache
from lhama.engine.metrics import EngineStats
from lhama.engine.outputs import EngineDelta, RequestFailedError, RequestResult
from lhama.engine.paged_cache import PagedKVCache
from lhama.engine.scheduler import Scheduler, SchedulerOutput

__all__ = [
    "AsyncEngine",
    "EngineConfig",
    "EngineDelta",
    "EngineStats",
    "KVCacheBlocks",
    "KVCacheCapacityError",
    "KVCacheManager",
    "LLMEngine",
    "MemoryPlan",
    "PagedKVCache",
    "RequestFailedError",
    "RequestResult",
    "Scheduler",
    "SchedulerOutput",
    "plan_kv_cache",
]


def __getattr__(name):
    if name == "AsyncEngine":
        from lhama.engine.async_engine import AsyncEngine

        return AsyncEngine
    raise AttributeError(name)
