"""Run a task over a model: items in chunks, each chunk's records appended to a per-item
results file as soon as it is scored, so an interrupted run resumes where it stopped.

The output folder keeps ``items/<task>.jsonl`` (one JSON record per scored item) and
``items/<task>.run.json`` (what the run was: model, task file hash, settings). A rerun with the
same output folder skips the items already in the file; one with different settings is refused
instead of mixing results (``restart=True`` starts over).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from lhama.errors import ConfigError
from lhama.eval import choice, code, generative, perplexity
from lhama.eval.context import EvalContext
from lhama.eval.stats import Estimate
from lhama.eval.tasks import Task

log = logging.getLogger("lhama.eval")

KIND_MODULES = {"perplexity": perplexity, "multiple_choice": choice, "generative": generative, "code": code}
# Settings that change a kind's per-item results; the others (limit, chunk size) may differ on resume.
_FINGERPRINT_FIELDS = {
    "perplexity": ("window", "stride"),
    "multiple_choice": (),
    "generative": ("chat", "system", "max_tokens"),
    "code": ("chat", "system", "max_tokens", "samples", "pass_k", "temperature", "seed", "timeout_s"),
}


class EvalResumeError(ConfigError):
    """The output folder holds a run of the same task with other settings."""

    code = "eval_resume_mismatch"


@dataclass
class TaskResult:
    task: str
    kind: str
    model: str
    metrics: dict[str, Estimate]
    primary: str
    num_items: int
    seconds: float
    resumed_items: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "task": self.task,
            "kind": self.kind,
            "model": self.model,
            "num_items": self.num_items,
            "primary_metric": self.primary,
            "metrics": {k: v.as_dict() for k, v in self.metrics.items()},
            "seconds": round(self.seconds, 3),
            "resumed_items": self.resumed_items,
            **self.extra,
        }


class ItemsFile:
    """Append-only JSONL of scored items, fsynced per chunk. A line cut short by a kill is
    dropped on open (the item is scored again)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: dropping a partly written last line (an interrupted write)", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(end)
        records: dict[str, dict] = {}
        for line in data[:end].decode("utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                records[rec["id"]] = rec
        return records

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def fingerprint(task: Task, model_spec: str, ctx: EvalContext) -> dict:
    cfg = ctx.cfg.as_dict()
    return {
        "task": task.name,
        "kind": task.kind,
        "task_sha256": task.sha256,
        "model": str(model_spec),
        "settings": {k: cfg[k] for k in _FINGERPRINT_FIELDS[task.kind]},
    }


def check_resume(run_file: Path, fp: dict, items: ItemsFile, restart: bool) -> None:
    if restart:
        for p in (run_file, items.path):
            p.unlink(missing_ok=True)
    if run_file.exists():
        old = json.loads(run_file.read_text())
        if old != fp:
            diff = sorted(k for k in fp if old.get(k) != fp[k])
            raise EvalResumeError(
                f"{run_file.parent.parent} holds a run of task '{fp['task']}' with other {', '.join(diff)} "
                f"({old}); use another --output folder, or --restart to discard it"
            )
    else:
        run_file.write_text(json.dumps(fp, indent=1))


def run_task(
    ctx: EvalContext,
    task: Task,
    *,
    model_spec: str,
    out_dir: Path | None = None,
    restart: bool = False,
    progress: bool = True,
) -> TaskResult:
    if task.kind not in KIND_MODULES:
        raise ConfigError(f"task '{task.name}' is a {task.kind} task; run it with `lhama compare`")
    mod = KIND_MODULES[task.kind]
    task = task.limited(ctx.cfg.limit)
    done: dict[str, dict] = {}
    items_file = None
    if out_dir is not None:
        items_file = ItemsFile(Path(out_dir) / "items" / f"{task.name}.jsonl")
        check_resume(items_file.path.with_suffix(".run.json"), fingerprint(task, model_spec, ctx), items_file, restart)
        done = items_file.load()
    wanted = {it["id"] for it in task.items}
    resumed = len(wanted & done.keys())
    pending = [it for it in task.items if it["id"] not in done]
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(task.items), initial=resumed, desc=task.name, unit="item")
    try:
        for s in range(0, len(pending), ctx.cfg.chunk_size):
            chunk = pending[s : s + ctx.cfg.chunk_size]
            records = mod.score(ctx, chunk)
            if items_file is not None:
                items_file.append(records)
            done.update((r["id"], r) for r in records)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    records = [done[it["id"]] for it in task.items]
    return TaskResult(
        task.name,
        task.kind,
        ctx.model_name,
        mod.aggregate(records),
        mod.PRIMARY,
        len(records),
        time.perf_counter() - t0,
        resumed,
    )
