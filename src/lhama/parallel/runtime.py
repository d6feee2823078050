"""The process group every multi-process path shares: tensor-parallel serving, FSDP training.

The launcher (torchrun, or ``lhama serve --tp`` spawning its followers) describes the group in
the environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK. A lone process
(WORLD_SIZE unset or 1) joins nothing, and the helpers below answer as rank 0 of 1.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(
    backend: str | None = None, device: str | torch.device | None = None, *, timeout: datetime.timedelta | None = None
) -> tuple[int, int]:
    """Join the launcher's process group once; returns (rank, world size). NCCL with one GPU per
    rank (LOCAL_RANK picks it), gloo on CPUs. ``timeout``: how long a collective may wait
    (torch's default when None)."""
    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    use_cuda = (device is None and torch.cuda.is_available()) or str(device or "").startswith("cuda")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, **({"timeout": timeout} if timeout is not None else {}))
    return dist.get_rank(), dist.get_world_size()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """More than one process works on the job."""
    return is_initialized() and dist.get_world_size() > 1


def process_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0: the process that writes shared files and prints summaries."""
    return process_rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def local_device(device: str | torch.device | None) -> torch.device:
    """The device this rank uses: ``cuda`` without an index becomes the rank's own GPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
