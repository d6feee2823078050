"""Training data: chat JSONL to token ids with assistant-only labels, raw text for continued
pretraining, packing into fixed-length rows, and a batch iterator whose position can be saved.

A row is (ids, labels, doc_ids): ``labels[i]`` is the target for predicting ``ids[i]`` (the loss
shifts), -100 where no loss is taken; ``doc_ids`` numbers the examples packed into the row so
attention and positions restart at each example's start (``DocumentMask``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lhama.errors import ChatFormatError, ConfigError
from lhama.jsonl import iter_objects

IGNORE = -100


@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE where no loss is taken


# -- reading -----------------------------------------------------------------------------------
def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Objects of a JSONL file; a bad line is reported with its number, never skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {path} does not exist")
    rows = [obj for _, obj in iter_objects(path, ConfigError)]
    if not rows:
        raise ConfigError(f"data file {path} has no examples")
    return rows


def tokenize_chat(
    messages: Sequence[dict], chat_format, *, where: str = "example", tools: Sequence[dict] | None = None
) -> Example:
    """Ids of the whole conversation, labels only on the assistant turns (content and the
    end-of-turn token, which teaches the model to stop).

    Each assistant turn's span is found by rendering the conversation up to it with the
    generation prompt and up to its end without: the difference is what the model generates at
    inference. Works for any chat format (Llama 3 headers, Llama 2 [INST], Jinja templates) as
    long as rendering is prefix-stable, which is checked.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConfigError(f"{where}: 'messages' must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ConfigError(f"{where}: each message needs a 'role' (got {m!r:.80})")
    if not any(m["role"] == "assistant" for m in messages):
        raise ConfigError(f"{where}: no assistant message, so nothing to learn from")
    try:
        full = chat_format.encode_dialog(messages, tools=tools, add_generation_prompt=False)
        labels = [IGNORE] * len(full)
        stops = chat_format.stop_ids
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = chat_format.encode_dialog(messages[:i], tools=tools, add_generation_prompt=True) if i else []
            upto = chat_format.encode_dialog(messages[: i + 1], tools=tools, add_generation_prompt=False)
            if full[: len(upto)] != upto or upto[: len(prompt)] != prompt:
                raise ChatFormatError(
                    f"{where}: the chat format does not render turn {i} as a prefix of the "
                    "conversation, so assistant tokens cannot be located"
                )
            end = len(upto)
            for j in range(len(prompt), len(upto)):
                if upto[j] in stops:  # train through the end-of-turn token, not the template's trailing text
                    end = j + 1
                    break
            labels[len(prompt) : end] = upto[len(prompt) : end]
    except ChatFormatError as e:
        raise ChatFormatError(f"{where}: {e}") from None
    return Example(tuple(full), tuple(labels))


def tokenize_text(text: str, tokenizer) -> Example:
    """A document for continued pretraining: bos (when the tokenizer has one) + text + eos, all
    positions trained."""
    ids = tokenizer.encode(text, bos=tokenizer.bos_id is not None, eos=True)
    return Example(tuple(ids), tuple(ids))


def load_chat_examples(path: str | Path, chat_format) -> list[Example]:
    """Chat JSONL (``{"messages": [...]}`` per line, optionally ``"tools": [...]`` definitions
    rendered into the prompt as at inference) to examples."""
    out = []
    for n, row in enumerate(read_jsonl(path), 1):
        if "messages" not in row:
            raise ConfigError(f"{path}:{n}: expected a 'messages' list (chat format)")
        out.append(tokenize_chat(row["messages"], chat_format, where=f"{path}:{n}", tools=row.get("tools")))
    return out


def load_text_examples(paths: Iterable[str | Path], tokenizer) -> list[Example]:
    """Raw text for continued pretraining: ``.txt`` files (one document per file; blank-line
    separated paragraphs stay together) or JSONL with a ``text`` field per line."""
    out = []
    for path in paths:
        path = Path(path)
        if path.suffix == ".jsonl":
            for n, row in enumerate(read_jsonl(path), 1):
                if not isinstance(row.get("text"), str):
                    raise ConfigError(f"{path}:{n}: expected a 'text' string")
                out.append(tokenize_text(row["text"], tokenizer))
        elif path.is_file():
            out.append(tokenize_text(path.read_text(encoding="utf-8"), tokenizer))
        else:
            raise ConfigError(f"text file {path} does not exist")
    return out


# -- rows --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    ids: list[int]
    labels: list[int]
    doc_ids: list[int]  # 0, 1, ... per packed example; -1 for padding


def _chunks(ex: Example, seq_len: int) -> list[Example]:
    """An example longer than a row is split (continued pretraining documents are)."""
    return [Example(ex.ids[s : s + seq_len], ex.labels[s : s + seq_len]) for s in range(0, len(ex.ids), seq_len)]


def make_rows(
    examples: Sequence[Example], seq_len: int, *, pack: bool, pad_id: int = 0, truncate: bool = True
) -> list[Row]:
    """Fixed-length rows. Packing puts examples after one another (greedy, in order) and only
    splits an example when it alone exceeds ``seq_len``; without packing each row holds one
    example, right-padded. Chat examples longer than a row are truncated when ``truncate``."""
    pieces: list[Example] = []
    for ex in examples:
        if len(ex.ids) <= seq_len:
            pieces.append(ex)
        elif truncate:
            pieces.append(Example(ex.ids[:seq_len], ex.labels[:seq_len]))
        else:
            pieces.extend(_chunks(ex, seq_len))
    rows: list[Row] = []
    cur = Row([], [], [])
    for ex in pieces:
        if not any(l != IGNORE for l in ex.labels[1:]):
            continue  # nothing to learn (e.g. an assistant turn cut off by truncation)
        if cur.ids and (not pack or len(cur.ids) + len(ex.ids) > seq_len):
            rows.append(cur)
            cur = Row([], [], [])
        doc = (cur.doc_ids[-1] + 1) if cur.doc_ids else 0
        cur.ids.extend(ex.ids)
        cur.labels.extend(ex.labels)
        cur.doc_ids.extend([doc] * len(ex.ids))
    if cur.ids:
        rows.append(cur)
    for r in rows:
        n = seq_len - len(r.ids)
        r.ids.extend([pad_id] * n)
        r.labels.extend([IGNORE] * n)
        r.doc_ids.extend([-1] * n)
    return rows


def collate(rows: Sequence[Row]) -> dict[str, torch.Tensor]:
    """Rows to a batch: ``tokens``, ``labels`` (shifted: labels[:, t] is the target at t),
    ``positions`` (restarting per packed example) and ``doc_ids``."""
    ids = torch.tensor([r.ids for r in rows], dtype=torch.long)
    labels = torch.tensor([r.labels for r in rows], dtype=torch.long)
    docs = torch.tensor([r.doc_ids for r in rows], dtype=torch.long)
    targets = torch.full_like(labels, IGNORE)
    same_doc = docs[:, 1:] == docs[:, :-1]  # never predict across a packing boundary
    targets[:, :-1] = torch.where(same_doc, labels[:, 1:], torch.full_like(labels[:, 1:], IGNORE))
    # Position = index within its own example.
    T = ids.shape[1]
    idx = torch.arange(T).expand_as(ids)
    starts = torch.ones_like(docs, dtype=torch.bool)
    starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return {"tokens": ids, "labels": targets, "positions": idx - start_idx, "doc_ids": docs}


# -- attention within each packed example -------------------------------------------------------
class DocumentMask:
    """Stands in for the model's attention cache during training: causal attention restricted to
    each packed example, so packing changes nothing about what a token can see. With a single
    example per row it is plain causal attention."""

    def __init__(self, doc_ids: torch.Tensor):
        T = doc_ids.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
        self.mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal  # [B, T, T]
        # Padding rows attend to themselves only, so softmax never sees an all-masked row.
        self.mask |= torch.eye(T, dtype=torch.bool, device=doc_ids.device)
        self.mask = self.mask[:, None]  # broadcast over heads

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=self.mask, enable_gqa=qh.shape[1] != kh.shape[1])
        return out.transpose(1, 2)


# -- iteration ---------------------------------------------------------------------------------
class BatchIterator:
    """Endless batches of ``batch_size`` rows, reshuffled each epoch from ``seed``. Its position
    (epoch, index) is saved in checkpoints, so a resumed run sees exactly the batches an
    uninterrupted run would have seen next."""

    def __init__(self, rows: Sequence[Row], batch_size: int, *, seed: int = 0, shuffle: bool = True):
        if not rows:
            raise ConfigError("no training rows: every example was empty or had nothing to learn")
        self.rows = list(rows)
        self.batch_size = batch_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.index = 0, 0
        self._order = self._order_for(0)

    @property
    def batches_per_epoch(self) -> int:
        return max(1, len(self.rows) // self.batch_size)

    def _order_for(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._order_for(self.epoch)
        picked = []
        for k in range(self.batch_size):  # fewer rows than a batch: wrap around the epoch's order
            picked.append(self.rows[self._order[(self.index * self.batch_size + k) % len(self.rows)]])
        self.index += 1
        return collate(picked)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "n_rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("n_rows", len(self.rows)) != len(self.rows):
            raise ConfigError(
                f"the checkpoint was made with {state['n_rows']} data rows, this data has "
                f"{len(self.rows)}; resume with the same data and max_seq_len"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._order_for(self.epoch)
