"""The training loop every recipe shares: AdamW, warmup + cosine, gradient accumulation, gradient
checkpointing, bf16 autocast, progress bar, metrics JSONL + loss-curve PNG, atomic checkpoints
with resume, and FSDP2 sharding when torch.distributed runs with several processes.

A recipe supplies ``loss_fn(model, batch) -> (loss_sum, n)``: the *sum* of per-item losses and
how many items (tokens, pairs) it covers. The trainer backpropagates sums and divides the
gradients by the item count of the whole optimizer step (all micro-batches, all processes), so
the step is the same token-weighted mean however the batch is split: across grad_accum
micro-batches or across processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lhama.errors import ConfigError
from lhama.parallel.fsdp import fsdp_wrap
from lhama.parallel.runtime import is_distributed, process_rank, world_size
from lhama.train.checkpointing import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    write_text_atomic,
)
from lhama.train.config import TrainConfig
from lhama.train.data import IGNORE, DocumentMask

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor | int]]


# -- losses shared by recipes ---------------------------------------------------------------------
def attention_for(batch: dict[str, torch.Tensor]) -> DocumentMask | None:
    """Per-example attention when rows hold several packed examples; plain causal otherwise."""
    docs = batch.get("doc_ids")
    return DocumentMask(docs) if docs is not None and bool((docs > 0).any()) else None


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def labeled_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, vocab] fp32, targets [N]) at the N positions that have a label. Only those
    rows go through the output projection: prompt tokens of SFT data cost no vocab matmul."""
    tokens, labels = batch["tokens"], batch["labels"]
    keep = labels != IGNORE
    cache = attention_for(batch)
    if _is_fsdp(model):  # FSDP's hooks run on forward(); take full logits, then select
        logits = model(tokens, positions=batch["positions"], cache=cache)
        return logits[keep].float(), labels[keep]
    h = model.hidden_states(tokens, batch["positions"], cache)
    return model.output(h[keep]).float(), labels[keep]


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over labeled positions, and their count."""
    logits, targets = labeled_logits(model, batch)
    loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
    return loss, torch.tensor(targets.numel())


# -- the loop ----------------------------------------------------------------------------------
def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 down to ``min_ratio`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_for(device: torch.device, mode: str):
    bf16 = mode == "bf16" or (mode == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    output_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """``Trainer(model, loss_fn, data, cfg, params=None).train(resume=False)``.

    ``data`` yields batches (dicts of tensors, batch dimension first, ``batch_size`` rows) and
    has ``state_dict()``/``load_state_dict()``; ``batches_per_epoch`` when ``cfg.max_steps`` is 0.
    ``params``: the parameters to train (default: those with requires_grad); the rest are frozen.
    Under torch.distributed with world size > 1 the model is sharded with FSDP2 and each process
    takes its slice of every batch.
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, data: Any, cfg: TrainConfig, params: list[nn.Parameter] | None = None
    ):
        self.cfg, self.loss_fn, self.data = cfg, loss_fn, data
        self.distributed = is_distributed()
        self.rank, self.world = (process_rank(), world_size()) if self.distributed else (0, 1)
        if cfg.batch_size % self.world:
            raise ConfigError(
                f"batch_size {cfg.batch_size} must be divisible by the number of processes ({self.world})"
            )
        chosen = {id(p) for p in params} if params is not None else None
        self.trainable = [
            n for n, p in model.named_parameters() if (p.requires_grad if chosen is None else id(p) in chosen)
        ]
        if not self.trainable:
            raise ConfigError("no parameters to train")
        for n, p in model.named_parameters():
            p.requires_grad_(n in self.trainable)
        if hasattr(model, "gradient_checkpointing"):
            model.gradient_checkpointing = cfg.grad_checkpointing
        if self.distributed:
            model = fsdp_wrap(model)
        self.model = model
        named = dict(model.named_parameters())
        self.params = [named[n] for n in self.trainable]
        decay = [p for p in self.params if p.ndim >= 2]  # no weight decay on norms and biases
        rest = [p for p in self.params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
        )
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * data.batches_per_epoch / cfg.grad_accum))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
        )
        self.step = 0
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.metrics_path = self.out / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        self._stop_requested = False
        self.device = next(model.parameters()).device

    # -- state ------------------------------------------------------------------------------
    def _full_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=opts)
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        keep = set(self.trainable)
        return {
            "step": self.step,
            "model": {k: v for k, v in weights.items() if k in keep},
            "optimizer": optim,
            "scheduler": self.scheduler.state_dict(),
            "data": self.data.state_dict(),
            "config": self.cfg.to_dict(),
            "world_size": self.world,
        }

    def save(self) -> Path:
        state = self._full_state()  # collective: every rank gathers
        path = save_checkpoint(self.ckpt_dir, self.step, state if self.rank == 0 else None, self.cfg.keep_checkpoints)
        if self.rank == 0:
            self.plot()
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint under ``output_dir``; False when there is none."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        folder = latest_checkpoint(self.ckpt_dir)
        if folder is None:
            return False
        state, rng = load_checkpoint(folder)
        missing = set(self.trainable) - set(state["model"])
        if missing:
            raise ConfigError(
                f"checkpoint {folder} does not hold trainable parameter {sorted(missing)[0]}; "
                "resume with the same recipe and LoRA settings"
            )
        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.model, state["model"], options=opts)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        self.step = int(state["step"])
        # The learning rate follows this run's schedule (max_steps may have been raised to train longer).
        factor = lr_factor(self.step, self.total_steps, self.cfg.warmup_steps, self.cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor
        if rng is not None:
            set_rng_state(rng)
        if self.rank == 0:
            print(f"lhama: resumed from {folder} (step {self.step} of {self.total_steps})", file=sys.stderr, flush=True)
        # Metrics past the checkpoint belong to the lost work and will be logged again.
        if self.rank == 0 and self.metrics_path.is_file():
            kept = [
                line
                for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= self.step
            ]
            write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))
            self.history = [json.loads(line) for line in kept]
        return True

    # -- loop -------------------------------------------------------------------------------
    def _local(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor) and v.ndim and self.distributed:
                per = v.shape[0] // self.world
                v = v[self.rank * per : (self.rank + 1) * per]
            out[k] = v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        return out

    def _reduce(self, *values: float) -> list[float]:
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def train_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.model.train()
        loss_sum = count = seen = 0.0
        for _ in range(self.cfg.grad_accum):
            batch = self._local(next(self.data))
            with autocast_for(self.device, self.cfg.dtype):
                loss, n = self.loss_fn(self.model, batch)
            loss.backward()
            loss_sum += float(loss.detach())
            count += float(n)
            docs = batch.get("doc_ids")
            seen += float((docs >= 0).sum()) if docs is not None else float(batch["tokens"].numel())
        loss_sum, count, seen = self._reduce(loss_sum, count, seen)
        # FSDP averages gradients over processes; undo that, then divide by the step's item count.
        scale = self.world / max(count, 1.0)
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(scale)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm or float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        return {
            "step": self.step,
            "loss": loss_sum / max(count, 1.0),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "items": int(count),
            "tokens": int(seen),
            "tokens_per_s": seen / dt,
            "step_s": dt,
        }

    def train(self, resume: bool = False) -> TrainResult:
        resumed = self.resume() if resume else False
        if not resumed:
            _seed_all(self.cfg.seed + self.rank)
            if self.rank == 0 and self.metrics_path.exists():
                self.metrics_path.unlink()  # a fresh start: no stale curve from an older run
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        from tqdm import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (self.cfg.progress and self.rank == 0),
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        last: dict[str, Any] = self.history[-1] if self.history else {"loss": float("nan")}
        with bar, self._stop_on_sigint():
            while self.step < self.total_steps:
                m = self.train_step()
                last = m
                if self.rank == 0:
                    bar.update(1)
                    bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens_per_s']:.0f}", lr=f"{m['lr']:.2e}")
                    if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                        self._log(m)
                if self._stop_requested:
                    self.save()
                    raise KeyboardInterrupt(f"stopped at step {self.step}; continue with resume")
                if self.cfg.save_every and self.step % self.cfg.save_every == 0 and self.step < self.total_steps:
                    self.save()
        self.save()
        return TrainResult(self.step, float(last["loss"]), self.out, list(self.history))

    @contextlib.contextmanager
    def _stop_on_sigint(self):
        """Ctrl-C finishes the current step, saves a checkpoint and stops (KeyboardInterrupt), so
        ``--resume`` loses nothing; a second Ctrl-C aborts at once. Single-process runs only:
        under torchrun the launcher owns signals."""
        self._stop_requested = False
        if self.distributed or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            print(
                "\nlhama: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort)",
                file=sys.stderr,
                flush=True,
            )

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _log(self, m: dict[str, Any]) -> None:
        self.history.append(m)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(m) + "\n")

    def plot(self) -> Path | None:
        return plot_loss_curve(self.history, self.out / "loss.png")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def plot_loss_curve(history: list[dict[str, Any]], path: Path, title: str = "training loss") -> Path | None:
    """Loss (and learning rate) against step as a PNG; None when matplotlib is not installed."""
    if not history:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [h["loss"] for h in history], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if "lr" in history[0]:
        ax2 = ax.twinx()
        ax2.plot(steps, [h["lr"] for h in history], color="tab:orange", alpha=0.5, label="lr")
        ax2.set_ylabel("learning rate")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
