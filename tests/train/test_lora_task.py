"""Must-show: LoRA SFT of the default model on a small task measurably improves a held-out metric.

The task, generated deterministically: "What is A plus B?" answered as ``#### S`` (GSM8K's
final-answer format, which SmolLM2-135M-Instruct does not use by default). Held-out pairs (A, B)
never appear in training. Metrics on the held-out set, before and after: exact match of the
greedy answer, format compliance (the answer starts with ``####``), and the loss on the answer
tokens. Slow (a few minutes of CPU training); the figures are in docs/training.md.

    .venv/bin/python -m pytest tests/train/test_lora_task.py -m slow -s
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest
import torch

from lhama.cli import main

PHRASES = ["What is {a} plus {b}?", "Compute {a} + {b}.", "Add {a} and {b}.", "{a} plus {b} equals what?"]


def _held_out(a: int, b: int) -> bool:
    return (a * 31 + b) % 7 == 0


def task_examples(n: int, *, held_out: bool, seed: int) -> list[dict]:
    r = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = r.randint(1, 30), r.randint(1, 30)
        if _held_out(a, b) != held_out:
            continue
        q = r.choice(PHRASES).format(a=a, b=b)
        out.append(
            {
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"#### {a + b}"}],
                "answer": a + b,
            }
        )
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    return path


def _greedy_answers(lm, rows: list[dict], max_tokens: int = 12) -> list[str]:
    from lhama.engine import LLMEngine
    from lhama.generate import SamplingParams

    engine = LLMEngine.from_loaded(lm)
    prompts = [lm.chat_format.encode_dialog(r["messages"][:1]) for r in rows]
    results = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=max_tokens))
    return [res.completions[0].text.strip() for res in results]


def _scores(answers: list[str], rows: list[dict]) -> dict:
    exact = sum(a == f"#### {r['answer']}" for a, r in zip(answers, rows))
    fmt = sum(bool(re.match(r"^####\s*\d+$", a)) for a in answers)
    return {"exact_match": exact / len(rows), "format": fmt / len(rows), "examples": answers[:3]}


@pytest.mark.slow
def test_lora_sft_improves_held_out_exact_match(smollm2_path, tmp_path, capsys):
    from lhama.loader import load_model

    train = _write(tmp_path / "train.jsonl", task_examples(400, held_out=False, seed=0))
    held_rows = task_examples(60, held_out=True, seed=1)
    held = _write(tmp_path / "heldout.jsonl", held_rows)
    base = load_model(smollm2_path, dtype=torch.float32, device="cpu")  # the precision --lora loads at
    before = _scores(_greedy_answers(base, held_rows), held_rows)
    del base
    t0 = time.perf_counter()
    rc = main(
        [
            "finetune",
            "--recipe",
            "lora",
            "--model",
            str(smollm2_path),
            "--data",
            str(train),
            "--eval-data",
            str(held),
            "--output-dir",
            str(tmp_path / "run"),
            "--max-steps",
            "30",
            "--batch-size",
            "4",
            "--max-seq-len",
            "128",
            "--lr",
            "2e-3",
            "--warmup-steps",
            "3",
            "--lora-rank",
            "16",
            "--lora-alpha",
            "32",
            "--lora-target",
            "all",
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    train_s = time.perf_counter() - t0
    tuned = load_model(smollm2_path, lora=tmp_path / "run" / "adapter", device="cpu")
    after = _scores(_greedy_answers(tuned, held_rows), held_rows)
    report = {
        "heldout_examples": len(held_rows),
        "train_examples": 400,
        "steps": summary["steps"],
        "train_seconds": round(train_s, 1),
        "tokens_per_s": summary.get("tokens_per_s"),
        "heldout_loss_before": summary["eval_loss_before"],
        "heldout_loss_after": summary["eval_loss_after"],
        "before": before,
        "after": after,
    }
    with capsys.disabled():
        print("\nLORA TASK RESULT " + json.dumps(report, indent=2))
    assert summary["eval_loss_after"] < 0.5 * summary["eval_loss_before"]
    assert after["format"] >= 0.9 > before["format"]
    assert after["exact_match"] >= before["exact_match"] + 0.2
