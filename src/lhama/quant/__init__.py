"""Weight-only quantization: int8 (per channel), int4 (group-wise), FP8 e4m3 (per row).

``quantize_model(model, "int4")`` swaps the model's linears in place; ``load_model(...,
quantize="int4")`` does it at load time. See ``docs/quantization.md``.
"""

from lhama.quant.config import GROUP_SIZES, MODES, QuantConfig
from lhama.quant.fp8 import FP8Linear
from lhama.quant.int4 import Int4WeightOnlyLinear
from lhama.quant.int8 import Int8WeightOnlyLinear
from lhama.quant.swap import QUANTIZED_TYPES, QuantReport, is_quantized, quantize_model, weight_bytes

__all__ = [
    "FP8Linear",
    "GROUP_SIZES",
    "Int4WeightOnlyLinear",
    "Int8WeightOnlyLinear",
    "MODES",
    "QUANTIZED_TYPES",
    "QuantConfig",
    "QuantReport",
    "is_quantized",
    "quantize_model",
    "weight_bytes",
]
