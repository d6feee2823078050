"""Training: shared components (config, data, Trainer) and one recipe per workflow. LoRA layers
live with the model (``lhama.model.lora``), the PEFT adapter format in ``lhama.peft_adapter``.

    from lhama.train import TrainConfig, Trainer, causal_lm_loss
    from lhama.train.recipe import RecipeOptions
    from lhama.train.sft import run_sft

Recipes, one module each, composed from ``recipe.py``'s shared steps: ``sft.py`` (full and LoRA
SFT on chat JSONL), ``pretrain.py`` (continued pretraining on raw text), ``dpo.py``,
``distill.py``. See docs/training.md.
"""

from lhama.train.config import TrainConfig, build_configs, read_config_file
from lhama.train.data import IGNORE, BatchIterator, DocumentMask, Example, Row, collate, make_rows
from lhama.train.trainer import Trainer, TrainResult, causal_lm_loss, labeled_logits

__all__ = [
    "TrainConfig",
    "build_configs",
    "read_config_file",
    "IGNORE",
    "BatchIterator",
    "DocumentMask",
    "Example",
    "Row",
    "collate",
    "make_rows",
    "Trainer",
    "TrainResult",
    "causal_lm_loss",
    "labeled_logits",
]
