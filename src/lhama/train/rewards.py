"""Rewards for rejection sampling: each scores a prompt's candidate answers, higher is better.

A reward sees the whole input record (so it can read ``answer``, ``tests`` or anything a
plug-in needs) and all candidates of that record at once (so a judge model can batch them).
Built in: ``exact`` (final-answer match), ``unit-tests`` (the candidate's code plus the record's
tests, run in the code sandbox), ``judge`` (a judge model's rating). ``load_reward("pkg.mod:obj")``
plugs in any other: a ``Reward`` instance, class or factory, or a plain function
``fn(record, candidates) -> list[float]``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lhama.errors import ConfigError, LhamaError
from lhama.eval.code import extract_code
from lhama.eval.generative import numbers_in, parse_number


class RewardInputError(LhamaError, ValueError):
    """A record lacks what its reward needs (``answer`` for exact match, ``tests`` for unit tests)."""

    http_status = 400
    code = "invalid_reward_input"


class Reward:
    """Base class: override ``score`` (one record) or ``score_many`` (all records at once)."""

    name = "reward"

    def score(self, record: dict, candidates: Sequence[str]) -> list[float]:
        raise NotImplementedError

    def score_many(self, items: Sequence[tuple[dict, Sequence[str]]]) -> list[list[float]]:
        return [[float(s) for s in self.score(rec, cands)] for rec, cands in items]


class FunctionReward(Reward):
    def __init__(self, fn: Callable[[dict, Sequence[str]], Sequence[float]], name: str):
        self.fn, self.name = fn, name

    def score(self, record, candidates):
        return [float(s) for s in self.fn(record, candidates)]


# -- exact answer ----------------------------------------------------------------------------
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*\**\s*([^\n]+)", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The final answer a response states: ``\\boxed{..}``, else what follows the last
    "answer is"/"Answer:", else the last number, else the last non-empty line."""
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1]
    stated = _ANSWER_IS.findall(text)
    if stated:
        return stated[-1]
    numbers = numbers_in(text)
    if numbers:
        return numbers[-1][0]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def normalize_answer(s: str) -> str:
    s = s.strip().strip("*").strip()
    s = re.sub(r"^\$|\$$", "", s).strip()
    s = s.rstrip(".").strip().lower()
    return re.sub(r"\s+", " ", s)


def answers_match(predicted: str, expected: str) -> bool:
    p, e = normalize_answer(predicted), normalize_answer(expected)
    if p == e:
        return True
    # "The answer is 42 apples" against 42: compare the leading number when the expected is one.
    en = parse_number(e)
    if en is not None:
        found = numbers_in(p)
        return bool(found) and math.isclose(found[0][1], en, rel_tol=1e-9, abs_tol=1e-9)
    return False


class ExactAnswerReward(Reward):
    """1.0 when the candidate's final answer equals the record's ``answer`` (numbers compared as
    numbers, text after normalising case, spaces and a trailing period), else 0.0."""

    name = "exact"

    def __init__(self, field: str = "answer"):
        self.field = field

    def score(self, record, candidates):
        if self.field not in record:
            raise RewardInputError(
                f"the 'exact' reward needs a '{self.field}' field in every record; this one has {sorted(record)}"
            )
        expected = str(record[self.field])
        return [1.0 if answers_match(extract_answer(c), expected) else 0.0 for c in candidates]


# -- unit tests in the sandbox ---------------------------------------------------------------
def _test_harness(code: str, tests: Sequence[str], marker: str) -> str:
    # Each test runs on its own so one failure does not hide the others' passes (partial
    # credit). The marker carries a per-run nonce: a candidate that prints a fake tally cannot
    # guess it, so it cannot award itself points.
    return (
        f"{code}\n\n"
        "def __lhama_run_tests(__tests):\n"
        "    __passed = 0\n"
        "    for __t in __tests:\n"
        "        try:\n"
        "            exec(__t, globals())\n"
        "            __passed += 1\n"
        "        except BaseException:\n"
        "            pass\n"
        f"    print({marker!r}, __passed)\n"
        f"__lhama_run_tests({list(tests)!r})\n"
    )


class UnitTestReward(Reward):
    """The fraction of the record's ``tests`` (a list of Python snippets, typically asserts, or
    one string of them) that pass against the candidate's code, run in ``lhama.tools.sandbox``.
    A candidate that does not run at all (syntax error, crash, timeout) scores 0."""

    name = "unit-tests"

    def __init__(self, field: str = "tests", timeout_s: float = 10.0, memory_mb: int = 512):
        self.field, self.timeout_s, self.memory_mb = field, timeout_s, memory_mb

    def _limits(self):
        from lhama.tools.sandbox import SandboxLimits

        return SandboxLimits(cpu_seconds=self.timeout_s, wall_seconds=2 * self.timeout_s, memory_mb=self.memory_mb)

    def score(self, record, candidates):
        from lhama.tools.sandbox import run_python

        tests = record.get(self.field)
        if not tests:
            raise RewardInputError(
                f"the 'unit-tests' reward needs a non-empty '{self.field}' field "
                "(a list of Python test snippets, or one string of asserts)"
            )
        if isinstance(tests, str):
            tests = [tests]
        limits = self._limits()
        scores = []
        for cand in candidates:
            marker = f"__lhama_tests_passed_{secrets.token_hex(8)}__"
            res = run_python(_test_harness(extract_code(cand), tests, marker), limits=limits)
            passed = 0
            for line in (res.stdout or "").splitlines():
                if line.startswith(marker):
                    passed = int(line.split()[-1])
            scores.append(passed / len(tests) if not res.timed_out else 0.0)
        return scores


# -- a judge model -------------------------------------------------------------------------
JUDGE_TEMPLATE = (
    "Please act as an impartial judge and rate the quality of the response to the user's request "
    "below. Consider correctness, helpfulness and clarity. Rate it on a scale of 1 to {max_score}, "
    "where 1 is useless and {max_score} is excellent.\n\n"
    "[Request]\n{prompt}\n\n[Response]\n{response}\n\n"
    "Reply with a single digit."
)


@dataclass(frozen=True)
class JudgeConfig:
    max_score: int = 5  # digits 1..max_score are single tokens in every Llama vocabulary
    template: str = JUDGE_TEMPLATE
    prefix: str = "Rating: "  # the judge's reply starts here, so the next token is the rating

    def __post_init__(self):
        if not 2 <= self.max_score <= 9:
            raise ConfigError(f"judge max_score must be in 2..9 (single-digit ratings), got {self.max_score}")
        for key in ("{prompt}", "{response}"):
            if key not in self.template:
                raise ConfigError(f"the judge template must contain {key}")


class JudgeReward(Reward):
    """A judge model rates each candidate; the reward is the expected rating under the judge's
    next-token distribution restricted to the digits 1..max_score, scaled to [0, 1]. Reading the
    probabilities (G-Eval style) instead of sampling one digit breaks ties between candidates and
    is deterministic. ``judge`` is a ``lhama.loader.LoadedModel``; prompts are scored in batches
    of ``batch_size`` with one forward pass each (no generation needed)."""

    name = "judge"

    def __init__(self, judge, config: JudgeConfig | None = None, batch_size: int = 8):
        self.judge, self.config, self.batch_size = judge, config or JudgeConfig(), batch_size
        tok = judge.tokenizer
        self.digit_ids: list[int] = []
        for d in range(1, self.config.max_score + 1):
            ids = tok.encode(str(d))
            if len(ids) != 1:
                raise ConfigError(f"the judge's tokenizer splits '{d}' into {len(ids)} tokens; it cannot rate")
            self.digit_ids.append(ids[0])

    def prompt_ids(self, record: dict, candidate: str) -> list[int]:
        from lhama.train.rejection import prompt_messages

        msgs = prompt_messages(record)
        request = "\n\n".join(
            f"{m['role']}: {m['content']}" if m["role"] != "user" else str(m["content"])
            for m in msgs
            if m["role"] != "system"
        )
        text = self.config.template.format(prompt=request, response=candidate, max_score=self.config.max_score)
        fmt = self.judge.chat_format
        ids = fmt.encode_dialog([{"role": "user", "content": text}], add_generation_prompt=True)
        return ids + self.judge.tokenizer.encode(self.config.prefix)

    def expected_ratings(self, prompts: Sequence[list[int]]) -> list[float]:
        import torch

        model = self.judge.model
        ctx = model.args.max_seq_len
        digits = torch.tensor(self.digit_ids, device=model.device)
        values = torch.arange(1, self.config.max_score + 1, dtype=torch.float32, device=model.device)
        out: list[float] = []
        with torch.no_grad():
            for s in range(0, len(prompts), self.batch_size):
                chunk = [p[-ctx:] for p in prompts[s : s + self.batch_size]]
                T = max(len(p) for p in chunk)
                # Right padding: causal attention keeps each prompt's last position unaffected.
                tokens = torch.tensor([p + [0] * (T - len(p)) for p in chunk], device=model.device)
                positions = torch.arange(T, device=model.device).expand(len(chunk), T)
                h = model.hidden_states(tokens, positions)
                last = h[torch.arange(len(chunk)), torch.tensor([len(p) - 1 for p in chunk])]
                probs = torch.softmax(model.output(last).float()[:, digits], dim=-1)
                out += ((probs @ values - 1) / (self.config.max_score - 1)).tolist()
        return out

    def score_many(self, items):
        flat = self.expected_ratings([self.prompt_ids(rec, c) for rec, cands in items for c in cands])
        out, i = [], 0
        for _, cands in items:
            out.append(flat[i : i + len(cands)])
            i += len(cands)
        return out


# -- by name -------------------------------------------------------------------------------
BUILTIN = ("exact", "unit-tests", "judge")


def load_reward(spec: str, *, judge_model: str | None = None, **options) -> Reward:
    """``exact``, ``unit-tests``, ``judge`` (needs ``judge_model``), or ``module:attr`` naming a
    ``Reward`` subclass/instance, a factory returning one, or a function ``(record, candidates)
    -> scores``."""
    if spec == "exact":
        return ExactAnswerReward(**options)
    if spec in ("unit-tests", "unit_tests", "tests"):
        return UnitTestReward(**options)
    if spec == "judge":
        if not judge_model:
            raise ConfigError("the 'judge' reward needs a judge model (--judge-model MODEL)")
        from lhama.loader import load_model

        return JudgeReward(load_model(judge_model), JudgeConfig(**options))
    if ":" not in spec:
        raise ConfigError(f"unknown reward '{spec}': use one of {', '.join(BUILTIN)} or 'module.path:name'")
    mod_name, attr = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load reward '{spec}': {e}") from None
    if isinstance(obj, Reward):
        return obj
    if isinstance(obj, type) and issubclass(obj, Reward):
        return obj(**options)
    if callable(obj):
        # Two positional parameters: the scoring function itself; otherwise a factory.
        try:
            n_params = len(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            n_params = 2
        if n_params == 2 and not options:
            return FunctionReward(obj, name=spec)
        made = obj(**options)
        if isinstance(made, Reward):
            return made
    raise ConfigError(f"reward '{spec}' is neither a Reward nor a callable")
