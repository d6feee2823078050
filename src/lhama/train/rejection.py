"""Rejection sampling (Llama 3.1 post-training): N candidates per prompt from the engine, scored by
a pluggable reward; the best candidate becomes SFT data, the best and the worst a DPO pair.

Input: JSONL, one prompt per line, as ``{"prompt": "..."}`` or ``{"messages": [...]}`` (a
trailing assistant turn is dropped: it is the reference, not part of the prompt), plus whatever
the reward reads (``answer`` for ``exact``, ``tests`` for ``unit-tests``). Output folder:

- ``samples.jsonl``: every prompt with all candidates and scores (the ledger: a rerun skips
  the prompts already in it, so an interrupted job resumes where it stopped);
- ``sft.jsonl``: ``{"messages": prompt + best answer}``, read by ``lhama finetune``;
- ``dpo.jsonl``: ``{"prompt", "chosen", "rejected"}``, read by ``lhama finetune --recipe dpo``;
- ``stats.json``: counts and mean scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lhama.errors import ConfigError

SAMPLES, SFT, DPO, STATS = "samples.jsonl", "sft.jsonl", "dpo.jsonl", "stats.json"


@dataclass(frozen=True)
class RejectionConfig:
    num_candidates: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0
    # A DPO pair needs best - worst > min_margin (equal scores teach nothing about preference).
    min_margin: float = 0.0
    # The best candidate becomes SFT data only when it scores at least this (e.g. 1.0 for exact
    # answers: a wrong best answer is still wrong).
    min_sft_score: float | None = None
    drop_truncated: bool = True  # candidates cut by max_tokens never count as best
    prompts_per_chunk: int = 16  # engine batch; the ledger is written after each chunk

    def __post_init__(self):
        if self.num_candidates < 2:
            raise ConfigError(f"rejection sampling needs at least 2 candidates per prompt, got {self.num_candidates}")
        if self.temperature <= 0:
            raise ConfigError("rejection sampling needs temperature > 0, or all candidates are the same")
        if self.max_tokens < 1 or self.prompts_per_chunk < 1:
            raise ConfigError("max_tokens and prompts_per_chunk must be positive")


def prompt_messages(record: dict, *, where: str = "record") -> list[dict]:
    """The conversation a record asks the model to continue."""
    if isinstance(record.get("messages"), list):
        msgs = [dict(m) for m in record["messages"]]
    elif isinstance(record.get("prompt"), list):
        msgs = [dict(m) for m in record["prompt"]]
    elif isinstance(record.get("prompt"), str):
        msgs = [{"role": "user", "content": record["prompt"]}]
    else:
        raise ConfigError(f"{where}: expected a 'prompt' string or a 'messages' list")
    if msgs and msgs[-1].get("role") == "assistant":
        msgs = msgs[:-1]
    if not msgs or any(not isinstance(m.get("role"), str) for m in msgs):
        raise ConfigError(f"{where}: the prompt needs at least one message, each with a 'role'")
    if isinstance(record.get("system"), str) and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": record["system"]})
    return msgs


def _read_ledger(path: Path) -> dict[int, dict]:
    done: dict[int, dict] = {}
    if not path.is_file():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut by a kill mid-write: everything from here is redone
            done[int(row["index"])] = row
    return done


def _write_atomic(path: Path, lines: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def select(scores: Sequence[float], finish: Sequence[str], cfg: RejectionConfig) -> tuple[int | None, int | None]:
    """(best, worst) candidate indices: best among the untruncated (first on ties, so the choice
    is deterministic), worst among all; None when no candidate qualifies."""
    eligible = [i for i in range(len(scores)) if not (cfg.drop_truncated and finish[i] == "length")]
    if not eligible:
        return None, None
    best = max(eligible, key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    return best, worst


def rejection_sample(
    loaded,
    records: Sequence[dict],
    reward,
    out_dir: str | Path,
    cfg: RejectionConfig = RejectionConfig(),
    *,
    engine=None,
    progress: bool = True,
) -> dict:
    """Sample, score and write the output folder (see the module doc). ``loaded`` is a
    ``LoadedModel`` (the policy that generates); ``reward`` a ``lhama.train.rewards.Reward``.
    Returns the stats."""
    from lhama.engine import LLMEngine
    from lhama.generate import SamplingParams

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine = engine or LLMEngine.from_loaded(loaded)
    fmt = loaded.chat_format
    prompts = [prompt_messages(r, where=f"prompt {i + 1}") for i, r in enumerate(records)]
    ledger_path = out / SAMPLES
    done = _read_ledger(ledger_path)
    # Rewrite the ledger without a possibly cut last line before appending to it.
    _write_atomic(ledger_path, [json.dumps(done[i], ensure_ascii=False) + "\n" for i in sorted(done)])
    todo = [i for i in range(len(records)) if i not in done]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), initial=len(records) - len(todo), unit="prompt", desc="rejection sampling")
    for c in range(0, len(todo), cfg.prompts_per_chunk):
        chunk = todo[c : c + cfg.prompts_per_chunk]
        # A record's "tools" (function specs, as in chat JSONL) are rendered into its prompt.
        ids = [fmt.encode_dialog(prompts[i], tools=records[i].get("tools"), add_generation_prompt=True) for i in chunk]
        # Seed per prompt (not per chunk) so the candidates don't depend on chunking or resumes.
        params = [
            SamplingParams(
                max_tokens=cfg.max_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                n=cfg.num_candidates,
                seed=cfg.seed * 1_000_003 + i,
            )
            for i in chunk
        ]
        results = engine.generate(ids, params)
        cands = [[comp.text for comp in res.completions] for res in results]
        scores = reward.score_many([(records[i], cs) for i, cs in zip(chunk, cands)])
        with open(ledger_path, "a", encoding="utf-8") as f:
            for i, res, cs, sc in zip(chunk, results, cands, scores):
                if len(sc) != len(cs):
                    raise ConfigError(
                        f"reward '{getattr(reward, 'name', reward)}' returned {len(sc)} scores for {len(cs)} candidates"
                    )
                finish = [comp.finish_reason for comp in res.completions]
                row = {
                    "index": i,
                    "prompt": prompts[i],
                    "candidates": cs,
                    "scores": [float(s) for s in sc],
                    "finish_reasons": finish,
                }
                done[i] = row
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return write_outputs(done, out, cfg, reward_name=getattr(reward, "name", str(reward)))


def write_outputs(done: dict[int, dict], out: Path, cfg: RejectionConfig, *, reward_name: str = "") -> dict:
    """SFT, DPO and stats files from the ledger (rewritten whole, so they always match it)."""
    sft, dpo = [], []
    best_scores = []
    for i in sorted(done):
        row = done[i]
        best, worst = select(row["scores"], row["finish_reasons"], cfg)
        if best is None:
            continue
        s_best, s_worst = row["scores"][best], row["scores"][worst]
        best_scores.append(s_best)
        if cfg.min_sft_score is None or s_best >= cfg.min_sft_score:
            msgs = row["prompt"] + [{"role": "assistant", "content": row["candidates"][best]}]
            sft.append({"messages": msgs, "score": s_best, "index": i})
        if s_best - s_worst > cfg.min_margin:
            dpo.append(
                {
                    "prompt": row["prompt"],
                    "chosen": row["candidates"][best],
                    "rejected": row["candidates"][worst],
                    "chosen_score": s_best,
                    "rejected_score": s_worst,
                    "index": i,
                }
            )
    _write_atomic(out / SFT, [json.dumps(r, ensure_ascii=False) + "\n" for r in sft])
    _write_atomic(out / DPO, [json.dumps(r, ensure_ascii=False) + "\n" for r in dpo])
    all_scores = [s for r in done.values() for s in r["scores"]]
    stats = {
        "prompts": len(done),
        "candidates": len(all_scores),
        "sft_examples": len(sft),
        "dpo_pairs": len(dpo),
        "mean_score": sum(all_scores) / len(all_scores) if all_scores else None,
        "mean_best_score": sum(best_scores) / len(best_scores) if best_scores else None,
        "reward": reward_name,
        "config": asdict(cfg),
    }
    _write_atomic(out / STATS, [json.dumps(stats, indent=2) + "\n"])
    return stats
