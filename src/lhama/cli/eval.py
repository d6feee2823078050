"""``lhama eval`` (tasks), ``lhama compare`` (pairwise with a judge) and ``lhama lm-eval`` (the
lm-evaluation-harness with lhama as a model): flags to configs, then ``lhama.eval``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lhama.cli.args import (
    DTYPES,
    add_engine_args,
    add_model_args,
    engine_config_from_args,
    load_model_from_args,
)


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Evaluate a model on shipped tasks (see --list) or your own JSONL files. With --output, "
        "writes results.json, report.md and chart.png, and resumes an interrupted run."
    )
    p.add_argument(
        "--task",
        "-t",
        action="append",
        default=[],
        metavar="NAME|FILE.jsonl",
        help="a shipped task name or a JSONL file (repeatable; 'mc', 'gen', 'ppl' run all 8 languages)",
    )
    p.add_argument("--list", action="store_true", help="list the shipped tasks and exit")
    p.add_argument(
        "--kind",
        choices=["perplexity", "multiple_choice", "generative", "code"],
        help="the task kind of a JSONL file (default: from its items' fields)",
    )
    add_model_args(p)
    _add_run_args(p)
    g = p.add_argument_group("tasks")
    g.add_argument("--window", type=int, help="perplexity: tokens the model reads at once (default: context, max 1024)")
    g.add_argument("--stride", type=int, help="perplexity: tokens the window moves (default: window / 2)")
    g.add_argument("--samples", type=int, default=1, help="code: completions per problem (1: greedy)")
    g.add_argument("--pass-k", default=None, help="code: comma-separated k values (default: 1, plus --samples)")
    g.add_argument("--temperature", type=float, default=0.8, help="code: sampling temperature when --samples > 1")
    g.add_argument("--seed", type=int, default=0, help="code: sampling seed")
    g.add_argument("--timeout", type=float, default=10.0, help="code: CPU seconds per test run in the sandbox")
    add_engine_args(p)
    p.set_defaults(func=cmd_eval)


def add_compare_args(c: argparse.ArgumentParser) -> None:
    c.description = "Models A and B answer the same prompts; a judge compares the answers in both orders."
    c.add_argument("--model-a", required=True, help="model A (e.g. the fine-tuned one)")
    c.add_argument("--model-b", required=True, help="model B (e.g. the base model)")
    c.add_argument("--judge", default="default", help="judge model")
    c.add_argument("--prompts", default="pairwise", help='shipped prompt set or JSONL file of {"prompt": ...}')
    c.add_argument(
        "--judge-mode",
        choices=["generate", "logprob"],
        default="generate",
        help="generate: the judge writes a reason and [[A]]/[[B]]/[[C]]; logprob: the most likely verdict",
    )
    c.add_argument("--judge-max-tokens", type=int, default=256, help="tokens the judge may write (generate mode)")
    c.add_argument("--tokenizer", help="tokenizer for named configs")
    c.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    c.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: the checkpoint's)")
    _add_run_args(c)
    add_engine_args(c)
    c.set_defaults(func=cmd_compare)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--limit", type=int, help="first N items of each task")
    g.add_argument(
        "--output",
        "-o",
        type=Path,
        help="folder for results.json, report.md, chart.png and the per-item files that make the run resumable",
    )
    g.add_argument("--restart", action="store_true", help="discard the per-item results in --output and start over")
    g.add_argument("--chunk-size", type=int, default=16, help="items between two saves")
    g.add_argument("--batch-tokens", type=int, default=4096, help="tokens per log-likelihood forward pass")
    g.add_argument("--max-tokens", type=int, default=256, help="generated tokens per answer")
    g.add_argument("--no-chat", action="store_true", help="prompt with plain text instead of the chat format")
    g.add_argument("--system", help="system prompt for generated answers")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print results.json to stdout instead of the table")


GROUPS = {"mc": "mc-", "gen": "gen-", "ppl": "ppl-"}


def _task_specs(names: list[str]) -> list[str]:
    from lhama.eval.tasks import shipped_tasks

    out = []
    for n in names:
        if n in GROUPS:
            out += [t for t in shipped_tasks() if t.startswith(GROUPS[n])]
        else:
            out.append(n)
    return out


def _eval_config(a, **extra):
    from lhama.eval.config import EvalConfig

    return EvalConfig(
        limit=a.limit,
        chunk_size=a.chunk_size,
        max_batch_tokens=a.batch_tokens,
        max_tokens=a.max_tokens,
        chat=not a.no_chat,
        system=a.system,
        **extra,
    )


def _finish(a, results, config: dict) -> int:
    import json

    from lhama.eval import report

    if a.output:
        rep = report.write(results, a.output, config=config)
        print(f"wrote {a.output}/results.json, report.md, chart.png", file=sys.stderr)
    else:
        rep = report.build(results, config=config)
    print(json.dumps(rep, indent=2, ensure_ascii=False) if a.json else report.markdown(rep))
    return 0


def cmd_eval(a) -> int:
    from lhama.errors import ConfigError
    from lhama.eval import EvalContext, load_task, run_task, shipped_tasks

    if a.list:
        for name in shipped_tasks():
            t = load_task(name)
            print(f"{name:14} {t.kind:16} {len(t):3} items")
        return 0
    if not a.task:
        raise ConfigError("give at least one --task (see `lhama eval --list`)")
    samples = a.samples
    pass_k = tuple(int(k) for k in a.pass_k.split(",")) if a.pass_k else tuple(sorted({1, samples}))
    cfg = _eval_config(
        a,
        window=a.window,
        stride=a.stride,
        samples=samples,
        pass_k=pass_k,
        temperature=a.temperature,
        seed=a.seed,
        timeout_s=a.timeout,
    )
    tasks = [load_task(s, kind=a.kind) for s in _task_specs(a.task)]  # validate all before loading the model
    loaded = load_model_from_args(a)
    ctx = EvalContext(loaded, cfg, engine_config=engine_config_from_args(a))
    results = []
    try:
        for t in tasks:
            results.append(
                run_task(ctx, t, model_spec=a.model, out_dir=a.output, restart=a.restart, progress=not a.no_progress)
            )
    except KeyboardInterrupt:
        if a.output:
            print(
                f"\ninterrupted: scored items are saved in {a.output}/items; run the same command again to resume",
                file=sys.stderr,
            )
        raise
    return _finish(a, results, {"model": a.model, **cfg.as_dict()})


def cmd_compare(a) -> int:
    import torch

    from lhama.eval.pairwise import CompareConfig, run_compare
    from lhama.eval.tasks import load_task
    from lhama.loader import load_model

    ccfg = CompareConfig(eval=_eval_config(a), judge_mode=a.judge_mode, judge_max_tokens=a.judge_max_tokens)
    task = load_task(a.prompts, kind="pairwise")
    dtype = getattr(torch, a.dtype) if a.dtype else None

    def load(spec):
        return load_model(spec, dtype=dtype, device=a.device, tokenizer=a.tokenizer)

    try:
        res = run_compare(
            task,
            a.model_a,
            a.model_b,
            a.judge,
            ccfg,
            load=load,
            out_dir=a.output,
            restart=a.restart,
            progress=not a.no_progress,
            engine_config=engine_config_from_args(a),
        )
    except KeyboardInterrupt:
        if a.output:
            print(
                f"\ninterrupted: answers and judgments are saved in {a.output}/items; run the same command "
                f"again to resume",
                file=sys.stderr,
            )
        raise
    return _finish(
        a,
        [res],
        {
            "model_a": a.model_a,
            "model_b": a.model_b,
            "judge": a.judge,
            "judge_mode": a.judge_mode,
            **ccfg.eval.as_dict(),
        },
    )


PTH_NAME = "lhama-lm-eval.pth"


def add_lm_eval_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Without --install/--uninstall: the arguments go to lm-evaluation-harness's CLI with the "
        "'lhama' model registered; put them after '--', e.g. `lhama lm-eval -- --model lhama "
        "--model_args pretrained=default --tasks my_task --include_path tasks/`."
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--install",
        action="store_true",
        help="add a start-up hook to this Python's site-packages so the plain `lm_eval` command knows --model lhama",
    )
    g.add_argument("--uninstall", action="store_true", help="remove that hook")
    p.add_argument("harness_args", nargs=argparse.REMAINDER, help="arguments for lm_eval")
    p.set_defaults(func=cmd_lm_eval)


def pth_path() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def install_lm_eval_hook() -> Path:
    """Write the .pth file that runs ``lm_eval_hook`` at start-up (idempotent)."""
    from lhama.eval import lm_eval_hook

    hook = Path(lm_eval_hook.__file__).resolve()
    line = (
        "import importlib.util as _u; _s = _u.spec_from_file_location('lhama_lm_eval_hook', "
        f"{str(hook)!r}); _s.loader.exec_module(_u.module_from_spec(_s))\n"
    )
    path = pth_path()
    if not path.exists() or path.read_text() != line:
        path.write_text(line)
    return path


def cmd_lm_eval(a) -> int:
    from lhama.extras import require

    if a.install:
        print(f"installed {install_lm_eval_hook()}: `lm_eval --model lhama` now works in this environment")
        return 0
    if a.uninstall:
        pth_path().unlink(missing_ok=True)
        print(f"removed {pth_path()}")
        return 0
    require("lm_eval.models", "eval")  # the harness's own models first, then ours
    cli_evaluate = require("lm_eval.__main__", "eval").cli_evaluate
    import lhama.eval.lm_eval_adapter  # noqa: F401

    args = [x for x in a.harness_args if x != "--"]
    sys.argv = ["lm_eval", *args]
    cli_evaluate()
    return 0
