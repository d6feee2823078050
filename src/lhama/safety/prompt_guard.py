"""Prompt Guard: a sequence classifier that scores text as benign, prompt injection or jailbreak.

Any Hugging Face ``AutoModelForSequenceClassification`` folder works (Prompt Guard 86M/22M with
labels BENIGN / INJECTION / JAILBREAK, Prompt Guard 2 with benign / malicious, or your own); the
labels come from the checkpoint's ``config.json``. Text longer than the classifier's context is
scored in overlapping windows and the worst window counts, so nothing hides past token 512.

Meta's guidance for the 3-label model: user prompts are checked for JAILBREAK only (users
legitimately give instructions, which the INJECTION label also fires on); third-party content
(tool results) is checked for anything not benign.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lhama.extras import require
from lhama.safety.base import (
    ShieldConfigError,
    ShieldError,
    ShieldVerdict,
    check_on_error,
    check_role,
    failed_verdict,
)

DEFAULT_REFUSAL = "I can't help with that: the {stage} was flagged by Prompt Guard ({categories})."
TOOL_ROLES = ("tool", "ipython")


@dataclass(frozen=True)
class PromptGuardConfig:
    path: str
    threshold: float = 0.9  # on the summed probability of the labels checked (llama-stack's default)
    user_labels: tuple[str, ...] | None = None  # None: JAILBREAK if the model has it, else all non-benign
    tool_labels: tuple[str, ...] | None = None  # None: every non-benign label
    window_tokens: int | None = None  # None: the classifier's max_position_embeddings (capped at 512)
    stride_tokens: int | None = None  # window overlap, so a phrase cut at a border is seen whole (None: window/8)
    temperature: float = 1.0  # softmax temperature on the logits
    batch_size: int = 16  # windows scored per forward
    on_error: str = "refuse"
    refusal: str = DEFAULT_REFUSAL  # {stage}, {categories}
    name: str = "prompt-guard"

    def __post_init__(self) -> None:
        check_on_error(self.on_error)
        if not 0.0 < self.threshold <= 1.0:
            raise ShieldConfigError(f"the Prompt Guard threshold must be in (0, 1], got {self.threshold}")
        if self.temperature <= 0:
            raise ShieldConfigError(f"the Prompt Guard temperature must be > 0, got {self.temperature}")
        if self.window_tokens is not None and self.window_tokens < 8:
            raise ShieldConfigError(f"window_tokens must be >= 8, got {self.window_tokens}")
        if self.stride_tokens is not None and self.stride_tokens < 0:
            raise ShieldConfigError(f"stride_tokens must be >= 0, got {self.stride_tokens}")
        for f in ("user_labels", "tool_labels"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, tuple(str(x).upper() for x in v))


class PromptGuardShield:
    """Input shield: scores the newest user turn and the tool results after it."""

    def __init__(self, config: PromptGuardConfig, *, device: str | None = None):
        import torch

        transformers = require("transformers", "safety")
        path = Path(config.path).expanduser()
        if not (path / "config.json").is_file():
            raise ShieldConfigError(
                f"{path}: not a Hugging Face classifier folder (no config.json); "
                "pass the folder of a Prompt Guard checkpoint"
            )
        self.config = config
        self.name = config.name
        self.stages = frozenset({"input"})
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True
            )
        except (OSError, ValueError, KeyError) as e:
            raise ShieldConfigError(f"{path}: cannot load the classifier or its tokenizer: {e}") from None
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        id2label = self.model.config.id2label
        self.labels = [str(id2label[i]).upper() for i in range(len(id2label))]
        benign = [i for i, lab in enumerate(self.labels) if lab in ("BENIGN", "SAFE", "LABEL_0")] or [0]
        self.benign = self.labels[benign[0]]
        risky = [lab for lab in self.labels if lab != self.benign]
        self.user_labels = self._known(config.user_labels, ["JAILBREAK"] if "JAILBREAK" in risky else risky)
        self.tool_labels = self._known(config.tool_labels, risky)
        limit = min(int(getattr(self.model.config, "max_position_embeddings", 512) or 512), 512)
        self.window = min(config.window_tokens or limit, limit)
        if not getattr(self.tokenizer, "is_fast", True):
            raise ShieldConfigError(f"{path}: windowed scoring needs a fast tokenizer (tokenizer.json)")
        self.stride = config.stride_tokens if config.stride_tokens is not None else self.window // 8
        if self.window - 4 <= self.stride:  # room for the special tokens and some text
            raise ShieldConfigError(
                f"stride_tokens ({self.stride}) must be well below the window ({self.window} tokens)"
            )
        self._lock = threading.Lock()

    def _known(self, wanted: Sequence[str] | None, default: list[str]) -> tuple[str, ...]:
        labels = tuple(wanted) if wanted is not None else tuple(default)
        unknown = [lab for lab in labels if lab not in self.labels]
        if unknown or not labels:
            raise ShieldConfigError(
                f"Prompt Guard labels {unknown or labels!r} are not among the classifier's labels {self.labels}"
            )
        return labels

    def encode_windows(self, text: str) -> dict:
        """``text`` as a padded batch of token windows, each with the tokenizer's special tokens,
        overlapping by ``stride_tokens`` (the fast tokenizers' overflow mechanism)."""
        enc = self.tokenizer(
            text,
            truncation=True,
            max_length=self.window,
            stride=self.stride,
            return_overflowing_tokens=True,
            padding=True,
            return_tensors="pt",
        )
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}

    def windows(self, text: str) -> list[list[int]]:
        enc = self.encode_windows(text)
        return [row[mask.bool()].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"])]

    def window_probs(self, text: str):
        """Softmax probabilities [n_windows, n_labels] for ``text``."""
        import torch

        enc = self.encode_windows(text)
        n, out = enc["input_ids"].shape[0], []
        with self._lock, torch.inference_mode():
            for i in range(0, n, self.config.batch_size):
                chunk = {k: v[i : i + self.config.batch_size].to(self.model.device) for k, v in enc.items()}
                logits = self.model(**chunk).logits.float()
                out.append(torch.softmax(logits / self.config.temperature, dim=-1).cpu())
        return torch.cat(out)

    def scores(self, text: str) -> dict[str, float]:
        """Each label's highest probability over the windows of ``text``."""
        probs = self.window_probs(text)
        return {lab: float(probs[:, i].max()) for i, lab in enumerate(self.labels)}

    def _judge(self, text: str, labels: tuple[str, ...]) -> tuple[float, list[str], dict[str, float]]:
        probs = self.window_probs(text)
        cols = [self.labels.index(lab) for lab in labels]
        per_window = probs[:, cols].sum(dim=1)
        worst = int(per_window.argmax())
        scores = {lab: float(probs[:, i].max()) for i, lab in enumerate(self.labels)}
        ranked = sorted(labels, key=lambda lab: -float(probs[worst, self.labels.index(lab)]))
        return float(per_window[worst]), ranked, scores

    def check(self, messages: list[dict], *, role: str) -> ShieldVerdict:
        role = check_role(role)
        if role == "assistant":  # a prompt attack lives in what the model reads, not in what it writes
            return ShieldVerdict(True, [], "", "not applied to model output", self.name)
        from lhama.tokenizer.chat.llama3 import content_text

        try:
            targets = _newest_inputs(messages)
            if not targets:
                raise ShieldError("there is no user or tool message to check")
            flagged: list[str] = []
            all_scores: dict[str, float] = {}
            raw = []
            for m in targets:
                labels = self.tool_labels if m.get("role") in TOOL_ROLES else self.user_labels
                score, ranked, scores = self._judge(content_text(m.get("content")), labels)
                for lab, v in scores.items():
                    all_scores[lab] = max(all_scores.get(lab, 0.0), v)
                raw.append(f"{m.get('role')}: {score:.4f} {'+'.join(labels)}")
                if score >= self.config.threshold:
                    top = [lab for lab in ranked if scores[lab] >= self.config.threshold] or ranked[:1]
                    flagged += [lab for lab in top if lab not in flagged]
        except ShieldError as e:
            return failed_verdict(
                self.name,
                self.config.on_error,
                str(e),
                "I can't help with that right now: the request could not be checked for safety.",
            )
        raw_text = "; ".join(raw)
        if not flagged:
            return ShieldVerdict(True, [], "", raw_text, self.name, all_scores)
        text = self.config.refusal.format(stage="request", categories=", ".join(flagged))
        return ShieldVerdict(False, flagged, text, raw_text, self.name, all_scores)


def _newest_inputs(messages: Sequence[dict]) -> list[dict]:
    """The user and tool messages after the last assistant turn: what the model is about to read."""
    out: list[dict] = []
    for m in reversed(messages):
        if not isinstance(m, dict):
            raise ShieldError(f"a message must be a dict with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role == "assistant":
            break
        if role == "user" or role in TOOL_ROLES:
            out.append(m)
    return out[::-1]
