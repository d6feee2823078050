"""Recipe: the default model's post-training, Llama 3.1 style, on the CPU (``make default-model``).

    python -m lhama.train.default_model_recipe --config recipes/default-model.yaml

Steps, each skipped when its output exists (so an interrupted run continues):

1. ``data``: templated records from ``default_model_data`` (answers checked by execution).
2. ``sample``: rejection sampling of the base model's own candidates, scored by
   ``default_model_checks``; SFT data is the best candidate that passes its check, else the
   templated gold answer.
3. ``sft``: LoRA SFT on that data.
4. ``dpo``: the SFT model samples fresh prompts; (best, worst) pairs (best: a passing candidate,
   else gold; worst: a failing candidate) train the same adapter by DPO, the SFT model as the
   reference. ``dpo_rounds`` repeats this from the new policy.

The final adapter is ``OUTPUT/adapter``; ``--ship DIR`` copies it (fp16) for the package.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lhama.errors import ConfigError
from lhama.model.lora import LoraConfig
from lhama.train.config import TrainConfig
from lhama.train.default_model_checks import TaskReward, check, contains
from lhama.train.default_model_data import base_text, build_records
from lhama.train.dpo import DPOConfig
from lhama.train.rejection import RejectionConfig, rejection_sample


@dataclass(frozen=True)
class DefaultModelRecipe:
    base: str = "smollm2-base"  # the raw GGUF: never the adapted default
    output_dir: str = "runs/default-model"
    seed: int = 0
    sizes: dict = field(default_factory=lambda: {"tool": 120, "rag": 60, "brief": 60, "phrase": 40})
    dpo_sizes: dict = field(default_factory=lambda: {"tool": 40, "rag": 20, "brief": 20, "phrase": 12})
    sample: dict = field(default_factory=lambda: {"num_candidates": 4, "temperature": 0.8, "max_tokens": 96})
    lora: dict = field(default_factory=lambda: {"rank": 8, "alpha": 16.0, "target_modules": ["all"]})
    sft: dict = field(
        default_factory=lambda: {"lr": 1e-3, "max_steps": 60, "batch_size": 4, "max_seq_len": 512, "warmup_steps": 4}
    )
    dpo: dict = field(
        default_factory=lambda: {"lr": 2e-4, "max_steps": 20, "batch_size": 4, "max_seq_len": 512, "beta": 0.1}
    )
    dpo_rounds: int = 1
    # Rejection-sample only this many records (evenly spread; 0: all): sampling is the slow part on
    # a CPU. The rest train on their gold answers.
    sample_limit: int = 0
    # SFT: this many tool exchanges share one conversation (one system prompt with the tool spec).
    tool_questions_per_conversation: int = 1
    # DPO: besides (best, worst sampled) pairs, the failures seen in evaluation as rejected answers
    # for every prompt of their task: after the tool result, the call repeated instead of the
    # answer; over documents, the answer without its citation.
    hard_negatives: bool = False
    # Records of these tasks are all rejection-sampled (besides the ``sample_limit`` spread): the
    # base model's own passing answer, cut to the sentence that holds the fact, is then the SFT
    # target where it knows the fact (brief: its "The capital of X is Y." shape).
    sample_tasks: list = field(default_factory=list)
    # Self-distillation against forgetting: the base model continues ``TEXT_OPENINGS`` (plain
    # prose in the 8 languages), ``per_opening`` samples of ``max_tokens`` at ``temperature``,
    # and SFT trains on that text too (every token). Empty: none.
    base_text: dict = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> DefaultModelRecipe:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
        return replace(cls(**data), **overrides)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _call_repeated(records: list[dict], i: int) -> bool:
    rec, nxt = records[i], records[i + 1] if i + 1 < len(records) else None
    return (
        rec["task"] == "tool_call"
        and nxt is not None
        and nxt["task"] == "tool_answer"
        and nxt.get("question") == rec.get("question")
        and nxt["messages"][-2]["content"] == rec["gold"]
    )


def hard_negative(rec: dict) -> str | None:
    """The known failure for a record's task (``hard_negatives``): a tool answer that repeats the
    call it answers, a RAG answer without its ``[n]`` citation; None for other tasks."""
    if rec["task"] == "tool_answer":
        return rec["messages"][-2]["content"]
    if rec["task"] == "rag":
        return re.sub(r"\s*\[\d+\]", "", rec["gold"])
    return None


_SENTENCE = re.compile(r"[^.!?\n]*[.!?]")


def fact_sentence(answer: str, expected: str) -> str | None:
    """The first sentence of ``answer`` that states ``expected`` (a model's own short answer)."""
    for m in _SENTENCE.finditer(answer):
        sentence = m.group(0).strip()
        if sentence and contains(sentence, expected):
            return sentence
    return None


def sample_and_select(
    lm,
    records: list[dict],
    out: Path,
    r: DefaultModelRecipe,
    seed: int,
    *,
    limit: int | None = None,
    hard_negatives: bool = False,
) -> dict:
    """Rejection sampling; writes ``sft.jsonl`` (best passing candidate, else gold) and
    ``pairs.jsonl`` ((best or gold, worst failing candidate); with ``hard_negatives`` also
    (best or gold, ``hard_negative``) where no sampled candidate was that failure). ``limit``:
    sample this many records (evenly spread; 0: all; default ``r.sample_limit``). Returns counts."""
    cfg = RejectionConfig(seed=seed, min_sft_score=1.0, **r.sample)
    limit = r.sample_limit if limit is None else limit
    every = max(1, len(records) // limit) if limit else 1
    picked = list(range(0, len(records), every))[: limit or None]
    picked = sorted(set(picked) | {i for i, rec in enumerate(records) if rec["task"] in r.sample_tasks})
    stats = rejection_sample(lm, [records[i] for i in picked], TaskReward(), out, cfg, progress=True)
    ledger = {picked[row["index"]]: row for row in _read(out / "samples.jsonl")}
    sft, pairs, counts = [], [], {"from_model": 0, "from_gold": 0, "not_sampled": 0}
    for i, rec in enumerate(records):
        row = ledger.get(i)
        if row is None and _call_repeated(records, i):
            # The next record (the tool's answer) holds this gold call as a labeled assistant turn
            # already: the same tokens once, not the long tool prompt twice.
            counts["not_sampled"] += 1
            continue
        if row is None:
            counts["not_sampled"] += 1
            extra = {"tools": rec["tools"]} if rec.get("tools") else {}
            sft.append({"messages": rec["messages"] + [{"role": "assistant", "content": rec["gold"]}], **extra})
            continue
        scores, cands = row["scores"], row["candidates"]
        best = max(range(len(cands)), key=lambda j: (scores[j], -j))
        passed = scores[best] >= 1.0 and row["finish_reasons"][best] != "length"
        chosen = cands[best] if passed else rec["gold"]
        if rec["task"] == "brief":
            # The model's own answer cut to its sentence that states the fact (a long or cut
            # answer too): what it knows, in the shape it says it, and short.
            order = sorted(range(len(cands)), key=lambda j: (-scores[j], j))
            short = [fact_sentence(cands[j], rec["expected"]) for j in order]
            short = [x for x in short if x and check(rec, x) >= 1.0]
            chosen, passed = (short[0], True) if short else (rec["gold"], False)
        counts["from_model" if passed else "from_gold"] += 1
        extra = {"tools": rec["tools"]} if rec.get("tools") else {}
        sft.append({"messages": rec["messages"] + [{"role": "assistant", "content": chosen}], **extra})
        worst = min(range(len(cands)), key=lambda j: (scores[j], j))
        if scores[worst] < 1.0 and cands[worst].strip() and cands[worst] != chosen:
            pairs.append({"prompt": rec["messages"], "chosen": chosen, "rejected": cands[worst], **extra})
        neg = hard_negative(rec) if hard_negatives else None
        if neg and neg != chosen and not (scores[worst] < 1.0 and cands[worst] == neg):
            pairs.append({"prompt": rec["messages"], "chosen": chosen, "rejected": neg, **extra})
            counts["hard_negatives"] = counts.get("hard_negatives", 0) + 1
    _jsonl(out / "sft.jsonl", sft)
    _jsonl(out / "pairs.jsonl", pairs)
    return {**counts, "pairs": len(pairs), "mean_score": stats["mean_score"]}


def _merge_tool_conversations(rows: list[dict], k: int) -> list[dict]:
    """Every ``k`` tool conversations (question, call, tool result, answer) become one
    conversation of ``k`` such exchanges under a single system prompt: the tool spec the chat
    template renders (~180 tokens) is then computed once per ``k`` questions, not once per
    question. The first exchange is exactly what ``lhama agent`` sends."""
    if k <= 1:
        return rows
    tool = [x for x in rows if x.get("tools") and any(m["role"] == "tool" for m in x["messages"])]
    rest = [x for x in rows if not (x.get("tools") and any(m["role"] == "tool" for m in x["messages"]))]
    merged = [
        {"messages": [m for x in tool[i : i + k] for m in x["messages"]], "tools": tool[i]["tools"]}
        for i in range(0, len(tool), k)
    ]
    out, step = [], max(1, len(rest) // max(1, len(merged)))
    for j, conv in enumerate(merged):  # spread among the rest, as the shuffle had them
        out += rest[j * step : (j + 1) * step] + [conv]
    return out + rest[len(merged) * step :]


def _mixed_examples(lm, path: str) -> list:
    """Chat records (assistant turns labeled) and ``{"text"}`` records (every token labeled)."""
    from lhama.train.data import tokenize_chat, tokenize_text

    return [
        tokenize_text(row["text"], lm.tokenizer)
        if "text" in row
        else tokenize_chat(row["messages"], lm.chat_format, where=f"{path}:{n}", tools=row.get("tools"))
        for n, row in enumerate(_read(Path(path)), 1)
    ]


def train_sft(r: DefaultModelRecipe, data: Path, out: Path, text: Path | None = None) -> dict:
    from lhama.train.recipe import RecipeOptions, train_on_examples
    from lhama.train.sft import run_sft

    cfg = TrainConfig(output_dir=str(out), seed=r.seed, **r.sft)
    # Rows are packed greedily in file order: shuffled, the short brief and phrase examples fill
    # the gaps the long tool and RAG prompts leave (fewer padded tokens to compute).
    rows = _read(data)
    random.Random(r.seed).shuffle(rows)
    rows = _merge_tool_conversations(rows, r.tool_questions_per_conversation)
    if text is not None:  # the base's own text, spread evenly through the chat records
        extra = [{"text": x["text"]} for x in _read(text)]
        random.Random(r.seed + 1).shuffle(extra)
        every = max(1, len(rows) // max(1, len(extra)))
        spread = []
        for j, row in enumerate(rows):
            spread.append(row)
            if j % every == every - 1 and extra:
                spread.append(extra.pop())
        rows = spread + extra
    mixed = data.with_name(data.stem + "-shuffled.jsonl")
    _jsonl(mixed, rows)
    opts = RecipeOptions(model=r.base, data=(str(mixed),))
    if text is None:
        return run_sft(opts, cfg, LoraConfig(**r.lora))
    return train_on_examples(opts, cfg, LoraConfig(**r.lora), resume=False, to_examples=_mixed_examples, recipe="lora")


def _write_base_text(lm, path: Path, spec: dict, seed: int) -> list[dict]:
    rows = base_text(lm, spec.get("per_opening", 2), spec.get("max_tokens", 128), seed, spec.get("temperature", 1.0))
    _jsonl(path, rows)
    return rows


def train_dpo(r: DefaultModelRecipe, adapter: Path, pairs: Path, out: Path) -> dict:
    """DPO that continues ``adapter`` (unmerged), the starting policy as the reference."""
    from lhama.loader import load_model
    from lhama.peft_adapter import load_peft_adapter
    from lhama.train.dpo import (
        DPOLoss,
        DPOTrainer,
        PairIterator,
        precompute_reference,
        tokenize_pairs,
    )
    from lhama.train.recipe import write_run_outputs

    opts = {k: v for k, v in r.dpo.items() if k != "beta"}
    cfg = TrainConfig(output_dir=str(out), seed=r.seed, **opts)
    dcfg = DPOConfig(beta=r.dpo.get("beta", 0.1))
    lm = load_model(r.base, dtype=torch.float32)
    lora = load_peft_adapter(lm.model, adapter)
    params = [p for n, p in lm.model.named_parameters() if ".lora_a." in n or ".lora_b." in n]
    for p in params:
        p.requires_grad_(True)
    rows, cut = tokenize_pairs(_read(pairs), lm.chat_format, cfg.max_seq_len, 0, source=str(pairs))
    rows = precompute_reference(lm.model, rows, cfg.batch_size, adapters_off=False, progress=True)
    trainer = DPOTrainer(lm.model, DPOLoss(dcfg, None), PairIterator(rows, cfg.batch_size, seed=cfg.seed), cfg, params)
    result = trainer.train()
    summary: dict[str, Any] = {
        "recipe": "dpo",
        "pairs": len(rows),
        "truncated_pairs": cut,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "final_reward_accuracy": (result.history or [{}])[-1].get("reward_accuracy"),
    }
    from lhama.train.recipe import RecipeOptions

    return write_run_outputs(trainer.model, lm, RecipeOptions(model=r.base, data=(str(pairs),)), cfg, lora, summary)


def ship_adapter(adapter: Path, dest: Path) -> Path:
    """The adapter in fp16 (half the bytes; LoRA deltas lose nothing that matters at this size)."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.half() for k, v in load_file(str(adapter / "adapter_model.safetensors")).items()}
    save_file(tensors, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "smollm2-base"
    (dest / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return dest


def run(r: DefaultModelRecipe, *, ship: str | None = None) -> dict:
    from lhama.loader import load_model

    out = Path(r.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    log_path = out / "recipe.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}

    def step(name: str, fn):
        if name in log:
            return log[name]
        t0 = time.perf_counter()
        log[name] = fn()
        times[name] = round(time.perf_counter() - t0, 1)
        log.setdefault("seconds", {})[name] = times[name]
        log_path.write_text(json.dumps(log, indent=2, default=str) + "\n")
        return log[name]

    def data():
        _jsonl(out / "data" / "train.jsonl", build_records("train", r.sizes, r.seed))
        _jsonl(out / "data" / "dpo-prompts.jsonl", build_records("train", r.dpo_sizes, r.seed + 100))
        return {"train": len(_read(out / "data" / "train.jsonl"))}

    step("data", data)
    step(
        "sample",
        lambda: sample_and_select(load_model(r.base), _read(out / "data" / "train.jsonl"), out / "sample", r, r.seed),
    )
    text = None
    if r.base_text:
        text = out / "text" / "base.jsonl"
        step(
            "text",
            lambda: {"texts": len(_write_base_text(load_model(r.base), text, r.base_text, r.seed))},
        )
    step("sft", lambda: train_sft(r, out / "sample" / "sft.jsonl", out / "sft", text))
    adapter = out / "sft" / "adapter"
    for k in range(1, r.dpo_rounds + 1):
        policy = adapter
        step(
            f"dpo{k}-sample",
            lambda p=policy, k=k: sample_and_select(
                load_model(r.base, lora=p),
                _read(out / "data" / "dpo-prompts.jsonl"),
                out / f"dpo{k}-sample",
                r,
                r.seed + k,
                limit=0,  # the DPO prompts are few: every one is sampled
                hard_negatives=r.hard_negatives,
            ),
        )
        step(f"dpo{k}", lambda p=policy, k=k: train_dpo(r, p, out / f"dpo{k}-sample" / "pairs.jsonl", out / f"dpo{k}"))
        adapter = out / f"dpo{k}" / "adapter"
    shutil.copytree(adapter, out / "adapter", dirs_exist_ok=True)
    log["final_adapter"] = str(adapter)
    log["config"] = asdict(r)
    log_path.write_text(json.dumps(log, indent=2, default=str) + "\n")
    if ship:
        ship_adapter(out / "adapter", Path(ship))
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lhama.train.default_model_recipe", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="recipe YAML (recipes/default-model.yaml)")
    p.add_argument("--output-dir", help="overrides output_dir")
    p.add_argument("--ship", help="copy the final adapter (fp16) here, e.g. src/lhama/data/default-adapter")
    a = p.parse_args(argv)
    r = DefaultModelRecipe.from_file(a.config, **({"output_dir": a.output_dir} if a.output_dir else {}))
    log = run(r, ship=a.ship)
    print(json.dumps(log.get("seconds", {}), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
