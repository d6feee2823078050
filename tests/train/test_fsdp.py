"""FSDP2 over two CPU processes (gloo) trains exactly like one process on the same global batch:
same losses step by step, same final weights (gathered into the checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("train_script.py")


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _launch(cmd: list[str]) -> subprocess.Popen:
    # No LoRA dropout: each process draws its own masks, so only a dropout-free run can match exactly.
    return subprocess.Popen(
        cmd,
        env={**os.environ, "OMP_NUM_THREADS": "1", "LORA_DROPOUT": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["full", "lora"])
def test_two_process_fsdp_matches_one_process(tmp_path, lora):
    flags = ["--lora"] if lora else []
    one = _launch([sys.executable, str(SCRIPT), str(tmp_path / "one"), "4", "0", *flags])
    two = _launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPT),
            str(tmp_path / "two"),
            "4",
            "0",
            *flags,
        ]
    )
    for p in (one, two):
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    assert [m["loss"] for m in b] == pytest.approx([m["loss"] for m in a], rel=1e-5)
    assert [m["tokens"] for m in b] == [m["tokens"] for m in a]  # the same global batch
    sa = torch.load(tmp_path / "one/checkpoints/step-000004/state.pt", weights_only=True)
    sb = torch.load(tmp_path / "two/checkpoints/step-000004/state.pt", weights_only=True)
    assert sb["world_size"] == 2 and sa["world_size"] == 1
    assert sa["model"].keys() == sb["model"].keys() and sa["model"]
    for k in sa["model"]:
        torch.testing.assert_close(sb["model"][k], sa["model"][k], rtol=1e-4, atol=1e-6, msg=k)
    # Every process saved its own RNG state for an exact resume.
    assert (tmp_path / "two/checkpoints/step-000004/rng-rank1.pt").is_file()


@pytest.mark.slow
def test_one_process_checkpoint_resumes_under_two_processes(tmp_path):
    """Checkpoints hold full tensors: a run checkpointed by one process continues under FSDP with
    two and matches the uninterrupted one-process run."""
    one = _launch([sys.executable, str(SCRIPT), str(tmp_path / "one"), "6", "0"])
    assert one.wait(timeout=300) == 0
    part = _launch([sys.executable, str(SCRIPT), str(tmp_path / "part"), "6", "4"])
    assert part.wait(timeout=300) == 0
    ckpts = tmp_path / "part" / "checkpoints"
    shutil.rmtree(ckpts / "step-000006")
    (ckpts / "latest").write_text("step-000004\n")
    two = _launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPT),
            str(tmp_path / "part"),
            "6",
            "0",
            "--resume",
        ]
    )
    out, _ = two.communicate(timeout=300)
    assert two.returncode == 0 and "(step 4 of 6)" in out, out
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "part")
    assert [m["step"] for m in b] == list(range(1, 7))
    assert [m["loss"] for m in b] == pytest.approx([m["loss"] for m in a], rel=1e-5)


@pytest.mark.slow
def test_finetune_cli_under_torchrun_matches_one_process(tmp_path):
    """`torchrun -m lhama.cli finetune` (the documented command) against the same run in one process."""
    sys.path.insert(0, str(SCRIPT.parent))
    from conftest import write_chat_jsonl

    data = write_chat_jsonl(tmp_path / "chat.jsonl", 16)
    args = [
        "finetune",
        "--recipe",
        "sft",
        "--model",
        "tiny-llama3",
        "--data",
        str(data),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--max-seq-len",
        "64",
        "--no-progress",
    ]
    one = _launch([sys.executable, "-m", "lhama.cli", *args, "--output-dir", str(tmp_path / "one")])
    two = _launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "lhama.cli",
            *args,
            "--output-dir",
            str(tmp_path / "two"),
        ]
    )
    for p in (one, two):
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["loss"] for m in b] == pytest.approx([m["loss"] for m in a], rel=1e-5)
