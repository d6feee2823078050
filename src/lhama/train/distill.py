"""Recipe: knowledge distillation from a teacher into a smaller student that shares its tokenizer.

Loss per labeled token: ``kd_ratio · T² · KL(p_teacher,T ‖ p_student,T) + (1 − kd_ratio) · CE``,
with p·,T the softmax at temperature T (Hinton et al. 2015; T² keeps the gradient scale of the
soft term independent of T). ``kd_ratio = 0`` is plain training on the data, the baseline a
distilled student must beat. The data is chat JSONL (loss on assistant turns, the teacher-style
text) or raw text, as for SFT and continued pretraining.

    lhama distill --teacher default --student smollm2-30m --data synth.jsonl --output-dir runs/kd

The student is a preset (``smollm2-30m``, ``smollm2-8m``: Llama shapes sized for the
teacher's vocabulary), a named lhama config, a JSON/YAML file of ``ModelArgs`` fields, or a
checkpoint to continue from. The output is a full model folder (or GGUF) with the teacher's
tokenizer, loadable by ``lhama chat --model``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lhama.errors import ConfigError
from lhama.model import CONFIGS, ModelArgs, build_model
from lhama.train.data import IGNORE, BatchIterator, make_rows
from lhama.train.recipe import pad_id_of, start_run, tokens_per_second, write_run_outputs
from lhama.train.trainer import Trainer, _is_fsdp, attention_for

# Student shapes (dim, layers, heads, kv heads, SwiGLU width), tied embeddings as SmolLM2: with a
# 49k vocabulary most parameters are the embedding, so depth is cheap.
STUDENT_PRESETS = {
    "smollm2-30m": dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=2, hidden_dim=1024),
    "smollm2-8m": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=384),
}


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 1.0
    kd_ratio: float = 0.5  # weight of the KL term; 1 - kd_ratio on cross-entropy with the data
    chunk_tokens: int = 512  # vocab-sized logits are made this many positions at a time

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"distillation temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.kd_ratio <= 1.0:
            raise ConfigError(f"kd_ratio must be in [0, 1], got {self.kd_ratio}")
        if self.chunk_tokens < 1:
            raise ConfigError("chunk_tokens must be positive")


def student_args(spec: str, teacher_args: ModelArgs, max_seq_len: int | None = None) -> ModelArgs | None:
    """ModelArgs for a preset, a named config or a JSON/YAML file; None when ``spec`` is a
    checkpoint (loaded with its weights instead)."""
    ctx = max_seq_len or teacher_args.max_seq_len
    base = dict(
        vocab_size=teacher_args.vocab_size,
        rope_theta=teacher_args.rope_theta,
        norm_eps=teacher_args.norm_eps,
        max_seq_len=ctx,
        tie_embeddings=True,
    )
    if spec in STUDENT_PRESETS:
        return ModelArgs(**{**base, **STUDENT_PRESETS[spec]})
    if spec.lower() in CONFIGS:
        args = CONFIGS[spec.lower()].args
        return args.with_(vocab_size=teacher_args.vocab_size) if args.vocab_size != teacher_args.vocab_size else args
    path = Path(spec)
    if path.is_file() and path.suffix in (".json", ".yaml", ".yml"):
        from lhama.train.config import read_config_file

        values = read_config_file(path)
        known = {f.name for f in fields(ModelArgs)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{path}: unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if values.get("rope_scaling"):
            from lhama.model import RopeScaling

            values["rope_scaling"] = RopeScaling(**values["rope_scaling"])
        return ModelArgs(**{**base, **values})
    if path.exists():
        return None
    raise ConfigError(
        f"--student '{spec}' is neither a preset ({', '.join(STUDENT_PRESETS)}), a config name, "
        "a .json/.yaml file of model options, nor a checkpoint"
    )


# -- the loss ----------------------------------------------------------------------------------
def kd_token_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor, cfg: DistillConfig
) -> torch.Tensor:
    """Per-position loss [N] (see the module doc). KL is the true divergence (teacher entropy
    included), so 0 means the student matches the teacher exactly."""
    loss = torch.zeros(targets.shape[0], dtype=torch.float32, device=targets.device)
    if cfg.kd_ratio > 0:
        T = cfg.temperature
        s = F.log_softmax(student_logits.float() / T, dim=-1)
        t = F.log_softmax(teacher_logits.float() / T, dim=-1)
        kl = (t.exp() * (t - s)).sum(-1)
        loss = loss + cfg.kd_ratio * T * T * kl
    if cfg.kd_ratio < 1:
        loss = loss + (1 - cfg.kd_ratio) * F.cross_entropy(student_logits.float(), targets, reduction="none")
    return loss


class DistillLoss:
    """``loss_fn(student, batch) -> (loss_sum, n_tokens)``; the teacher runs frozen, no grad."""

    def __init__(self, teacher: nn.Module | None, cfg: DistillConfig):
        if cfg.kd_ratio > 0 and teacher is None:
            raise ConfigError("distillation with kd_ratio > 0 needs a teacher")
        self.teacher, self.cfg = teacher, cfg
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def _teacher_hidden(self, batch, keep):
        h = self.teacher.hidden_states(batch["tokens"], batch["positions"], attention_for(batch))
        return h[keep]

    def __call__(self, student, batch):
        labels = batch["labels"]
        keep = labels != IGNORE
        targets = labels[keep]
        t_h = self._teacher_hidden(batch, keep) if self.cfg.kd_ratio > 0 else None
        if _is_fsdp(student):  # FSDP's hooks run on forward(): full logits, then select
            s_logits = student(batch["tokens"], positions=batch["positions"], cache=attention_for(batch))[keep]
            t_logits = self.teacher.output(t_h).float() if t_h is not None else None
            return kd_token_losses(s_logits, t_logits, targets, self.cfg).sum(), torch.tensor(targets.numel())
        s_h = student.hidden_states(batch["tokens"], batch["positions"], attention_for(batch))[keep]
        total = torch.zeros((), device=s_h.device)
        for c in range(0, targets.numel(), self.cfg.chunk_tokens):
            sl = slice(c, c + self.cfg.chunk_tokens)
            t_logits = None
            if t_h is not None:
                with torch.no_grad():
                    t_logits = self.teacher.output(t_h[sl]).float()
            # Recomputing the student's head in backward keeps one chunk of [N, vocab] logits
            # alive at a time instead of all of them (the vocab dominates memory for small students).
            total = total + checkpoint(
                self._chunk_loss, student.output, s_h[sl], t_logits, targets[sl], use_reentrant=False
            )
        return total, torch.tensor(targets.numel())

    def _chunk_loss(self, head, h, t_logits, targets):
        return kd_token_losses(head(h).float(), t_logits, targets, self.cfg).sum()


# -- the recipe --------------------------------------------------------------------------------
def build_student(spec: str, teacher_lm, cfg, opts) -> tuple[nn.Module, ModelArgs, Any]:
    """(student model, its args, its LoadedModel when loaded from a checkpoint)."""
    dtype = getattr(torch, opts.model_dtype)
    device = teacher_lm.model.device
    args = student_args(spec, teacher_lm.args, max(cfg.max_seq_len, 256))
    if args is None:
        from lhama.loader import load_model

        lm = load_model(spec, dtype=dtype, device=device)
        if lm.args.vocab_size != teacher_lm.args.vocab_size:
            raise ConfigError(
                f"student vocabulary ({lm.args.vocab_size}) differs from the teacher's "
                f"({teacher_lm.args.vocab_size}); distillation needs a shared tokenizer"
            )
        return lm.model, lm.args, lm
    if args.vocab_size != teacher_lm.args.vocab_size:
        raise ConfigError(
            f"student vocabulary ({args.vocab_size}) differs from the teacher's "
            f"({teacher_lm.args.vocab_size}); distillation needs a shared tokenizer"
        )
    # Small init (0.02, as random configs) with the run's seed: same student for KD and baseline.
    return build_model(args, dtype=dtype, device=device, init="random", seed=cfg.seed), args, None


def perplexity(model: nn.Module, rows) -> float:
    import math

    from lhama.train.outputs import heldout_loss

    return math.exp(heldout_loss(model, rows))


def run_distill(
    opts, cfg, dcfg: DistillConfig = DistillConfig(), *, student: str = "smollm2-30m", resume: bool = False
) -> dict[str, Any]:
    """Distil ``opts.model`` (the teacher) into ``student`` on ``opts.data``; ``opts.eval_data``
    gives held-out perplexity of student (and teacher) before/after. Returns the summary."""
    teacher_lm = start_run(opts, cfg)
    student_model, s_args, s_lm = build_student(student, teacher_lm, cfg, opts)
    to_examples = _examples_reader(opts)
    pad = pad_id_of(teacher_lm.tokenizer)
    examples = [ex for path in opts.data for ex in to_examples(teacher_lm, path)]
    rows = make_rows(examples, cfg.max_seq_len, pack=cfg.pack, pad_id=pad)
    eval_rows = []
    if opts.eval_data:
        eval_rows = make_rows(to_examples(teacher_lm, opts.eval_data), cfg.max_seq_len, pack=False, pad_id=pad)
    teacher = teacher_lm.model if dcfg.kd_ratio > 0 else None
    summary: dict[str, Any] = {
        "recipe": "distill",
        "teacher": opts.model,
        "student": student,
        "student_params": s_args.n_params(),
        "train_rows": len(rows),
        "distill": asdict(dcfg),
    }
    if eval_rows:
        summary["eval_ppl_student_before"] = perplexity(student_model, eval_rows)
        summary["eval_ppl_teacher"] = perplexity(teacher_lm.model, eval_rows)
    for p in student_model.parameters():
        p.requires_grad_(True)
    trainer = Trainer(
        student_model, DistillLoss(teacher, dcfg), BatchIterator(rows, cfg.batch_size, seed=cfg.seed), cfg
    )
    result = trainer.train(resume=resume)
    summary.update(steps=result.steps, final_loss=result.final_loss)
    if (rate := tokens_per_second(result.history)) is not None:
        summary["tokens_per_s"] = rate
    if eval_rows:
        summary["eval_ppl_student_after"] = perplexity(trainer.model, eval_rows)
    # The student's files carry the teacher's tokenizer (shared by construction).
    out_lm = _StudentOut(s_args, teacher_lm.path if s_lm is None else s_lm.path)
    return write_run_outputs(trainer.model, out_lm, opts, cfg, None, summary)


@dataclass
class _StudentOut:
    args: ModelArgs
    path: Path | None


def _examples_reader(opts):
    """Chat JSONL (``messages``) → assistant-only labels; ``.txt`` / JSONL ``text`` → every token."""
    from lhama.train.data import load_chat_examples, load_text_examples, read_jsonl

    def read(lm, path):
        p = Path(path)
        if p.suffix == ".jsonl" and "messages" in read_jsonl(p)[0]:
            return load_chat_examples(p, lm.chat_format)
        return load_text_examples([p], lm.tokenizer)

    return read
