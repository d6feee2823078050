"""Continuous batching: scheduler, paged KV cache with prefix caching, async front end,
offline batch jobs. See docs/engine.md."""

from lhama.engine.config import EngineConfig
from lhama.engine.engine import KVCacheCapacityError, LLMEngine
from lhama.engine.kv_cache_manager import KVCacheManager
from lhama.engine.memory import MemoryPlan, plan_kv_cache
from lhama.engine.metrics import EngineStats
from lhama.engine.outputs import EngineDelta, RequestResult
from lhama.engine.paged_cache import PagedKVCache
from lhama.engine.scheduler import Scheduler, SchedulerOutput

__all__ = ["EngineConfig", "KVCacheCapacityError", "LLMEngine", "KVCacheManager", "MemoryPlan", "plan_kv_cache",
           "EngineStats", "EngineDelta", "RequestResult", "PagedKVCache", "Scheduler", "SchedulerOutput",
           "AsyncEngine"]


def __getattr__(name):
    if name == "AsyncEngine":
        from lhama.engine.async_engine import AsyncEngine

        return AsyncEngine
    raise AttributeError(name)
