"""``lhama synth``: a teacher model writes instruction/answer pairs from seed topics
(self-instruct), through the batching engine, then filters and de-duplicates them.

Each round asks the teacher, for every topic, for ``instructions_per_topic`` new instructions
(one request with ``n`` samples), showing it a few instructions from the pool so far as
examples, as self-instruct does, so later rounds diversify. Candidates pass the filters
(length, garbage, refusals, language) and near-duplicate removal (MinHash LSH over word
3-grams) before the teacher answers them; answers pass the same filters. The output is chat
JSONL (``{"messages": [user, assistant], "topic": ...}``), which ``lhama finetune`` reads.

Resumable: the output is appended after every topic batch together with a state file; a rerun
with the same arguments skips finished work.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lhama.errors import ConfigError
from lhama.extras import require

INSTRUCTION_PROMPT = (
    "You write tasks that a user might give to an AI assistant. Here are some examples:\n"
    "{examples}\n"
    'Write one new, different task about the topic "{topic}". It must be self-contained and '
    "answerable in a few sentences. Reply with the task only, on one line."
)
DEFAULT_EXAMPLES = (
    "Explain why the sky is blue in simple words.",
    "Give three tips for writing a clear email.",
    "What is the difference between a list and a tuple in Python?",
)
REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i cannot|i can'?t (help|assist|provide|do)|i am unable|i'?m unable|"
    r"as an ai\b|as a language model|i'?m not able to|i do not have (access|the ability))",
    re.IGNORECASE,
)
TEMPLATE_LEAK = re.compile(r"<\|[a-z_]+\|>|\[/?INST\]|<</?SYS>>")
_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*•]|task\s*\d*:|instruction\s*\d*:|new task:|question:)\s*", re.I)


@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 10
    max_chars: int = 2000
    min_words: int = 3
    min_alpha_ratio: float = 0.5  # letters among non-space characters: below is markup/number soup
    max_repeated_ngram_ratio: float = 0.3  # share of word 3-grams that repeat: degenerate loops
    languages: tuple[str, ...] = ("en",)  # empty: no language filter
    drop_refusals: bool = True


@dataclass(frozen=True)
class SynthConfig:
    instructions_per_topic: int = 4  # candidates asked for per topic and round
    rounds: int = 1
    examples_in_prompt: int = 3
    instruction_temperature: float = 1.0
    instruction_max_tokens: int = 64
    answer_temperature: float = 0.0  # greedy answers: the teacher's best, reproducible
    answer_max_tokens: int = 256
    drop_truncated_answers: bool = True
    dedup_threshold: float = 0.7  # estimated Jaccard similarity of word 3-grams above which two are duplicates
    system: str | None = None  # system prompt for answering (not written to the output)
    seed: int = 0
    topics_per_chunk: int = 16
    instruction_filters: FilterConfig = field(default_factory=lambda: FilterConfig(max_chars=400))
    answer_filters: FilterConfig = field(default_factory=FilterConfig)

    def __post_init__(self):
        if self.instructions_per_topic < 1 or self.rounds < 1 or self.topics_per_chunk < 1:
            raise ConfigError("instructions_per_topic, rounds and topics_per_chunk must be positive")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ConfigError(f"dedup_threshold must be in (0, 1], got {self.dedup_threshold}")
        if self.instruction_temperature <= 0:
            raise ConfigError("instruction_temperature must be > 0, or every sample is the same")


# -- filters -----------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c for c in counts.values() if c > 1) / len(grams)


def detect_language(text: str) -> str | None:
    langdetect = require("langdetect", "train")
    langdetect.DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes it deterministic
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


def reject_reason(text: str, f: FilterConfig) -> str | None:
    """Why ``text`` fails the filters (a short reason name), or None when it passes."""
    t = text.strip()
    if len(t) < f.min_chars or len(words(t)) < f.min_words:
        return "too_short"
    if len(t) > f.max_chars:
        return "too_long"
    if TEMPLATE_LEAK.search(t):
        return "template_tokens"
    visible = [ch for ch in t if not ch.isspace()]
    if sum(ch.isalpha() for ch in visible) / len(visible) < f.min_alpha_ratio:
        return "garbage"
    if repeated_ngram_ratio(t) > f.max_repeated_ngram_ratio:
        return "repetitive"
    if f.drop_refusals and REFUSAL.search(t):
        return "refusal"
    if f.languages and detect_language(t) not in f.languages:
        return "language"
    return None


def clean_instruction(text: str) -> str:
    """The first non-empty line, without list numbering, labels or wrapping quotes."""
    for line in text.strip().splitlines():
        prev = None
        while prev != line:  # "- Task 2: ..." carries two prefixes
            prev, line = line, _NUMBERING.sub("", line.strip()).strip().strip('"“”').strip()
        if line:
            return line
    return ""


class NearDuplicateIndex:
    """MinHash LSH over word 3-grams (shingles): an item whose estimated Jaccard similarity with
    one already kept exceeds the threshold is a near-duplicate. Exact matches after normalising
    case, punctuation and spaces are caught too, whatever their length."""

    def __init__(self, threshold: float, num_perm: int = 128):
        MinHashLSH = require("datasketch", "train").MinHashLSH
        self.threshold, self.num_perm = threshold, num_perm
        # LSH banding misses some pairs just above its threshold: query at a lower one for
        # candidates, then keep the decision to the estimated similarity itself.
        self.lsh = MinHashLSH(threshold=max(0.05, threshold * 0.6), num_perm=num_perm)
        self.hashes: dict[str, object] = {}
        self.exact: set[str] = set()

    def _minhash(self, text: str):
        MinHash = require("datasketch", "train").MinHash
        w = words(text)
        grams = {" ".join(w[i : i + 3]) for i in range(max(1, len(w) - 2))}
        m = MinHash(num_perm=self.num_perm, seed=1)
        for g in grams:
            m.update(g.encode("utf-8"))
        return m

    def add_if_new(self, text: str) -> bool:
        key = " ".join(words(text))
        if key in self.exact:
            return False
        m = self._minhash(text)
        if any(m.jaccard(self.hashes[k]) >= self.threshold for k in self.lsh.query(m)):
            return False
        name = str(len(self.hashes))
        self.exact.add(key)
        self.hashes[name] = m
        self.lsh.insert(name, m)
        return True


# -- topics ------------------------------------------------------------------------------------
def read_topics(path: str | Path) -> list[dict]:
    """Seed topics: a text file (one topic per line, ``#`` comments) or JSONL with ``topic`` and
    optional ``examples`` (instructions to show the teacher for that topic)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"topics file {path} does not exist")
    topics = []
    if path.suffix == ".jsonl":
        from lhama.train.data import read_jsonl

        for n, row in enumerate(read_jsonl(path), 1):
            if not isinstance(row.get("topic"), str) or not row["topic"].strip():
                raise ConfigError(f"{path}:{n}: expected a non-empty 'topic' string")
            ex = row.get("examples", [])
            if not isinstance(ex, list) or not all(isinstance(e, str) for e in ex):
                raise ConfigError(f"{path}:{n}: 'examples' must be a list of strings")
            topics.append({"topic": row["topic"].strip(), "examples": ex})
    else:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                topics.append({"topic": line.strip(), "examples": []})
    if not topics:
        raise ConfigError(f"topics file {path} has no topics")
    return topics


# -- the job -----------------------------------------------------------------------------------
def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.json")


def _load_state(out: Path, n_topics: int) -> dict:
    sp = _state_path(out)
    if not sp.is_file():
        return {"round": 0, "topic": 0, "written": 0, "counts": {}}
    state = json.loads(sp.read_text())
    if state.get("n_topics") != n_topics:
        raise ConfigError(
            f"{sp} belongs to a run with {state.get('n_topics')} topics, not {n_topics}; "
            "use another output file or delete it"
        )
    return state


def synthesize(
    loaded,
    topics: Sequence[dict],
    out_path: str | Path,
    cfg: SynthConfig = SynthConfig(),
    *,
    engine=None,
    progress: bool = True,
) -> dict:
    """Generate, filter and write chat JSONL to ``out_path``; returns counts per outcome."""
    from lhama.engine import LLMEngine

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    engine = engine or LLMEngine.from_loaded(loaded)
    state = _load_state(out, len(topics))
    kept_rows = _read_kept(out, state["written"])
    counts: Counter = Counter(state["counts"])
    dedup = NearDuplicateIndex(cfg.dedup_threshold)
    pool: dict[str, list[str]] = {t["topic"]: list(t["examples"]) for t in topics}
    for row in kept_rows:  # a resumed run knows what it already kept
        dedup.add_if_new(row["messages"][0]["content"])
        pool[row["topic"]].append(row["messages"][0]["content"])
    total = cfg.rounds * len(topics)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=state["round"] * len(topics) + state["topic"], unit="topic", desc="synth")
    for rnd in range(state["round"], cfg.rounds):
        start = state["topic"] if rnd == state["round"] else 0
        for c in range(start, len(topics), cfg.topics_per_chunk):
            chunk = list(range(c, min(len(topics), c + cfg.topics_per_chunk)))
            rows = _one_chunk(loaded, engine, topics, chunk, rnd, pool, dedup, counts, cfg)
            with open(out, "a", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            state = {
                "round": rnd,
                "topic": chunk[-1] + 1,
                "written": state["written"] + len(rows),
                "counts": dict(counts),
                "n_topics": len(topics),
                "config": asdict(cfg),
            }
            if state["topic"] >= len(topics):
                state.update(round=rnd + 1, topic=0)
            tmp = _state_path(out).with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=2))
            os.replace(tmp, _state_path(out))
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(kept=state["written"])
    if bar is not None:
        bar.close()
    return {"kept": state["written"], **dict(counts)}


def _read_kept(out: Path, written: int) -> list[dict]:
    """The rows a finished chunk wrote; lines past the state's count (a chunk killed between
    writing and recording) are dropped so they are not written twice."""
    if not out.is_file():
        if written:
            raise ConfigError(f"{out} is missing but its state file says {written} rows were written")
        return []
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < written:
        raise ConfigError(f"{out} has {len(lines)} rows but its state file says {written}: it was edited")
    if len(lines) > written:
        out.write_text("".join(lines[:written]), encoding="utf-8")
    return [json.loads(line) for line in lines[:written]]


def _one_chunk(loaded, engine, topics, chunk, rnd, pool, dedup, counts, cfg: SynthConfig) -> list[dict]:
    from lhama.generate import SamplingParams

    fmt = loaded.chat_format
    # 1. instructions: one request per topic with n samples, few-shot from the topic's pool.
    prompts, params = [], []
    for t in chunk:
        topic = topics[t]["topic"]
        rng = random.Random(f"{cfg.seed}/{rnd}/{t}")
        shown = pool[topic] or list(DEFAULT_EXAMPLES)
        examples = rng.sample(shown, min(cfg.examples_in_prompt, len(shown)))
        text = INSTRUCTION_PROMPT.format(examples="\n".join(f"- {e}" for e in examples), topic=topic)
        prompts.append(fmt.encode_dialog([{"role": "user", "content": text}], add_generation_prompt=True))
        params.append(
            SamplingParams(
                max_tokens=cfg.instruction_max_tokens,
                temperature=cfg.instruction_temperature,
                top_p=0.95,
                n=cfg.instructions_per_topic,
                seed=(cfg.seed * 1_000_003 + rnd) * 1_000_003 + t,
            )
        )
    results = engine.generate(prompts, params)
    accepted: list[tuple[int, str]] = []
    for t, res in zip(chunk, results):
        for comp in res.completions:
            counts["instructions_generated"] += 1
            inst = clean_instruction(comp.text)
            why = reject_reason(inst, cfg.instruction_filters)
            if why is None and not dedup.add_if_new(inst):
                why = "duplicate"
            if why is not None:
                counts[f"instruction_{why}"] += 1
                continue
            accepted.append((t, inst))
    # 2. answers, greedy by default.
    if not accepted:
        return []
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    ids = [
        fmt.encode_dialog(system + [{"role": "user", "content": inst}], add_generation_prompt=True)
        for _, inst in accepted
    ]
    ans_params = SamplingParams(max_tokens=cfg.answer_max_tokens, temperature=cfg.answer_temperature, seed=cfg.seed)
    rows = []
    for (t, inst), res in zip(accepted, engine.generate(ids, ans_params)):
        comp = res.completions[0]
        answer = comp.text.strip()
        why = "truncated" if cfg.drop_truncated_answers and comp.finish_reason == "length" else None
        why = why or reject_reason(answer, cfg.answer_filters)
        if why is not None:
            counts[f"answer_{why}"] += 1
            continue
        topic = topics[t]["topic"]
        pool[topic].append(inst)
        rows.append(
            {
                "messages": [{"role": "user", "content": inst}, {"role": "assistant", "content": answer}],
                "topic": topic,
                "round": rnd,
            }
        )
    return rows
