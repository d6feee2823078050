"""What a training run leaves behind: a PEFT adapter, full weights as a Hugging Face folder or a
GGUF file (with the base model's tokenizer carried along), and held-out loss.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lhama.errors import ConfigError
from lhama.parallel.runtime import is_distributed
from lhama.train.data import Row, collate

EXPORT_FORMATS = ("safetensors", "gguf")


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model on the CPU, gathered from FSDP shards when sharded (collective)."""
    if is_distributed():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our checkpoint names with any LoRA update folded into its base weight."""
    cfg = getattr(model, "lora_config", None)
    out = {k: v for k, v in state.items() if ".lora_a." not in k and ".lora_b." not in k}
    if cfg is not None:
        for k in list(out):
            a_key = k.replace(".weight", ".lora_a.weight")
            if a_key in state:
                a, b = state[a_key].float(), state[k.replace(".weight", ".lora_b.weight")].float()
                out[k] = (out[k].float() + (b @ a) * cfg.scaling).to(out[k].dtype)
    return out


def export_weights(
    state: dict[str, torch.Tensor],
    args,
    base_path: Path | None,
    out: Path,
    fmt: str,
    gguf_type: str = "f16",
    tokenizer=None,
) -> Path:
    """Write full weights as an HF folder ("safetensors") or a GGUF file, with the tokenizer of
    the base checkpoint so the result loads on its own in lhama, transformers or llama.cpp."""
    from lhama.checkpoints import read_checkpoint, write_checkpoint
    from lhama.checkpoints.export import TOKENIZER_FILES, gguf_metadata_for, hf_token_ids, write_hf_tokenizer_from_gguf
    from lhama.checkpoints.loader import detect_format

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    state = {k: v for k, v in state.items() if k != "inv_freq"}
    src_fmt = detect_format(base_path) if base_path is not None else None
    base_meta = None
    if src_fmt == "gguf":
        from lhama.checkpoints import read_gguf_metadata

        base_meta = read_gguf_metadata(base_path)
    if fmt == "safetensors":
        extra = hf_token_ids(base_meta) if base_meta else None
        written = write_checkpoint(state, args, out, fmt="safetensors", extra_config=extra)
        if src_fmt == "gguf":
            write_hf_tokenizer_from_gguf(base_path, base_meta, written)
        elif base_path is not None:
            src_dir = base_path if base_path.is_dir() else base_path.parent
            for name in TOKENIZER_FILES:
                if (src_dir / name).is_file():
                    shutil.copyfile(src_dir / name, written / name)
        elif getattr(tokenizer, "kind", None) == "llama3":  # a named config: Meta's tokenizer from llama-models
            from lhama.tokenizer.llama3 import default_tokenizer_path

            shutil.copyfile(default_tokenizer_path(), written / "tokenizer.model")
        return written
    metadata: dict[str, Any] = {}
    if base_meta is not None:
        metadata = dict(base_meta)
    elif base_path is not None:
        metadata = gguf_metadata_for(read_checkpoint(base_path, torch.float32))
    return write_checkpoint(state, args, out, fmt="gguf", gguf_type=gguf_type, metadata=metadata)


@torch.no_grad()
def heldout_loss(model: nn.Module, rows: list[Row], batch_size: int = 4) -> float:
    """Mean cross-entropy per labeled token over ``rows`` (what SFT lowers on unseen data)."""
    from lhama.train.trainer import causal_lm_loss

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = count = 0.0
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i : i + batch_size]).items()}
        loss, n = causal_lm_loss(model, batch)
        total += float(loss)
        count += float(n)
    model.train(was_training)
    return total / max(count, 1.0)
