import json
import subprocess
import sys

import pytest

from lhama.errors import ConfigError, ModelNotFoundError
from lhama.model import CONFIGS, ModelArgs, build_model, get_config
from lhama.model.sizing import model_size


@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if c.published_params])
def test_parameter_count_within_one_percent_of_published(name):
    c = CONFIGS[name]
    assert abs(c.args.n_params() / c.published_params - 1) < 0.01


def test_param_count_formula_matches_a_built_model():
    for name in ("tiny-llama3", "tiny-llama2"):
        args = get_config(name).args
        for tied in (False, True):
            a = args.with_(tie_embeddings=tied)
            m = build_model(a, init="random")
            assert sum(p.numel() for p in m.parameters()) == a.n_params()


def test_published_memory_figures():
    # Llama 3.1 405B: ~810 GB at bf16, half that at FP8 (fits one 8x80GB node); 8B ~16 GB at bf16.
    s405 = model_size(CONFIGS["llama3.1-405b"].args)
    assert 800e9 < s405.weights_bytes["bf16"] < 820e9
    assert s405.weights_bytes["fp8"] < 8 * 80e9
    assert 15e9 < model_size(CONFIGS["llama3.1-8b"].args).weights_bytes["bf16"] < 17e9
    # 8B KV cache: 32 layers x 8 kv heads x 128 x 2 (k, v) x 2 bytes = 128 KiB per token.
    assert CONFIGS["llama3.1-8b"].args.kv_cache_bytes_per_token(2) == 128 * 1024


def test_bad_shapes_and_names_are_clear_errors():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=3, vocab_size=10, hidden_dim=8)
    with pytest.raises(ModelNotFoundError, match="llama3.1-8b"):
        get_config("llama9-1t")


def test_cli_info_reports_shape_and_memory():
    out = subprocess.run(
        [sys.executable, "-m", "lhama.cli", "info", "llama3.1-8b"], capture_output=True, text=True, check=True
    ).stdout
    assert "8.03B" in out and "32 query / 8 key-value" in out and "factor 8" in out and "MiB per 1K tokens" in out
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "lhama.cli", "info", "llama3.2-3b", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert data["args"]["tie_embeddings"] is True and data["parameters"] == CONFIGS["llama3.2-3b"].args.n_params()
    bad = subprocess.run([sys.executable, "-m", "lhama.cli", "info", "nope-model"], capture_output=True, text=True)
    assert bad.returncode == 2 and "neither a file" in bad.stderr and "Traceback" not in bad.stderr
