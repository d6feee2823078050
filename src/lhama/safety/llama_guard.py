"""Llama Guard 3: the moderation prompt, its answer, and running any guard checkpoint.

The prompt is one user turn of a Llama 3.1 chat (Meta's model card and chat template; llama-stack
builds the same text): a task line naming whose turn is judged ('User' for input checks, 'Agent'
for output checks), the policy between category markers, the conversation, and the instruction
to answer ``safe`` or ``unsafe`` with the violated codes on a second line.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from lhama.safety.base import (
    ShieldConfigError,
    ShieldError,
    ShieldVerdict,
    check_on_error,
    check_role,
    failed_verdict,
)
from lhama.safety.categories import CATEGORIES, Category, describe, parse_codes, select_categories

AGENT_TYPES = {"user": "User", "assistant": "Agent"}
DEFAULT_REFUSAL = "I can't help with that: the {stage} was flagged as unsafe ({categories})."
UNREADABLE_REFUSAL = "I can't help with that right now: the {stage} could not be checked for safety."
_STAGE_WORDS = {"user": "request", "assistant": "reply"}


def render_guard_prompt(
    conversation: Sequence[tuple[str, str]], agent_type: str, categories: Sequence[Category]
) -> str:
    """The text of the guard's user turn. ``conversation`` is (speaker, text) pairs with speakers
    'User' / 'Agent'; ``agent_type`` says whose last turn is judged."""
    policy = "\n".join(c.prompt_line() for c in categories)
    turns = "\n\n".join(f"{speaker}: {text}" for speaker, text in conversation)
    return (
        f"Task: Check if there is unsafe content in '{agent_type}' messages in conversations according our "
        f"safety policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{policy}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{turns}\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {agent_type} message in the above conversation:\n"
        f" - First line must read 'safe' or 'unsafe'.\n"
        f" - If unsafe, a second line must include a comma-separated list of violated categories."
    )


def _message_text(m: dict) -> str:
    from lhama.tokenizer.chat.llama3 import content_text

    text = content_text(m.get("content"))
    # A tool call is what the agent did; the 8B guard's S14 (code interpreter abuse) judges it.
    for call in m.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        args = fn.get("arguments", "")
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        text += ("\n" if text else "") + f"{fn.get('name', 'tool')}({args})"
    return text


def guard_conversation(messages: Sequence[dict], role: str) -> list[tuple[str, str]]:
    """(speaker, text) turns for the guard: user and assistant turns up to the last ``role`` turn.
    System prompts are the operator's, not the conversation's, and tool results are third-party
    data (Prompt Guard's job), so neither is judged here."""
    turns: list[tuple[str, str]] = []
    last = -1
    for m in messages:
        if not isinstance(m, dict):
            raise ShieldError(f"a message must be a dict with 'role' and 'content', got {type(m).__name__}")
        r = m.get("role")
        if r not in AGENT_TYPES:
            continue
        turns.append((AGENT_TYPES[r], _message_text(m)))
        if r == role:
            last = len(turns)
    if last < 0:
        raise ShieldError(f"there is no {role!r} message to check")
    return turns[:last]


_CODE = re.compile(r"\bS(\d{1,2})\b", re.IGNORECASE)


def parse_guard_answer(text: str) -> tuple[bool, list[str]]:
    """(safe?, violated codes) from the guard's answer. Accepts what real checkpoints write:
    ``safe``; ``unsafe\\nS1,S3``; stray spaces, blank lines, ``unsafe S1`` on one line. Anything
    else raises ``ShieldError`` (the shield's ``on_error`` then decides)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        raise ShieldError("the guard returned an empty answer")
    head, _, rest = lines[0].partition(" ")
    word = head.strip(" .,:;'\"`").lower()
    if word == "safe" and not rest.strip():
        return True, []
    if word != "unsafe":
        raise ShieldError(f"the guard's answer starts with neither 'safe' nor 'unsafe': {text[:200]!r}")
    codes = []
    for m in _CODE.finditer(" ".join([rest, *lines[1:]])):
        code = f"S{int(m.group(1))}"
        if code in CATEGORIES and code not in codes:
            codes.append(code)
    return False, codes


@dataclass(frozen=True)
class LlamaGuardConfig:
    path: str
    categories: tuple[str, ...] | None = None  # codes to check (None: the model's whole list)
    excluded_categories: tuple[str, ...] = ()
    code_interpreter: bool | None = None  # S14; None: on for an 8B-shaped guard (dim >= 4096)
    stages: tuple[str, ...] = ("input", "output")
    max_new_tokens: int = 24  # "unsafe" + a dozen codes
    on_error: str = "refuse"  # unreadable answer: refuse (fail closed), allow (fail open), raise
    refusal: str = DEFAULT_REFUSAL  # {stage}: "request"/"reply"; {categories}: "S1 (Violent Crimes)"
    name: str = "llama-guard"

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", parse_codes(self.categories))
        object.__setattr__(self, "excluded_categories", parse_codes(self.excluded_categories) or ())
        object.__setattr__(self, "stages", tuple(self.stages))
        check_on_error(self.on_error)
        if not set(self.stages) <= {"input", "output"} or not self.stages:
            raise ShieldConfigError(f"stages must be 'input' and/or 'output', got {self.stages!r}")
        if self.max_new_tokens < 1:
            raise ShieldConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        select_categories(self.categories, self.excluded_categories)  # refuse an empty policy now


class LlamaGuardShield:
    """Runs a Llama Guard checkpoint (any model ``load_model`` reads: GGUF, HF, Meta) greedily
    on the moderation prompt. One check at a time per shield; ``check`` is thread-safe."""

    def __init__(self, config: LlamaGuardConfig, loaded=None):
        from lhama.loader import load_model

        self.config = config
        self.name = config.name
        self.stages = frozenset(config.stages)
        self.loaded = loaded if loaded is not None else load_model(config.path)
        args = self.loaded.args
        ci = config.code_interpreter if config.code_interpreter is not None else args.dim >= 4096
        self.categories = select_categories(config.categories, config.excluded_categories, code_interpreter=ci)
        self.codes = frozenset(c.code for c in self.categories)
        self._format = _guard_chat_format(self.loaded)
        self._lock = threading.Lock()

    def prompt_text(self, messages: Sequence[dict], role: str) -> str:
        return render_guard_prompt(guard_conversation(messages, check_role(role)), AGENT_TYPES[role], self.categories)

    def prompt_ids(self, messages: Sequence[dict], role: str) -> list[int]:
        """The guard prompt's tokens; the oldest turns are dropped when the conversation does not
        fit the guard's context (the verdict is about the last turn)."""
        turns = guard_conversation(messages, check_role(role))
        limit = self.loaded.args.max_seq_len - self.config.max_new_tokens
        while True:
            text = render_guard_prompt(turns, AGENT_TYPES[role], self.categories)
            ids = list(self._format.encode_dialog([{"role": "user", "content": text}]))
            if len(ids) <= limit:
                return ids
            if len(turns) == 1:
                raise ShieldError(
                    f"the last {role} message alone needs {len(ids)} tokens, more than the guard's "
                    f"context of {self.loaded.args.max_seq_len} allows"
                )
            turns = turns[1:]

    def generate(self, ids: list[int]) -> str:
        import torch

        from lhama.generate import SamplingParams, generate

        params = SamplingParams(temperature=0.0, max_tokens=self.config.max_new_tokens)
        stops = set(getattr(self._format, "stop_ids", ()) or ()) | set(self.loaded.tokenizer.stop_ids or ())
        with self._lock, torch.inference_mode():
            out = generate(self.loaded.model, self.loaded.tokenizer, ids, params, stop_ids=sorted(stops))
        return out.text

    def check(self, messages: list[dict], *, role: str) -> ShieldVerdict:
        role = check_role(role)
        stage = _STAGE_WORDS[role]
        try:
            raw = self.generate(self.prompt_ids(messages, role))
            safe, codes = parse_guard_answer(raw)
        except ShieldError as e:
            return failed_verdict(
                self.name, self.config.on_error, str(e), UNREADABLE_REFUSAL.format(stage=stage, categories="")
            )
        if safe:
            return ShieldVerdict(True, [], "", raw, self.name)
        # Codes outside the configured policy were not asked about: they do not block.
        if codes and not any(c in self.codes for c in codes):
            return ShieldVerdict(True, [], "", raw, self.name)
        flagged = [c for c in codes if c in self.codes]
        text = self.config.refusal.format(stage=stage, categories=describe(flagged) or "no category given")
        return ShieldVerdict(False, flagged, text, raw, self.name)


def _guard_chat_format(loaded):
    """Llama Guard 3 is a Llama 3.1 model: its prompt is one plain Llama 3 user turn. A guard's
    own Jinja template often builds the moderation prompt itself from raw messages, so a Llama 3
    vocabulary always gets the header format here; other vocabularies use their chat format."""
    from lhama.tokenizer import Llama3ChatFormat

    tok = loaded.tokenizer
    special = getattr(tok, "special_tokens", {}) or {}
    if all(t in special for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")):
        return Llama3ChatFormat(tok)
    return loaded.chat_format
