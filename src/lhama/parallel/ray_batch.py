"""``lhama batch --ray --workers N``: one OpenAI batch file answered by N Ray actors, each running
its own ``LLMEngine`` (data parallelism: a full model copy per actor).

The driver alone reads the input and writes the output, through the same fsync'ed, resumable
writer as the single-process job (``lhama.engine.batch``): lines already answered by an earlier
run are skipped, invalid lines are answered by the driver, and the valid ones go to the actors in
chunks. A chunk's answers are written when the chunk comes back, so a job killed at any moment
and restarted answers every line exactly once (a chunk in flight when it died is redone whole).
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from lhama.engine.batch import BatchSummary, _error, _LineError, _Output, _parse_unique_line
from lhama.engine.config import EngineConfig
from lhama.errors import ConfigError
from lhama.extras import require

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

        return load_model(self.model, dtype=getattr(torch, self.dtype) if self.dtype else None, device=self.device,
                          chat_format=self.chat_format, tokenizer=self.tokenizer, max_seq_len=self.max_seq_len,
                          seed=self.seed)


class BatchWorker:
    """A Ray actor: one model, one engine; answers chunks of batch lines."""

    def __init__(self, spec: ModelSpec, config: EngineConfig, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        from lhama.engine.engine import LLMEngine

        self.lm = spec.load()
        self.engine = LLMEngine.from_loaded(self.lm, config)

    def run(self, raw_lines: list[str]) -> list[dict]:
        from lhama.engine.batch import run_batch_file

        with tempfile.TemporaryDirectory(prefix="lhama-ray-") as d:
            src, dst = Path(d) / "in.jsonl", Path(d) / "out.jsonl"
            src.write_text("\n".join(raw_lines) + "\n", encoding="utf-8")
            run_batch_file(self.lm, src, dst, engine=self.engine, progress=False)
            return [json.loads(x) for x in dst.read_text(encoding="utf-8").splitlines() if x.strip()]


def run_batch_ray(spec: ModelSpec, in_path: str | Path, out_path: str | Path, config: EngineConfig | None = None,
                  *, workers: int = 2, chunk_size: int | None = None, address: str | None = None,
                  progress: bool = True) -> BatchSummary:
    ray = require("ray", "ray")

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    config = config or EngineConfig()
    chunk_size = chunk_size or 2 * config.max_num_seqs
    in_path, out_path = Path(in_path), Path(out_path)
    lines = in_path.read_text(encoding="utf-8").splitlines()
    out = _Output(out_path)
    summary = BatchSummary()
    first_line_of: dict[str, int] = {}
    valid: list[tuple[int, str, str]] = []  # (line, custom_id, raw)
    bar = None

    def answer(entry: dict, ok: bool) -> None:
        out.write(entry)
        summary.succeeded += ok
        summary.failed += not ok
        if bar is not None:
            bar.update(1)

    def fail(lineno: int, cid, code: str, message: str) -> None:
        answer({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": cid, "response": None,
                "error": _error(code, message, lineno)}, False)

    try:
        todo = []
        for i, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            summary.total += 1
            try:
                obj = json.loads(raw)
                cid = obj.get("custom_id") if isinstance(obj, dict) else None
            except ValueError:
                cid = None
            is_first = isinstance(cid, str) and cid and first_line_of.setdefault(cid, i) == i
            if (i in out.done_lines) or (is_first and cid in out.done_ids):
                summary.already_done += 1
            else:
                todo.append((i, raw))
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=summary.total, initial=summary.already_done, unit="req", desc="batch (ray)")
        for lineno, raw in todo:  # the driver answers what needs no model
            try:
                cid, _url, _body = _parse_unique_line(raw, lineno, first_line_of)
            except _LineError as e:
                fail(lineno, e.custom_id, e.code, e.message)
                continue
            valid.append((lineno, cid, raw))
        if not valid:
            return summary

        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                     log_to_driver=False)
        n = min(workers, -(-len(valid) // chunk_size))
        actor_cls = ray.remote(num_cpus=1)(BatchWorker)
        actors = [actor_cls.remote(spec, config, 1) for _ in range(n)]
        chunks = [valid[i:i + chunk_size] for i in range(0, len(valid), chunk_size)]
        line_of = {cid: lineno for lineno, cid, _ in valid}
        pending: dict = {}
        nxt = 0

        def submit(actor) -> None:
            nonlocal nxt
            if nxt < len(chunks):
                ref = actor.run.remote([raw for _, _, raw in chunks[nxt]])
                pending[ref] = actor
                nxt += 1

        for a in actors:  # two chunks queued per actor so none idles between chunks
            submit(a)
            submit(a)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            actor = pending.pop(ref)
            for entry in ray.get(ref):
                cid = entry.get("custom_id")
                if entry.get("error") and cid in line_of:
                    entry["error"]["line"] = line_of[cid]  # the actor numbered its chunk's lines
                answer(entry, entry.get("error") is None)
            submit(actor)
        for a in actors:
            ray.kill(a)
    finally:
        out.close()
        if bar is not None:
            bar.close()
    return summary
