"""Recipe: continued pretraining on raw text (``.txt`` files or JSONL with a ``text`` field).
Every token is trained; documents are packed into full rows, long ones split across rows.

    lhama finetune --recipe pretrain --model default --data corpus.txt --output-dir runs/cpt
"""

from __future__ import annotations

from typing import Any

from lhama.model.lora import LoraConfig
from lhama.train.config import TrainConfig
from lhama.train.data import load_text_examples
from lhama.train.recipe import RecipeOptions, train_on_examples


def text_examples(lm, path: str) -> list:
    return load_text_examples([path], lm.tokenizer)


def run_pretrain(
    opts: RecipeOptions, cfg: TrainConfig, lora: LoraConfig | None = None, *, resume: bool = False
) -> dict[str, Any]:
    """Continued pretraining, full weights or (with ``lora``) a LoRA adapter."""
    return train_on_examples(opts, cfg, lora, resume=resume, to_examples=text_examples, recipe="pretrain")
