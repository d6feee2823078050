"""One source for each default: the flags restate the defaults of the dataclasses they fill
(the parsers may not import torch to read them), and the docs restate the flags. These tests
fail when one side changes without the other."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import yaml

from lhama.cli import build_parser
from lhama.cli.args import ENGINE_DEFAULTS, SAMPLING_DEFAULTS, SamplingDefaults

DOCS = Path(__file__).resolve().parents[2] / "docs"
SHARED_SAMPLING = ("chat", "generate", "agent", ("rag", "ask"))


def _parser(*path):
    p = build_parser()
    for name in path:
        p = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    return p


def test_sampling_defaults_are_sampling_params_fields_and_shared_by_every_command():
    from lhama.generate import SamplingParams

    names = {f.name for f in fields(SamplingParams)}
    assert {f.name for f in fields(SamplingDefaults)} <= names
    SamplingParams(**{f.name: getattr(SAMPLING_DEFAULTS, f.name) for f in fields(SamplingDefaults)})  # valid
    for cmd in SHARED_SAMPLING:
        p = _parser(*((cmd,) if isinstance(cmd, str) else cmd))
        for f in fields(SamplingDefaults):
            flag = "--" + f.name.replace("_", "-")
            action = next((a for a in p._actions if flag in a.option_strings), None)
            if cmd == "agent" and action is None:
                continue  # the agent takes only max_tokens, temperature, top_p and seed
            assert action is not None, (cmd, flag)
            assert action.default == getattr(SAMPLING_DEFAULTS, f.name), (cmd, flag)
    agent = {a.dest: a.default for a in _parser("agent")._actions}
    assert {k: agent[k] for k in ("max_tokens", "temperature", "top_p", "seed")} == {
        k: getattr(SAMPLING_DEFAULTS, k) for k in ("max_tokens", "temperature", "top_p", "seed")
    }


def test_generation_doc_table_is_the_code():
    text = (DOCS / "generation.md").read_text(encoding="utf-8")
    section = text[text.index("### Sampling defaults") :]
    rows = dict(re.findall(r"^\| `--([a-z-]+)` \| ([^|]+?) \|$", section, flags=re.MULTILINE))
    code = {f.name.replace("_", "-"): getattr(SAMPLING_DEFAULTS, f.name) for f in fields(SamplingDefaults)}
    assert set(rows) == set(code)
    for flag, value in code.items():
        assert type(value)(rows[flag]) == value, flag


def test_openai_requests_take_the_shared_defaults_as_documented():
    from lhama.openai.requests import RequestLimits

    assert RequestLimits().defaults == SAMPLING_DEFAULTS.with_(seed=None)
    text = " ".join((DOCS / "generation.md").read_text(encoding="utf-8").split())
    assert "only a missing `seed` differs" in text and f"`max_completion_tokens` {SAMPLING_DEFAULTS.max_tokens}" in text


def test_engine_flags_default_to_engine_config():
    from lhama.engine.config import EngineConfig

    d = EngineConfig()
    for f in fields(ENGINE_DEFAULTS):
        assert getattr(ENGINE_DEFAULTS, f.name) == getattr(d, f.name), f.name
    a = build_parser().parse_args(["batch", "in.jsonl", "out.jsonl"])
    from lhama.cli.args import engine_config_from_args

    assert engine_config_from_args(a) == d


def test_serve_flags_default_to_server_and_engine_config():
    from lhama.cli.serve import configs_from_args
    from lhama.engine.config import EngineConfig
    from lhama.server.config import ServerConfig

    server, engine = configs_from_args(build_parser().parse_args(["serve", "--api-key", ""]))
    assert server == ServerConfig() and engine == EngineConfig()


def test_plan_formats_are_the_priced_ones():
    from lhama.cli.plan import KV_FORMATS, WEIGHT_FORMATS
    from lhama.model.sizing import WEIGHT_BYTES
    from lhama.parallel.plan import KV_BYTES

    assert WEIGHT_FORMATS == tuple(WEIGHT_BYTES) and KV_FORMATS == tuple(KV_BYTES)


def test_training_doc_yaml_shows_the_config_defaults():
    from lhama.model.lora import LoraConfig
    from lhama.train.config import TrainConfig

    text = (DOCS / "training.md").read_text(encoding="utf-8")
    section = text[text.index("## Configuration") :]
    block = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL).group(1)
    doc = yaml.safe_load(block)
    train = {f.name: f.default for f in fields(TrainConfig)}
    shown = {k: v for k, v in doc.items() if k in train}
    assert {"lr", "warmup_steps", "grad_accum", "batch_size", "max_steps"} <= set(shown)
    assert shown == {k: train[k] for k in shown}
    lora = {f.name: f.default for f in fields(LoraConfig)}
    doc_lora = dict(doc["lora"])
    doc_lora["target_modules"] = tuple(doc_lora["target_modules"])
    assert doc_lora == lora  # rank, alpha, dropout and targets: all of them, as the code has them
    assert doc["recipe"] in _recipe_choices()


def _recipe_choices():
    p = _parser("finetune")
    return next(a for a in p._actions if "--recipe" in a.option_strings).choices


def test_finetune_recipe_help_lists_every_recipe():
    p = _parser("finetune")
    action = next(a for a in p._actions if "--recipe" in a.option_strings)
    assert set(action.choices) == {"sft", "lora", "pretrain", "dpo"}
    assert all(name in action.help for name in action.choices)
