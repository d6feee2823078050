"""`lhama serve` flags map onto ServerConfig and EngineConfig (no model needed)."""

from __future__ import annotations

import pytest

from lhama.cli import build_parser
from lhama.cli.serve import configs_from_args
from lhama.errors import ConfigError


def parse(*argv):
    return build_parser(only="serve").parse_args(["serve", *argv])


def test_flags_reach_both_configs(tmp_path):
    a = parse(
        "--model",
        "default",
        "--port",
        "0",
        "--api-key",
        "k",
        "--max-queue",
        "3",
        "--max-num-seqs",
        "5",
        "--served-model-name",
        "smol",
        "--served-model-name",
        "alias",
        "--data-dir",
        str(tmp_path),
        "--kv-cache-gb",
        "0.5",
        "--max-body-mb",
        "1",
    )
    server, engine = configs_from_args(a)
    assert (server.port, server.api_key, server.max_in_flight) == (0, "k", 8)
    assert server.served_model_names == ("smol", "alias") and server.data_dir == tmp_path
    assert server.max_body_bytes == 2**20
    assert (engine.max_num_seqs, engine.kv_cache_gb) == (5, 0.5)
    assert engine.cuda_graphs  # on by default (used on CUDA devices only)
    assert a.func.__name__ == "run_serve"
    assert not configs_from_args(parse("--model", "default", "--enforce-eager"))[1].cuda_graphs


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError):
        configs_from_args(parse("--max-queue", "-1"))
    with pytest.raises(ConfigError):
        configs_from_args(parse("--port", "70000"))


def test_sampling_flags_set_what_omitted_request_fields_take():
    from lhama.errors import SamplingError
    from lhama.openai.requests import CHAT_URL, parse_request, sampling_params
    from lhama.sampling_defaults import REQUEST_SAMPLING_DEFAULTS

    assert configs_from_args(parse())[0].sampling == REQUEST_SAMPLING_DEFAULTS  # seed: fresh per request
    server, _ = configs_from_args(parse("--temperature", "0", "--max-tokens", "7", "--seed", "3"))
    assert server.sampling == REQUEST_SAMPLING_DEFAULTS.with_(temperature=0.0, max_tokens=7, seed=3)
    # the server's RequestLimits carry them (lhama.server.state); an omitted field takes them
    from lhama.openai.requests import RequestLimits

    req = parse_request(CHAT_URL, {"messages": [{"role": "user", "content": "hi"}]}, default_model="m")
    params = sampling_params(req, 5, context=100, limits=RequestLimits(defaults=server.sampling))
    assert (params.temperature, params.max_tokens, params.seed, params.top_p) == (0.0, 7, 3, 0.9)
    with pytest.raises(SamplingError):
        configs_from_args(parse("--temperature", "-1"))
