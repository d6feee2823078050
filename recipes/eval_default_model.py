"""Held-out evaluation of the default model's post-training (docs/default-model.md).

    .venv/bin/python recipes/eval_default_model.py --model default --out runs/eval/default
    .venv/bin/python recipes/eval_default_model.py --model smollm2-base --out runs/eval/base
    .venv/bin/python recipes/eval_default_model.py --write-sets     # regenerate recipes/heldout/
    .venv/bin/lhama compare --model-a default --model-b smollm2-base --judge smollm2-base \
        --judge-mode logprob --prompts recipes/heldout/pairwise.jsonl -o runs/eval/compare

The sets (recipes/heldout/*.jsonl) come from ``default_model_data`` with split="heldout": other
seeds, templates, system prompts and items than the training data, and none of the README's
literal prompts. Metrics:

- tool: ``lhama agent``'s loop (the code interpreter, greedy; batched, see ``eval_tool``): the
  share of questions where the model called the tool, and where the final answer has the right result;
- rag: the ``lhama rag ask`` prompt over generated documents: the answer cites the source that
  holds the fact, and states the fact too;
- brief: under a brevity system prompt, the answer ends on its own within 64 tokens; and is right;
- phrase: the expected phrase appears in the answer.

``--versus A_OUT B_OUT`` compares two runs item by item (``versus``): a win rate judged by the
checks, next to ``lhama compare``'s model-judged one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETS = HERE / "heldout"
SIZES = {"tool": 20, "rag": 20, "brief": 20, "phrase": 16}
SEED = 1000


def write_sets() -> None:
    from lhama.train.default_model_data import build_records

    SETS.mkdir(exist_ok=True)
    for task, n in SIZES.items():
        rows = [r for r in build_records("heldout", {task: n}, SEED) if r["task"] != "tool_answer"]
        (SETS / f"{task}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    # Open prompts for the judged comparison: the held-out phrase and brief questions, no system prompt.
    prompts = []
    for task in ("phrase", "brief"):
        for r in read_set(task, None):
            if {"prompt": r["messages"][-1]["content"]} not in prompts:
                prompts.append({"prompt": r["messages"][-1]["content"]})
    (SETS / "pairwise.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in prompts), encoding="utf-8"
    )


def read_set(task: str, limit: int | None) -> list[dict]:
    rows = [json.loads(x) for x in (SETS / f"{task}.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    return rows[:limit] if limit else rows


def eval_tool(lm, rows: list[dict]) -> tuple[dict, list[dict]]:
    """``Agent``'s loop, batched over the questions (one sequential agent run per question is too
    slow on a loaded 2-core machine): the same prompt (tools rendered by the chat format), the
    same stream parser for the call, the same code-interpreter tool and tool turn, greedy, at
    most two model calls. tests/train/test_default_model.py runs the real ``Agent``."""
    from lhama.errors import LhamaError
    from lhama.tools.builtin import as_tool
    from lhama.tools.stream_parser import ToolCallStreamParser
    from lhama.train.default_model_checks import contains

    tool = as_tool("code_interpreter")
    specs = [tool.spec()]
    convs = [[{"role": "user", "content": r["question"]}] for r in rows]
    called = [False] * len(rows)
    final = [""] * len(rows)
    active = list(range(len(rows)))
    for _ in range(2):
        if not active:
            break
        outs = _generate(lm, [convs[i] for i in active], 96, tools=specs, with_ids=True)
        still = []
        for i, (ids, stop) in zip(active, outs):
            parser = ToolCallStreamParser(lm.chat_format)
            parser.feed(ids + ([stop] if isinstance(stop, int) else []))
            parser.finish(parse=True)
            msg = dict(parser.message)
            convs[i].append(msg)
            calls = msg.get("tool_calls") or []
            final[i] = msg.get("content") or ""
            if not calls:
                continue
            called[i] = True
            for c in calls:
                try:
                    args = json.loads(c["function"]["arguments"])
                    result = (
                        tool(args)
                        if c["function"]["name"] == tool.name
                        else f"error: unknown tool {c['function']['name']!r}"
                    )
                except (
                    LhamaError,
                    ValueError,
                    TypeError,
                    KeyError,
                ) as e:  # the agent turns bad calls into error results the model sees
                    result = f"error: {e}"
                convs[i].append({"role": "tool", "tool_call_id": c.get("id", ""), "name": tool.name, "content": result})
            still.append(i)
        active = still
    items = [
        {
            "question": r["question"],
            "expected": r["expected"],
            "tool_called": called[i],
            "correct": contains(final[i], r["expected"]),
            "answer": final[i],
            "conversation": convs[i][1:],
        }
        for i, r in enumerate(rows)
    ]
    n = len(items)
    return {
        "tool_call_rate": sum(i["tool_called"] for i in items) / n,
        "correct_answer_rate": sum(i["correct"] for i in items) / n,
        "n": n,
    }, items


def _generate(lm, convs: list[list[dict]], max_tokens: int, *, tools=None, with_ids: bool = False):
    """Greedy answers, batched through the engine: (text, finish reason) or (token ids, stop reason)."""
    from lhama.engine import LLMEngine
    from lhama.generate import SamplingParams

    engine = LLMEngine.from_loaded(lm)
    ids = [lm.chat_format.encode_dialog(c, tools=tools, add_generation_prompt=True) for c in convs]
    params = [SamplingParams(temperature=0, max_tokens=max_tokens) for _ in convs]
    out = []
    for res in engine.generate(ids, params):
        comp = res.completions[0]
        out.append((list(comp.token_ids), comp.stop_reason) if with_ids else (comp.text, comp.finish_reason))
    return out


def eval_text(lm, task: str, rows: list[dict]) -> tuple[dict, list[dict]]:
    from lhama.rag.answer import parse_citations
    from lhama.train.default_model_checks import contains

    max_tokens = {"rag": 128, "brief": 64, "phrase": 64}[task]
    items = []
    for rec, (text, finish) in zip(rows, _generate(lm, [r["messages"] for r in rows], max_tokens)):
        item = {
            "prompt": rec["messages"][-1]["content"][-200:],
            "expected": rec["expected"],
            "answer": text,
            "finish_reason": finish,
            "correct": contains(text, rec["expected"]),
        }
        if task == "rag":
            cited, unknown = parse_citations(text, rec["n_sources"])
            item["cites_right_source"] = rec["source"] in cited
            item["unknown_citations"] = unknown
        items.append(item)
    n = len(items)
    out = {
        "correct_rate": sum(i["correct"] for i in items) / n,
        "n": n,
        "stopped_on_own_rate": sum(i["finish_reason"] == "stop" for i in items) / n,
    }
    if task == "rag":
        out["cites_right_source_rate"] = sum(i["cites_right_source"] for i in items) / n
        out["right_source_and_fact_rate"] = sum(i["cites_right_source"] and i["correct"] for i in items) / n
    return out, items


def _passed(task: str, item: dict) -> bool:
    if task == "tool":
        return item["correct"]
    if task == "rag":
        return item["cites_right_source"] and item["correct"]
    return item["correct"] and item["finish_reason"] == "stop"


def versus(a_dir: Path, b_dir: Path) -> dict:
    """Check-judged head to head on the same held-out items: where exactly one of the two models
    passes the item's check (tool: right final answer; rag: right source and fact; brief and
    phrase: right and stopped), that one wins; both or neither: a tie. ``win_rate`` is A's share of
    the decided items, ``win_rate_ties_half`` counts a tie as half a win over all items."""
    out: dict = {}
    wins = losses = ties = 0
    for task in ("tool", "rag", "brief", "phrase"):
        fa, fb = a_dir / "items" / f"{task}.jsonl", b_dir / "items" / f"{task}.jsonl"
        if not (fa.is_file() and fb.is_file()):
            continue
        ia, ib = ([json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()] for f in (fa, fb))
        w = sum(_passed(task, x) and not _passed(task, y) for x, y in zip(ia, ib))
        lo = sum(_passed(task, y) and not _passed(task, x) for x, y in zip(ia, ib))
        out[task] = {"wins": w, "losses": lo, "ties": len(ia) - w - lo}
        wins, losses, ties = wins + w, losses + lo, ties + len(ia) - w - lo
    n = wins + losses + ties
    out["all"] = {
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate": wins / max(1, wins + losses),
        "win_rate_ties_half": (wins + ties / 2) / max(1, n),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--out", help="folder for results.json and items/*.jsonl")
    p.add_argument("--tasks", default="tool,rag,brief,phrase")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--dtype", choices=["float32"], help="float weights (the adapter merged, not re-quantized)")
    p.add_argument("--lora", help="a PEFT adapter folder run beside --model (e.g. a recipe checkpoint)")
    p.add_argument("--write-sets", action="store_true")
    p.add_argument("--versus", nargs=2, metavar=("A_OUT", "B_OUT"), help="check-judged wins of A over B")
    a = p.parse_args(argv)
    if a.write_sets:
        write_sets()
        return 0
    if a.versus:
        print(json.dumps(versus(Path(a.versus[0]), Path(a.versus[1])), indent=2))
        return 0
    import torch

    from lhama.loader import load_model

    lm = load_model(a.model, dtype=torch.float32 if a.dtype else None, lora=a.lora)
    out = Path(a.out)
    (out / "items").mkdir(parents=True, exist_ok=True)
    results = {"model": a.model, **({"lora": a.lora} if a.lora else {})}
    for task in a.tasks.split(","):
        t0 = time.perf_counter()
        rows = read_set(task, a.limit)
        metrics, items = eval_tool(lm, rows) if task == "tool" else eval_text(lm, task, rows)
        metrics["seconds"] = round(time.perf_counter() - t0, 1)
        results[task] = metrics
        (out / "items" / f"{task}.jsonl").write_text(
            "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8"
        )
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(task, json.dumps(metrics), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
