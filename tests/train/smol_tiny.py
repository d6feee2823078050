"""A tiny random Llama with the real SmolLM2 tokenizer and chat template, as a Hugging Face folder:
the post-training recipes run end to end on it in seconds (real tokenizer, real chat format,
real checkpoint loading) where SmolLM2 itself would take minutes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lhama.model import ModelArgs, build_model

_CACHE: dict[str, Path] = {}


def tiny_smol_args(dim: int = 32, n_layers: int = 2) -> ModelArgs:
    return ModelArgs(
        dim=dim,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=49152,
        hidden_dim=2 * dim,
        rope_theta=100000.0,
        max_seq_len=512,
        tie_embeddings=True,
    )


def tiny_smol_folder(base: Path, smollm2_path: Path, *, seed: int = 0, dim: int = 32) -> Path:
    """Write (once per process and shape) and return the folder."""
    key = f"{seed}-{dim}"
    if key in _CACHE and _CACHE[key].is_dir():
        return _CACHE[key]
    from lhama.train.outputs import export_weights

    args = tiny_smol_args(dim)
    model = build_model(args, init="random", seed=seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = export_weights(state, args, Path(smollm2_path), base / f"tiny-smol-{key}", "safetensors")
    _CACHE[key] = out
    return out


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arithmetic_pairs(lo: int, hi: int) -> list[dict]:
    """Deterministic preference pairs: the chosen answer states the sum, the rejected one refuses."""
    out = []
    for a in range(lo, hi):
        b = (a * 7) % 13 + 2
        out.append(
            {
                "prompt": f"What is {a} plus {b}?",
                "chosen": f"{a} plus {b} is {a + b}.",
                "rejected": "I am not sure, I cannot do that.",
            }
        )
    return out


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)
