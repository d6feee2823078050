"""``--kv-cache-dtype``: on every command that builds a KV cache, onto ``EngineConfig`` for the
engine's commands, and into the cache itself (the engine's paged cache, the reference loop's
contiguous one), winning over ``LHAMA_KV_CACHE_DTYPE``."""

from __future__ import annotations

import pytest
import torch

from lhama.cli import build_parser, main
from lhama.cli.args import KV_CACHE_DTYPE_ENV, engine_config_from_args

ENGINE_COMMANDS = {
    "batch": ["batch", "in.jsonl", "out.jsonl"],
    "serve": ["serve"],
    "eval": ["eval"],
    "compare": ["compare", "--model-a", "a", "--model-b", "b"],
}
LOOP_COMMANDS = {"generate": ["generate", "hi"], "chat": ["chat"], "agent": ["agent"], "rag ask": ["rag", "ask", "q"]}
TEACHER_COMMANDS = {
    "synth": ["synth", "--topics", "t.txt", "-o", "o.jsonl"],
    "rejection-sample": ["rejection-sample", "--prompts", "p.jsonl", "--output-dir", "out"],
}


@pytest.mark.parametrize("argv", [*ENGINE_COMMANDS.values(), *LOOP_COMMANDS.values(), *TEACHER_COMMANDS.values()])
def test_every_cache_building_command_takes_the_flag(argv):
    p = build_parser()
    assert p.parse_args(argv).kv_cache_dtype == "auto"
    for value in ("float32", "bfloat16", "int8"):
        a = p.parse_args([*argv, "--kv-cache-dtype", value])
        assert a.kv_cache_dtype == value
        if argv in ENGINE_COMMANDS.values():
            assert engine_config_from_args(a).kv_cache_dtype == value


def test_a_bad_value_is_a_usage_error_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "hi", "--kv-cache-dtype", "f16"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--kv-cache-dtype" in err and "'f16'" in err and "'float32'" in err and "'bfloat16'" in err
    assert "'int8'" in err


@pytest.fixture(scope="module")
def default_model():
    from lhama.loader import load_model

    return load_model("default")


def test_the_flag_reaches_the_engines_cache_and_wins_over_the_variable(default_model, monkeypatch):
    from lhama.engine import LLMEngine

    def cache_dtype(*flags):
        a = build_parser().parse_args(["batch", "in.jsonl", "out.jsonl", "--kv-cache-gb", "0.01", *flags])
        return LLMEngine.from_loaded(default_model, engine_config_from_args(a)).cache.dtype

    monkeypatch.delenv(KV_CACHE_DTYPE_ENV, raising=False)
    assert default_model.model.dtype == torch.float32
    assert cache_dtype() == torch.bfloat16  # auto: bf16 K/V under fp32 weights on a CPU
    assert cache_dtype("--kv-cache-dtype", "float32") == torch.float32
    monkeypatch.setenv(KV_CACHE_DTYPE_ENV, "float32")
    assert cache_dtype() == torch.float32  # the variable sets auto's choice
    assert cache_dtype("--kv-cache-dtype", "bfloat16") == torch.bfloat16  # the flag wins


def test_generate_builds_its_cache_in_the_flags_dtype(monkeypatch, capsys):
    import lhama.generate.loop as loop

    made = []

    class Recording(loop.StaticKVCache):
        def __init__(self, *args, dtype, **kwargs):
            made.append(dtype)
            super().__init__(*args, dtype=dtype, **kwargs)

    monkeypatch.setattr(loop, "StaticKVCache", Recording)
    monkeypatch.setenv(KV_CACHE_DTYPE_ENV, "bfloat16")  # restored after the test, whatever main set
    argv = ["generate", "1, 2, 3,", "--max-tokens", "3", "--temperature", "0", "--kv-cache-dtype", "float32"]
    assert main(argv) == 0
    assert made == [torch.float32]  # the flag, not the variable
    assert capsys.readouterr().out.strip()


def test_generate_with_an_int8_cache_end_to_end(monkeypatch, capsys):
    """``lhama generate --kv-cache-dtype int8``: the reference loop's cache holds int8 rows with
    their scales (written by the prompt's torch path and the decode rows' C++ op), the text comes
    out, and the flag reaches the loop as an argument (the process's variable is left alone)."""
    import lhama.generate.loop as loop

    made = []

    class Recording(loop.StaticKVCache):
        def __init__(self, *args, dtype, **kwargs):
            super().__init__(*args, dtype=dtype, **kwargs)
            made.append(self)

    monkeypatch.setattr(loop, "StaticKVCache", Recording)
    monkeypatch.delenv(KV_CACHE_DTYPE_ENV, raising=False)
    argv = ["generate", "1, 2, 3,", "--max-tokens", "6", "--temperature", "0", "--kv-cache-dtype", "int8"]
    assert main(argv) == 0
    assert KV_CACHE_DTYPE_ENV not in __import__("os").environ
    (cache,) = made
    k = cache.k[0]
    assert k.dtype == torch.int8 and k.shape[-1] == 64 + 2  # head_dim values + a bf16 scale
    written = cache.pos  # prompt + 5 fed-back tokens
    scales = k[0, :written, :, 64:].contiguous().view(torch.bfloat16)
    assert (scales > 0).all() and torch.equal(k[0, written:], torch.zeros_like(k[0, written:]))
    assert capsys.readouterr().out.strip()
