"""Recipe: supervised fine-tuning on chat JSONL, full or LoRA. Loss only on assistant tokens,
examples packed into rows.

    lhama finetune --recipe lora --model default --data chat.jsonl --output-dir runs/lora
"""

from __future__ import annotations

from typing import Any

from lhama.model.lora import LoraConfig
from lhama.train.config import TrainConfig
from lhama.train.data import Example, load_chat_examples
from lhama.train.recipe import RecipeOptions, train_on_examples


def chat_examples(lm, path: str) -> list[Example]:
    return load_chat_examples(path, lm.chat_format)


def run_sft(
    opts: RecipeOptions, cfg: TrainConfig, lora: LoraConfig | None = None, *, resume: bool = False
) -> dict[str, Any]:
    """Full SFT (``lora=None``) or LoRA SFT on chat JSONL."""
    return train_on_examples(
        opts, cfg, lora, resume=resume, to_examples=chat_examples, recipe="lora" if lora else "sft"
    )
