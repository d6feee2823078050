"""Training checkpoints: written to a temporary folder and renamed into place, so a run killed at
any moment leaves either the previous checkpoint or the new one, never half of one.

Layout under ``output_dir/checkpoints``: ``step-000040/`` holding ``state.pt`` (trainable
weights, optimizer, scheduler, data position, step) and ``rng-rank{r}.pt`` per process, and
``latest`` naming the newest complete folder. Weights and optimizer state are gathered to full
(unsharded) tensors, so a checkpoint made under FSDP with N processes resumes with any N.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lhama.errors import CheckpointError
from lhama.parallel.runtime import barrier, process_rank

_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # Plain types only, so checkpoints load with torch.load(weights_only=True).
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(root: Path, step: int, state: dict[str, Any] | None, keep: int) -> Path:
    """Write ``state`` (rank 0's; None on other ranks) and every rank's RNG for ``step``.
    Collective under torch.distributed: every rank calls it."""
    root = Path(root)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    if process_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    _atomic_torch_save(rng_state(), tmp / f"rng-rank{process_rank()}.pt")
    barrier()
    if process_rank() == 0:
        _atomic_torch_save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)  # a re-run of the same step after a resume
        os.rename(tmp, final)
        write_text_atomic(root / "latest", final.name + "\n")
        _prune(root, keep, final)
    barrier()
    return final


def _prune(root: Path, keep: int, newest: Path) -> None:
    if keep <= 0:
        return
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))
    for _, p in steps[:-keep]:
        if p != newest:
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint folder, or None. ``latest`` is trusted when it points at a
    folder holding state.pt; otherwise the highest complete step folder is used."""
    root = Path(root)
    if not root.is_dir():
        return None
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "state.pt").is_file():
            return cand
    steps = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "state.pt").is_file()
    )
    return steps[-1][1] if steps else None


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state, this rank's RNG state or None when the checkpoint had fewer ranks)."""
    folder = Path(folder)
    try:
        # weights_only: a tampered checkpoint cannot run code when loaded.
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(folder / "state.pt", f"cannot read training checkpoint ({e})") from None
    rng_file = folder / f"rng-rank{process_rank()}.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=True) if rng_file.is_file() else None
    return state, rng
