"""Training: shared components (config, data, Trainer, LoRA) and one recipe per workflow.

    from lhama.train import TrainConfig, LoraConfig, Trainer, causal_lm_loss
    from lhama.train.sft import RecipeOptions, run_sft

Recipes: ``sft.py`` (full and LoRA SFT on chat JSONL), ``pretrain.py`` (continued pretraining on
raw text). See docs/training.md.
"""

from lhama.train.config import LoraConfig, TrainConfig, build_configs, read_config_file
from lhama.train.data import IGNORE, BatchIterator, DocumentMask, Example, Row, collate, make_rows
from lhama.train.lora import LoRALinear, apply_lora, load_peft_adapter, merge_lora, save_peft_adapter
from lhama.train.trainer import Trainer, TrainResult, causal_lm_loss, labeled_logits

__all__ = ["LoraConfig", "TrainConfig", "build_configs", "read_config_file", "IGNORE", "BatchIterator",
           "DocumentMask", "Example", "Row", "collate", "make_rows", "LoRALinear", "apply_lora",
           "load_peft_adapter", "merge_lora", "save_peft_adapter", "Trainer", "TrainResult", "causal_lm_loss",
           "labeled_logits"]
