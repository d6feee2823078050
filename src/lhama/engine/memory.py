"""The KV-cache memory plan: how many blocks a budget buys, and how long a context that holds.

Printed at startup so nobody has to guess why a long prompt was refused (users of other
servers complain about 128K contexts that silently don't fit).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from lhama.engine.config import EngineConfig
from lhama.errors import ConfigError
from lhama.model import ModelArgs, kv_cache_dtype
from lhama.model.kv_cache import kv_row_bytes

log = logging.getLogger("lhama.engine")

GIB = 1024**3
# Without a budget: a CPU gets a quarter of the available RAM, a GPU 90% of its free memory after
# the weights are loaded; either way no more than ``max_num_seqs`` full contexts need. On a CPU
# the pages are committed as blocks are first written (``PagedKVCache``), so an idle server holds
# little more than its weights whatever the budget.
DEFAULT_CPU_FRACTION = 0.25
DEFAULT_GPU_FRACTION = 0.9


@dataclass(frozen=True)
class MemoryPlan:
    bytes_per_token: int
    bytes_per_block: int
    block_size: int
    num_blocks: int
    budget_bytes: int
    budget_source: str
    model_max_len: int  # what the model supports
    max_model_len: int  # what requests may use: min(model, config cap, cache capacity)
    notes: tuple[str, ...] = field(default=())

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def kv_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    def describe(self) -> str:
        lines = [
            (
                f"KV cache: {self.num_blocks} blocks x {self.block_size} tokens "
                f"({self.bytes_per_block / 2**20:.2f} MiB per block, {self.bytes_per_token / 1024:.1f} KiB per token) "
                f"= {self.kv_bytes / GIB:.2f} GiB for {self.capacity_tokens} tokens [{self.budget_source}]"
            ),
            f"context: {self.max_model_len} tokens per request (model supports {self.model_max_len})",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _available_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), "free GPU memory"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available RAM"
    except (ValueError, OSError, AttributeError):
        return 8 * GIB, "assumed 8 GiB RAM"


def plan_kv_cache(
    args: ModelArgs, config: EngineConfig, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> MemoryPlan:
    device = torch.device(device)
    dtype = kv_cache_dtype(dtype, device, config.kv_cache_dtype)  # what PagedKVCache stores K/V in
    # Bytes of a (token, KV head) row as PagedKVCache stores it: head_dim values, and for int8 their
    # bf16 scale beside them (66 bytes at head_dim 64 against bf16's 128).
    per_token = 2 * args.n_layers * args.n_kv_heads * kv_row_bytes(args.head_dim, dtype)
    per_block = per_token * config.block_size
    model_len = args.max_seq_len
    wanted_len = min(model_len, config.max_model_len or model_len)
    notes: list[str] = []

    if config.num_blocks is not None:
        num_blocks, budget, source = config.num_blocks, config.num_blocks * per_block, "num_blocks"
    else:
        if config.kv_cache_gb is not None:
            budget, source = int(config.kv_cache_gb * GIB), f"kv_cache_gb={config.kv_cache_gb:g}"
        else:
            avail, what = _available_bytes(device)
            if config.kv_cache_fraction is not None:
                budget = int(avail * config.kv_cache_fraction)
                source = f"{config.kv_cache_fraction:.0%} of {what} ({avail / GIB:.1f} GiB)"
            else:
                frac = DEFAULT_GPU_FRACTION if device.type == "cuda" else DEFAULT_CPU_FRACTION
                budget, source = int(avail * frac), f"default: {frac:.0%} of {what} ({avail / GIB:.1f} GiB)"
        # No point holding more than every running sequence at full context.
        useful = config.max_num_seqs * -(-wanted_len // config.block_size) * per_block
        if useful < budget:
            budget = useful
            source += f", capped at max_num_seqs={config.max_num_seqs} x {wanted_len} tokens"
        num_blocks = budget // per_block
    if num_blocks < 1:
        raise ConfigError(
            f"the KV-cache budget ({budget / 2**20:.1f} MiB, {source}) is smaller than one block "
            f"({per_block / 2**20:.2f} MiB); raise --kv-cache-gb or --kv-cache-fraction"
        )
    capacity = num_blocks * config.block_size
    max_len = wanted_len
    if capacity < wanted_len:
        max_len = capacity
        notes.append(
            f"the cache holds {capacity} tokens, fewer than the {wanted_len}-token context: requests are "
            f"capped at {capacity} tokens (raise --kv-cache-gb to about "
            f"{wanted_len * per_token / GIB:.2f} GiB for the full context)"
        )
    elif capacity < wanted_len * min(config.max_num_seqs, 4):
        notes.append(
            f"only {capacity // wanted_len} full-context sequence(s) fit at once; "
            "more run concurrently when they are shorter, others wait or are preempted"
        )
    return MemoryPlan(
        per_token, per_block, config.block_size, num_blocks, budget, source, model_len, max_len, tuple(notes)
    )
