"""Settings of an evaluation run as one frozen dataclass; ``lhama eval`` maps its flags onto it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lhama.errors import ConfigError


@dataclass(frozen=True)
class EvalConfig:
    limit: int | None = None  # first N items of each task
    chunk_size: int = 16  # items scored between two writes of the results file (what a kill can lose)
    max_batch_tokens: int = 4096  # tokens per forward pass of the log-likelihood scorer
    # Perplexity: the model reads at most ``window`` tokens; windows move by ``stride``
    # (None: the model's context capped at 1024, and half of the window).
    window: int | None = None
    stride: int | None = None
    # Generation (generative, code, pairwise): chat template on, greedy unless sampling for pass@k.
    chat: bool = True
    system: str | None = None
    max_tokens: int = 256
    # Code: ``samples`` completions per problem at ``temperature``; pass@k for each k.
    samples: int = 1
    pass_k: tuple[int, ...] = (1,)
    temperature: float = 0.8
    seed: int = 0
    timeout_s: float = 10.0  # per test run in the sandbox

    def __post_init__(self) -> None:
        def bad(msg):
            raise ConfigError(f"eval config: {msg}")

        if self.limit is not None and self.limit < 1:
            bad(f"limit must be >= 1, got {self.limit}")
        if self.chunk_size < 1:
            bad(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.max_batch_tokens < 1:
            bad(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}")
        if self.window is not None and self.window < 2:
            bad(f"window must be >= 2, got {self.window}")
        if self.stride is not None and (self.stride < 1 or (self.window and self.stride > self.window)):
            bad(f"stride must be in [1, window], got {self.stride}")
        if self.max_tokens < 1:
            bad(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.samples < 1:
            bad(f"samples must be >= 1, got {self.samples}")
        if not self.pass_k or any(k < 1 or k > self.samples for k in self.pass_k):
            bad(f"every pass@k needs 1 <= k <= samples ({self.samples}), got {list(self.pass_k)}")
        if self.samples > 1 and self.temperature <= 0:
            bad("several samples per problem need temperature > 0 (greedy samples are all the same)")
        if self.timeout_s <= 0:
            bad(f"timeout_s must be > 0, got {self.timeout_s}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pass_k"] = list(self.pass_k)
        return d
