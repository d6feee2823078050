"""Direct Preference Optimization (Rafailov et al. 2023): preference JSONL to a policy that prefers
the chosen answers, relative to a frozen reference.

Data: one pair per line, ``{"prompt": "..." | [messages], "chosen": "..." | message | [message],
"rejected": ...}`` (also what ``lhama rejection-sample`` writes). Loss per pair, with
h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)):
``sigmoid``: −log σ(β·h) (with label smoothing ε: the conservative cDPO mix), ``ipo``:
(h − 1/(2β))² on per-token mean log-probs (Azar et al. 2023).

The reference: ``precompute`` (default) scores every pair once with the starting model before
training (no second model in memory); ``model`` keeps a frozen copy (or ``ref_model``) and
scores each batch; with LoRA, ``adapters_off`` scores with the adapters disabled, which is the
base model, for free.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lhama.errors import ConfigError
from lhama.model.lora import LoRALinear
from lhama.train.data import IGNORE, BatchIterator, read_jsonl
from lhama.train.recipe import start_run, trainable_params, write_run_outputs
from lhama.train.trainer import Trainer, labeled_logits

LOSSES = ("sigmoid", "ipo")
REFERENCES = ("precompute", "model", "adapters_off")


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    reference: str = "precompute"
    # A pair over max_seq_len keeps at most this many (last) prompt tokens; 0: half of max_seq_len.
    max_prompt_len: int = 0

    def __post_init__(self):
        if self.beta <= 0:
            raise ConfigError(f"dpo beta must be > 0, got {self.beta}")
        if self.loss not in LOSSES:
            raise ConfigError(f"dpo loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"dpo label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.reference not in REFERENCES:
            raise ConfigError(f"dpo reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        if self.max_prompt_len < 0:
            raise ConfigError("dpo max_prompt_len must not be negative")


# -- data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairRow:
    chosen: tuple[list[int], list[int]]  # (ids, shifted targets) padded later
    rejected: tuple[list[int], list[int]]
    ref: tuple[float, float] | None = None  # precomputed reference log-probs (chosen, rejected)


def _response_text(value: Any, where: str, key: str) -> dict:
    """An assistant message from a string, a message dict or a one-message list."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, dict) and value.get("role", "assistant") == "assistant" and "content" in value:
        return {"role": "assistant", "content": value["content"]}
    raise ConfigError(f"{where}: '{key}' must be a string or one assistant message")


def tokenize_response(
    prompt_ids: list[int], messages: list[dict], chat_format, where: str, tools: Sequence[dict] | None = None
) -> list[int]:
    """The ids the model generates for the final assistant turn, through its end-of-turn token."""
    full = chat_format.encode_dialog(messages, tools=tools, add_generation_prompt=False)
    if full[: len(prompt_ids)] != prompt_ids:
        raise ConfigError(
            f"{where}: the chat format does not render the prompt as a prefix of the answered "
            "conversation, so the answer's tokens cannot be located"
        )
    resp = full[len(prompt_ids) :]
    for j, t in enumerate(resp):
        if t in chat_format.stop_ids:
            return resp[: j + 1]
    return resp


def _fit(prompt: list[int], resp: list[int], max_len: int, max_prompt: int) -> tuple[list[int], list[int], bool]:
    if len(prompt) + len(resp) <= max_len:
        return prompt, resp, False
    # Keep the end of the prompt (the request nearest the answer), then cut the answer's tail.
    prompt = prompt[-min(len(prompt), max_prompt) :]
    return prompt, resp[: max_len - len(prompt)], True


def _sequence(prompt: list[int], resp: list[int]) -> tuple[list[int], list[int]]:
    ids = prompt + resp
    # Shifted targets: position t predicts ids[t + 1]; only answer tokens count.
    targets = [IGNORE] * (len(prompt) - 1) + resp + [IGNORE]
    return ids, targets


def tokenize_pairs(
    records: Sequence[dict], chat_format, max_seq_len: int, max_prompt_len: int, *, source: str = "data"
) -> tuple[list[PairRow], int]:
    """Rows and the number of pairs that had to be truncated to fit ``max_seq_len``."""
    from lhama.train.rejection import prompt_messages

    max_prompt_len = max_prompt_len or max_seq_len // 2
    if max_prompt_len >= max_seq_len:
        raise ConfigError(f"dpo max_prompt_len ({max_prompt_len}) must be below max_seq_len ({max_seq_len})")
    rows, truncated = [], 0
    for n, rec in enumerate(records, 1):
        where = f"{source}:{n}"
        for key in ("chosen", "rejected"):
            if key not in rec:
                raise ConfigError(f"{where}: a preference pair needs 'prompt', 'chosen' and 'rejected'")
        msgs = prompt_messages(rec, where=where)
        tools = rec.get("tools")  # function specs rendered into the prompt, as in chat JSONL
        prompt = chat_format.encode_dialog(msgs, tools=tools, add_generation_prompt=True)
        seqs = []
        for key in ("chosen", "rejected"):
            resp = tokenize_response(prompt, msgs + [_response_text(rec[key], where, key)], chat_format, where, tools)
            if not resp:
                raise ConfigError(f"{where}: '{key}' renders to no tokens")
            p, r, cut = _fit(prompt, resp, max_seq_len, max_prompt_len)
            truncated += cut
            seqs.append(_sequence(p, r))
        if seqs[0][0] == seqs[1][0]:
            raise ConfigError(f"{where}: 'chosen' and 'rejected' are the same answer")
        rows.append(PairRow(seqs[0], seqs[1]))
    return rows, truncated


def collate_pairs(rows: Sequence[PairRow], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Chosen and rejected as separate [B, T] tensors (so a batch splits by pair across
    processes) padded to one length; ``doc_ids`` marks real tokens of both for token counts."""
    T = max(max(len(r.chosen[0]), len(r.rejected[0])) for r in rows)

    def pad(seq, value):
        return seq + [value] * (T - len(seq))

    out: dict[str, torch.Tensor] = {}
    for key in ("chosen", "rejected"):
        out[f"{key}_tokens"] = torch.tensor([pad(getattr(r, key)[0], pad_id) for r in rows])
        out[f"{key}_labels"] = torch.tensor([pad(getattr(r, key)[1], IGNORE) for r in rows])
    out["doc_ids"] = torch.tensor([pad([0] * len(r.chosen[0]), -1) + pad([0] * len(r.rejected[0]), -1) for r in rows])
    if all(r.ref is not None for r in rows):
        out["ref_chosen_logps"] = torch.tensor([r.ref[0] for r in rows], dtype=torch.float64)
        out["ref_rejected_logps"] = torch.tensor([r.ref[1] for r in rows], dtype=torch.float64)
    return out


class PairIterator(BatchIterator):
    """``BatchIterator``'s order, epochs and resumable position, over preference pairs."""

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._order_for(self.epoch)
        picked = [
            self.rows[self._order[(self.index * self.batch_size + k) % len(self.rows)]] for k in range(self.batch_size)
        ]
        self.index += 1
        return collate_pairs(picked)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """The base model under LoRA adapters: each adapter's scaling is 0 inside the block (its
    output adds exactly nothing), restored after, even on error."""
    loras = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not loras:
        raise ConfigError(
            "dpo reference 'adapters_off' needs a LoRA model (use --lora, or reference 'precompute' / 'model')"
        )
    saved = [m.scaling for m in loras]
    try:
        for m in loras:
            m.scaling = 0.0
        yield model
    finally:
        for m, s in zip(loras, saved):
            m.scaling = s


# -- log-probs and the loss --------------------------------------------------------------------
def sequence_logps(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probs [B], answer-token count [B]) under ``model``."""
    B, T = tokens.shape
    positions = torch.arange(T, device=tokens.device).expand(B, T)
    logits, targets = labeled_logits(model, {"tokens": tokens, "labels": labels, "positions": positions})
    token_logps = -F.cross_entropy(logits, targets, reduction="none")
    row = (labels != IGNORE).nonzero()[:, 0]
    sums = torch.zeros(B, dtype=token_logps.dtype, device=tokens.device).index_add(0, row, token_logps)
    counts = torch.bincount(row, minlength=B).to(token_logps.dtype)
    return sums, counts


def pair_logps(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Chosen and rejected in one forward pass: (chosen sums, rejected sums, chosen n, rejected n)."""
    tok = torch.cat([batch["chosen_tokens"], batch["rejected_tokens"]])
    lab = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
    sums, counts = sequence_logps(model, tok, lab)
    B = batch["chosen_tokens"].shape[0]
    return sums[:B], sums[B:], counts[:B], counts[B:]


def dpo_losses(pol_c, pol_r, ref_c, ref_r, cfg: DPOConfig) -> torch.Tensor:
    h = (pol_c - ref_c) - (pol_r - ref_r)
    if cfg.loss == "ipo":
        return (h - 1.0 / (2 * cfg.beta)) ** 2
    eps = cfg.label_smoothing
    return -F.logsigmoid(cfg.beta * h) * (1 - eps) - F.logsigmoid(-cfg.beta * h) * eps


class DPOLoss:
    """``loss_fn(model, batch) -> (loss_sum, n_pairs)`` for the Trainer, keeping running reward
    metrics (``pop_metrics``) for the log."""

    def __init__(self, cfg: DPOConfig, ref_model: nn.Module | None = None):
        self.cfg, self.ref_model = cfg, ref_model
        self._m = {"rewards_chosen": 0.0, "rewards_rejected": 0.0, "reward_accuracy": 0.0, "pairs": 0}

    def _reference(self, model, batch):
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"], None, None
        with torch.no_grad():
            if self.cfg.reference == "adapters_off":
                with adapters_disabled(model):
                    return pair_logps(model, batch)
            if self.ref_model is None:
                raise ConfigError("dpo: no reference log-probs in the batch and no reference model")
            return pair_logps(self.ref_model, batch)

    def __call__(self, model, batch):
        pol_c, pol_r, n_c, n_r = pair_logps(model, batch)
        ref_c, ref_r, rn_c, rn_r = self._reference(model, batch)
        ref_c, ref_r = ref_c.to(pol_c.dtype), ref_r.to(pol_r.dtype)
        if self.cfg.loss == "ipo":  # IPO compares per-token means, so long answers don't dominate
            pol_c, pol_r, ref_c, ref_r = pol_c / n_c, pol_r / n_r, ref_c / n_c, ref_r / n_r
        losses = dpo_losses(pol_c, pol_r, ref_c, ref_r, self.cfg)
        with torch.no_grad():
            rc, rr = self.cfg.beta * (pol_c - ref_c), self.cfg.beta * (pol_r - ref_r)
            self._m["rewards_chosen"] += float(rc.sum())
            self._m["rewards_rejected"] += float(rr.sum())
            self._m["reward_accuracy"] += float((rc > rr).sum())
            self._m["pairs"] += int(rc.numel())
        return losses.sum(), torch.tensor(losses.numel())

    def pop_metrics(self) -> dict[str, float]:
        n = max(self._m["pairs"], 1)
        out = {k: v / n for k, v in self._m.items() if k != "pairs"}
        out["reward_margin"] = out["rewards_chosen"] - out["rewards_rejected"]
        self._m = {k: 0 * v for k, v in self._m.items()}
        return out


@torch.no_grad()
def precompute_reference(
    model: nn.Module,
    rows: Sequence[PairRow],
    batch_size: int = 8,
    *,
    adapters_off: bool = False,
    progress: bool = False,
) -> list[PairRow]:
    """Rows with ``ref`` filled in from ``model`` (the policy before training, or a separate
    reference), computed once."""
    was_training = model.training
    model.eval()
    ctx = contextlib.nullcontext()
    if adapters_off:
        ctx = adapters_disabled(model)
    out = []
    it = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="reference log-probs", unit="batch")
    with ctx:
        for s in it:
            chunk = rows[s : s + batch_size]
            c, r, _, _ = pair_logps(model, collate_pairs(chunk))
            out.extend(
                PairRow(row.chosen, row.rejected, (float(a), float(b)))
                for row, a, b in zip(chunk, c.tolist(), r.tolist())
            )
    model.train(was_training)
    return out


@torch.no_grad()
def preference_margin(model: nn.Module, rows: Sequence[PairRow], batch_size: int = 8) -> dict[str, float]:
    """Held-out evaluation: mean log π(chosen) − log π(rejected) over pairs (summed over answer
    tokens, and per-token means), and the share of pairs where chosen is more likely."""
    was_training = model.training
    model.eval()
    margins, mean_margins, wins = [], [], 0
    for s in range(0, len(rows), batch_size):
        c, r, nc, nr = pair_logps(model, collate_pairs(rows[s : s + batch_size]))
        margins += (c - r).tolist()
        mean_margins += (c / nc - r / nr).tolist()
        wins += int((c > r).sum())
    model.train(was_training)
    n = max(len(margins), 1)
    return {
        "margin": sum(margins) / n,
        "mean_token_margin": sum(mean_margins) / n,
        "accuracy": wins / n,
        "pairs": len(margins),
    }


def frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# -- the recipe --------------------------------------------------------------------------------
class DPOTrainer(Trainer):
    """Adds the reward metrics (accuracy, margin) of each step to the log."""

    def train_step(self):
        m = super().train_step()
        extra = self.loss_fn.pop_metrics()
        keys = sorted(extra)
        m.update(zip(keys, (v / self.world for v in self._reduce(*(extra[k] for k in keys)))))
        return m


def run_dpo(
    opts, cfg, lora=None, dpo: DPOConfig = DPOConfig(), *, ref_model: str | None = None, resume: bool = False
) -> dict[str, Any]:
    """DPO on preference JSONL (``opts.data``), full or LoRA; ``opts.eval_data`` (pairs) gives the
    held-out chosen-vs-rejected margin before and after. Returns the summary (summary.json)."""
    lm = start_run(opts, cfg)
    rows, cut = [], 0
    for path in opts.data:
        r, c = tokenize_pairs(read_jsonl(path), lm.chat_format, cfg.max_seq_len, dpo.max_prompt_len, source=path)
        rows += r
        cut += c
    eval_rows = []
    if opts.eval_data:
        eval_rows, _ = tokenize_pairs(
            read_jsonl(opts.eval_data), lm.chat_format, cfg.max_seq_len, dpo.max_prompt_len, source=opts.eval_data
        )
    model = lm.model
    params = trainable_params(model, lora, cfg.seed)
    if dpo.reference == "adapters_off" and lora is None:
        raise ConfigError("dpo reference 'adapters_off' needs LoRA (--recipe dpo with --lora-rank, or a lora: section)")
    ref = None
    if ref_model is not None:  # a separate reference (e.g. the SFT model when the policy starts elsewhere)
        from lhama.loader import load_model

        ref = frozen_copy(load_model(ref_model, dtype=getattr(torch, opts.model_dtype), device=opts.device).model)
        if ref.args.vocab_size != lm.args.vocab_size:
            raise ConfigError("the reference model's vocabulary differs from the policy's")
        if dpo.reference == "precompute":
            rows, ref = precompute_reference(ref, rows, cfg.batch_size, progress=cfg.progress), None
    elif dpo.reference == "precompute":
        rows = precompute_reference(model, rows, cfg.batch_size, adapters_off=lora is not None, progress=cfg.progress)
    elif dpo.reference == "model":
        ref = frozen_copy(model)
    summary: dict[str, Any] = {
        "recipe": "dpo",
        "model": opts.model,
        "pairs": len(rows),
        "truncated_pairs": cut,
        "dpo": asdict(dpo),
    }
    if eval_rows:
        summary["eval_before"] = preference_margin(model, eval_rows, cfg.batch_size)
    trainer = DPOTrainer(model, DPOLoss(dpo, ref), PairIterator(rows, cfg.batch_size, seed=cfg.seed), cfg, params)
    result = trainer.train(resume=resume)
    summary.update(steps=result.steps, final_loss=result.final_loss)
    if result.history:
        summary["final_reward_accuracy"] = result.history[-1].get("reward_accuracy")
    if eval_rows:
        summary["eval_after"] = preference_margin(trainer.model, eval_rows, cfg.batch_size)
    return write_run_outputs(trainer.model, lm, opts, cfg, lora, summary)
