"""Engine settings as one frozen dataclass; the CLI maps its flags onto it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lhama.errors import ConfigError


@dataclass(frozen=True)
class EngineConfig:
    # KV cache geometry and size. ``num_blocks`` wins over a memory budget; ``kv_cache_gb`` over
    # ``kv_cache_fraction`` (of free device memory); with none of them a default budget applies
    # (see ``lhama.engine.memory``).
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_gb: float | None = None
    kv_cache_fraction: float | None = None
    # What K/V are stored in: "auto" (bfloat16 under a float32 model on a CPU, half the memory;
    # attention still computes in fp32), "float32", "bfloat16" or "int8" (per-row scales, about
    # half of bf16's bytes; lhama.model.kv_cache_dtype).
    kv_cache_dtype: str = "auto"
    # Scheduling: at most ``max_num_seqs`` sequences run in one step, and the step computes at
    # most ``max_num_batched_tokens`` tokens (decodes count one each; prompts are chunked to fit).
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 256
    # Context cap below the model's ``max_seq_len`` (None: the model's, or what the cache holds).
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    # torch.compile the pure-decode forward (same tokens; needs a C++ compiler on CPU).
    compile: bool = False
    # CPU only: run the LM head through oneDNN with a pre-packed copy of its weight (much faster
    # than MKL on AMD CPUs; logits differ from F.linear in the last bits, like any other kernel).
    # The copy is taken when the engine starts: build a new engine after changing the weights.
    packed_head: bool = True
    # CUDA only: replay pure-decode steps from CUDA graphs (captured per batch/context bucket on
    # first use) for batches up to ``max_num_seqs`` and contexts up to ``cuda_graph_max_len``
    # tokens; other steps run eagerly. ``--enforce-eager`` turns them off.
    cuda_graphs: bool = True
    cuda_graph_max_len: int = 8192
    # Batch-invariant results: a request's tokens and logprobs are bitwise the same whether it
    # runs alone or beside others, with or without a prefix-cache hit (every token is its own
    # one-row forward; see lhama.engine.runner). Slower; turns compile and CUDA graphs off.
    deterministic: bool = False

    def __post_init__(self) -> None:
        def bad(msg):
            raise ConfigError(f"engine config: {msg}")

        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            bad(f"block_size must be a positive power of two, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            bad(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.kv_cache_gb is not None and not self.kv_cache_gb > 0:
            bad(f"kv_cache_gb must be > 0, got {self.kv_cache_gb}")
        if self.kv_cache_fraction is not None and not (0 < self.kv_cache_fraction <= 1):
            bad(f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction}")
        if self.kv_cache_dtype not in ("auto", "float32", "bfloat16", "float16", "int8"):
            bad(f"kv_cache_dtype must be auto, float32, bfloat16, float16 or int8, got {self.kv_cache_dtype!r}")
        if self.max_num_seqs < 1:
            bad(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            bad(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.cuda_graph_max_len < 1:
            bad(f"cuda_graph_max_len must be >= 1, got {self.cuda_graph_max_len}")
        if self.max_model_len is not None and self.max_model_len < 1:
            bad(f"max_model_len must be >= 1, got {self.max_model_len}")

    def with_(self, **changes) -> EngineConfig:
        return replace(self, **changes)
