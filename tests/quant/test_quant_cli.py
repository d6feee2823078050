"""``--quantize`` through the real CLI (a subprocess) and ``load_model(quantize=...)``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lhama.errors import ConfigError
from lhama.loader import load_model
from lhama.quant import Int4WeightOnlyLinear, Int8WeightOnlyLinear


def test_load_model_quantize_reports_memory():
    lm = load_model("tiny-llama3", device="cpu", quantize="int4:64")
    assert lm.quant.config.group_size == 64
    assert isinstance(lm.model.layers[0].feed_forward.w13, Int4WeightOnlyLinear)
    assert isinstance(lm.model.output, Int8WeightOnlyLinear)
    assert lm.quant.bytes_after < lm.quant.bytes_before


def test_load_model_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="unknown quantization mode"):
        load_model("tiny-llama3", device="cpu", quantize="int2")


def test_cli_generate_with_quantize():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lhama.cli",
            "generate",
            "--model",
            "tiny-llama3",
            "--quantize",
            "int8",
            "--max-tokens",
            "5",
            "--temperature",
            "0",
            "--json",
            "Hello",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["completion_tokens"] == 5


def test_cli_rejects_bad_group_size():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lhama.cli",
            "generate",
            "--model",
            "tiny-llama3",
            "--quantize",
            "int4",
            "--quant-group-size",
            "48",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "--quant-group-size" in out.stderr
