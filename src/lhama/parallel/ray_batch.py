"""``lhama batch --ray --workers N``: one OpenAI batch file answered by N Ray actors, each running
its own ``LLMEngine`` (data parallelism: a full model copy per actor).

The driver runs the one batch runner (``lhama.openai.batch.run_batch``): it alone reads the input
and writes the fsync'ed ledger, skips lines answered by an earlier run and answers invalid ones.
``RayExecutor`` sends the valid lines to the actors in chunks; each actor runs them with the
in-process executor (``lhama.openai.engine_batch``). A chunk's answers are written when the chunk
comes back, so a job killed at any moment and restarted answers every line exactly once (a chunk
in flight when it died is redone whole).

Actors that share a machine load a GGUF's blocks as views of the file's map
(``LHAMA_WEIGHTS_MMAP=1``): they then share the page cache's one copy of the weights, where the
default copies into anonymous memory would be one per actor. An actor alone on its node keeps the
copies (faster reads); ``LHAMA_WEIGHTS_MMAP`` set in the actors' environment wins either way.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lhama.engine.config import EngineConfig
from lhama.errors import ConfigError
from lhama.extras import require
from lhama.openai.batch import (
    Answer,
    BatchLine,
    BatchSummary,
    LineFailed,
    describe_error,
    run_batch,
)

log = logging.getLogger("lhama.parallel")


@dataclass(frozen=True)
class ModelSpec:
    """What each actor passes to ``lhama.loader.load_model`` (actors load their own copy)."""

    model: str = "default"
    dtype: str | None = None  # "float32" | "bfloat16" | "float16"
    device: str | None = None
    chat_format: str | None = None
    tokenizer: str | None = None
    max_seq_len: int | None = None
    seed: int = 0

    def load(self):
        import torch

        from lhama.loader import load_model

        return load_model(
            self.model,
            dtype=getattr(torch, self.dtype) if self.dtype else None,
            device=self.device,
            chat_format=self.chat_format,
            tokenizer=self.tokenizer,
            max_seq_len=self.max_seq_len,
            seed=self.seed,
        )


def shared_machines(nodes: Sequence[str]) -> list[bool]:
    """For each actor's node id: whether another actor of the job runs on the same node."""
    count = Counter(nodes)
    return [count[n] > 1 for n in nodes]


class BatchWorker:
    """A Ray actor: one model, one engine; answers chunks of batch lines. ``load`` comes first
    (the driver calls it once it knows which actors share a node: ``node``)."""

    def __init__(self, spec: ModelSpec, config: EngineConfig, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.spec, self.config, self.executor = spec, config, None

    def node(self) -> str:
        """This actor's Ray node id."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def load(self, shared_machine: bool) -> bool:
        """Load the model; with ``shared_machine`` a GGUF's blocks stay views of the file's map
        (``LHAMA_WEIGHTS_MMAP=1`` unless the environment already sets it), so the actors on one
        machine share the page cache's copy. True when the blocks are map views."""
        from lhama.checkpoints.quantized import weights_in_map
        from lhama.openai.engine_batch import EngineExecutor

        if shared_machine:
            os.environ.setdefault("LHAMA_WEIGHTS_MMAP", "1")
        self.executor = EngineExecutor(self.spec.load(), config=self.config)
        return weights_in_map()

    def run(self, lines: list[BatchLine]) -> list[tuple[int, dict | tuple]]:
        """(input line, response body or its failure's ``describe_error`` fields) per line:
        exceptions need not pickle, their description does."""
        out: list[tuple[int, dict | tuple]] = []

        def answer(line: BatchLine, result) -> None:
            out.append((line.line, result if isinstance(result, dict) else describe_error(result)))

        self.executor.run(lines, answer)
        return out


class RayExecutor:
    """Runs batch lines on ``workers`` Ray actors, ``chunk_size`` lines per call."""

    def __init__(
        self,
        spec: ModelSpec,
        config: EngineConfig | None = None,
        *,
        workers: int = 2,
        chunk_size: int | None = None,
        address: str | None = None,
    ):
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        require("ray", "ray")  # here, so a missing extra stops the command instead of failing each line
        self.spec, self.config, self.workers, self.address = spec, config or EngineConfig(), workers, address
        self.chunk_size = chunk_size or 2 * self.config.max_num_seqs

    def run(self, lines: Sequence[BatchLine], answer: Answer) -> None:
        ray = require("ray", "ray")
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                num_cpus=None if self.address else self.workers,
                include_dashboard=False,
                log_to_driver=False,
            )
        chunks = [list(lines[i : i + self.chunk_size]) for i in range(0, len(lines), self.chunk_size)]
        by_line = {ln.line: ln for ln in lines}
        actor_cls = ray.remote(num_cpus=1)(BatchWorker)
        actors = [actor_cls.remote(self.spec, self.config, 1) for _ in range(min(self.workers, len(chunks)))]
        pending: dict = {}
        nxt = 0

        def submit(actor) -> None:
            nonlocal nxt
            if nxt < len(chunks):
                pending[actor.run.remote(chunks[nxt])] = actor
                nxt += 1

        try:
            if actors:  # actors sharing a node share the file's page cache (map views): one copy, not N
                shared = shared_machines(ray.get([a.node.remote() for a in actors]))
                in_map = ray.get([a.load.remote(s) for a, s in zip(actors, shared, strict=True)])
                log.info(
                    "ray batch: %d actors, %d with LHAMA_WEIGHTS_MMAP=1 (shared page cache)", len(actors), sum(in_map)
                )
            for a in actors:  # two chunks queued per actor so none idles between chunks
                submit(a)
                submit(a)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                actor = pending.pop(done[0])
                for lineno, result in ray.get(done[0]):
                    answer(by_line[lineno], result if isinstance(result, dict) else LineFailed(*result))
                submit(actor)
        finally:
            for a in actors:
                ray.kill(a)


def run_batch_ray(
    spec: ModelSpec,
    in_path: str | Path,
    out_path: str | Path,
    config: EngineConfig | None = None,
    *,
    workers: int = 2,
    chunk_size: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> BatchSummary:
    """``run_batch_file`` spread over Ray actors (same output, same resume guarantees)."""
    executor = RayExecutor(spec, config, workers=workers, chunk_size=chunk_size, address=address)
    return run_batch(in_path, out_path, executor, progress=progress, desc="batch (ray)")
