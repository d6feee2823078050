"""Pairwise comparison: models A and B answer the same prompts, a judge model compares the
answers in both orders, and the report gives A's win / tie / loss rates against B.

Runs in stages, one model in memory at a time (A's answers, B's answers, then the judge), each
stage appending to its own file in the output folder so an interrupted comparison resumes. When
two roles name the same model it is loaded once.

Two judging modes: ``generate`` lets the judge write a reason and a verdict that
``judge.parse_verdict`` reads (judgments without one count as ties and are reported);
``logprob`` asks for the verdict token directly and takes the most likely of A / B / C, so even a
small judge always gives a verdict.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lhama.errors import ConfigError
from lhama.eval.config import EvalConfig
from lhama.eval.context import EvalContext
from lhama.eval.judge import combine, judge_prompt, parse_verdict, summarize
from lhama.eval.runner import ItemsFile, TaskResult, check_resume
from lhama.eval.tasks import Task

JUDGE_MODES = ("generate", "logprob")


@dataclass(frozen=True)
class CompareConfig:
    eval: EvalConfig = EvalConfig()  # answers: chat, system prompt, max_tokens, chunk size, limit
    judge_mode: str = "generate"
    judge_max_tokens: int = 256

    def __post_init__(self):
        if self.judge_mode not in JUDGE_MODES:
            raise ConfigError(f"judge mode must be one of {JUDGE_MODES}, got {self.judge_mode!r}")
        if self.judge_max_tokens < 1:
            raise ConfigError(f"judge max tokens must be >= 1, got {self.judge_max_tokens}")


class ModelPool:
    """Loads a model spec on demand and keeps only the last one (the roles run one at a time)."""

    def __init__(self, load, preloaded: dict | None = None, engine_config=None):
        self._load = load
        self._engine_config = engine_config
        self._spec = None
        self._ctx: EvalContext | None = None
        self._preloaded = {
            k: EvalContext(v, EvalConfig(), engine_config=engine_config) for k, v in (preloaded or {}).items()
        }

    def context(self, spec: str, cfg: EvalConfig) -> EvalContext:
        if spec in self._preloaded:
            return self._preloaded[spec].with_config(cfg)
        if spec != self._spec:
            self._ctx = None
            gc.collect()
            self._ctx = EvalContext(self._load(spec), cfg, engine_config=self._engine_config)
            self._spec = spec
        return self._ctx.with_config(cfg)


def _answer_stage(pool: ModelPool, spec: str, items: list[dict], cfg: EvalConfig, f: ItemsFile, bar) -> dict:
    from lhama.generate import SamplingParams

    done = f.load()
    pending = [it for it in items if it["id"] not in done]
    if pending:
        ctx = pool.context(spec, cfg)
        params = SamplingParams(temperature=0.0, max_tokens=cfg.max_tokens)
        for s in range(0, len(pending), cfg.chunk_size):
            chunk = pending[s : s + cfg.chunk_size]
            texts = ctx.generate([it["prompt"] for it in chunk], params)
            recs = [{"id": it["id"], "answer": t[0]} for it, t in zip(chunk, texts)]
            f.append(recs)
            done.update((r["id"], r) for r in recs)
            bar.update(len(chunk))
    return done


def _judge_chunk(ctx: EvalContext, chunk: list[dict], ans_a: dict, ans_b: dict, ccfg: CompareConfig) -> list[dict]:
    fmt = ctx.loaded.chat_format
    convs = []
    for it in chunk:
        a, b = ans_a[it["id"]]["answer"], ans_b[it["id"]]["answer"]
        convs.append(judge_prompt(it["prompt"], a, b))
        convs.append(judge_prompt(it["prompt"], b, a))
    prompts = [fmt.encode_dialog(c) for c in convs]
    if ccfg.judge_mode == "generate":
        from lhama.generate import SamplingParams

        res = ctx.engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=ccfg.judge_max_tokens))
        raws = [r.completions[0].text for r in res]
        verdicts = [parse_verdict(t) for t in raws]
    else:
        tok = ctx.tokenizer
        opener = tok.encode("Verdict: [[")
        pairs = [(p + opener, tok.encode(x)) for p in prompts for x in ("A", "B", "C")]
        lls = [s.logprob for s in ctx.ll.continuation(pairs)]
        verdicts, raws = [], []
        for i in range(len(prompts)):
            trio = lls[3 * i : 3 * i + 3]
            best = max(range(3), key=trio.__getitem__)
            verdicts.append(("A", "B", "tie")[best])
            raws.append({"logprob_A": trio[0], "logprob_B": trio[1], "logprob_C": trio[2]})
    out = []
    for k, it in enumerate(chunk):
        v_ab, v_ba = verdicts[2 * k], verdicts[2 * k + 1]
        out.append(
            {
                "id": it["id"],
                "prompt": it["prompt"],
                "answer_a": ans_a[it["id"]]["answer"],
                "answer_b": ans_b[it["id"]]["answer"],
                "verdict_ab": v_ab,
                "verdict_ba": v_ba,
                "judge_ab": raws[2 * k],
                "judge_ba": raws[2 * k + 1],
                "outcome": combine(v_ab, v_ba),
            }
        )
    return out


def run_compare(
    task: Task,
    model_a: str,
    model_b: str,
    judge: str,
    ccfg: CompareConfig,
    *,
    load,
    out_dir: Path | None = None,
    restart: bool = False,
    progress: bool = True,
    preloaded: dict | None = None,
    engine_config=None,
) -> TaskResult:
    """Compare ``model_a`` with ``model_b`` on ``task``'s prompts; ``load(spec)`` returns a
    ``LoadedModel`` (``preloaded`` maps specs to models already in memory)."""
    if task.kind != "pairwise":
        raise ConfigError(
            f"task '{task.name}' is a {task.kind} task; a comparison needs prompts ({{\"prompt\": ...}} per line)"
        )
    cfg = ccfg.eval
    task = task.limited(cfg.limit)
    items = list(task.items)
    tmp = Path(out_dir or ".") / "items"
    files = None
    if out_dir is not None:
        files = {k: ItemsFile(tmp / f"{task.name}.{k}.jsonl") for k in ("answers-a", "answers-b", "judgments")}
        fp = {
            "task": task.name,
            "kind": "pairwise",
            "task_sha256": task.sha256,
            "model_a": model_a,
            "model_b": model_b,
            "judge": judge,
            "judge_mode": ccfg.judge_mode,
            "judge_max_tokens": ccfg.judge_max_tokens,
            "settings": {k: cfg.as_dict()[k] for k in ("chat", "system", "max_tokens")},
        }
        check_resume(tmp / f"{task.name}.compare.run.json", fp, files["judgments"], restart)
        if restart:
            for k in ("answers-a", "answers-b"):
                files[k].path.unlink(missing_ok=True)
    else:
        files = {k: _MemoryFile() for k in ("answers-a", "answers-b", "judgments")}
    pool = ModelPool(load, preloaded, engine_config)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    def bar(desc):
        return tqdm(total=len(items), desc=desc, unit="item", disable=not progress)

    judged = files["judgments"].load()
    resumed = sum(it["id"] in judged for it in items)
    todo = [it for it in items if it["id"] not in judged]
    if todo:
        with bar(f"{task.name}: answers of A") as b:
            b.update(len(items) - len(todo))
            ans_a = _answer_stage(pool, model_a, todo, cfg, files["answers-a"], b)
        with bar(f"{task.name}: answers of B") as b:
            b.update(len(items) - len(todo))
            ans_b = _answer_stage(pool, model_b, todo, cfg, files["answers-b"], b)
        jctx = pool.context(judge, replace(cfg, chat=True, system=None))
        with bar(f"{task.name}: judging") as b:
            b.update(len(items) - len(todo))
            for s in range(0, len(todo), cfg.chunk_size):
                chunk = todo[s : s + cfg.chunk_size]
                recs = _judge_chunk(jctx, chunk, ans_a, ans_b, ccfg)
                files["judgments"].append(recs)
                judged.update((r["id"], r) for r in recs)
                b.update(len(chunk))
    records = [judged[it["id"]] for it in items]
    counts = {o: sum(r["outcome"] == o for r in records) for o in ("win", "tie", "loss")}
    return TaskResult(
        task.name,
        "pairwise",
        f"{model_a} vs {model_b}",
        summarize(records),
        "win_rate_ties_half",
        len(records),
        time.perf_counter() - t0,
        resumed,
        extra={"model_a": model_a, "model_b": model_b, "judge": judge, "judge_mode": ccfg.judge_mode, "counts": counts},
    )


class _MemoryFile:
    def __init__(self):
        self.records: dict[str, dict] = {}

    def load(self) -> dict[str, dict]:
        return dict(self.records)

    def append(self, records: list[dict]) -> None:
        self.records.update((r["id"], r) for r in records)
