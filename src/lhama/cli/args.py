"""Argument groups shared by several commands, declared once, and the functions that turn the
parsed flags into the objects they configure (a loaded model, ``SamplingParams``,
``EngineConfig``, ``QuantConfig``).

Building a parser must stay cheap (``lhama --help`` in well under a second), so this module
imports only the standard library; torch and the stack are imported by the ``*_from_args``
functions, which run when a command runs. The flag defaults below restate the defaults of
the dataclasses they fill; tests/cli/test_defaults.py checks that they agree.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from lhama.sampling_defaults import SAMPLING_DEFAULTS, SamplingDefaults

DTYPES = ("float32", "bfloat16", "float16")
# What --kv-cache-dtype offers (EngineConfig.kv_cache_dtype, lhama.model.kv_cache_dtype): "auto" is
# bf16 K/V under a float32 model on a CPU, else the model's dtype, or LHAMA_KV_CACHE_DTYPE if set;
# "int8" stores int8 values with a bf16 scale per token and KV head (about half of bf16's bytes).
KV_CACHE_DTYPES = ("auto", "float32", "bfloat16", "int8")
KV_CACHE_DTYPE_ENV = "LHAMA_KV_CACHE_DTYPE"


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help line ends with its default, unless the line states one already or
    the default is "not given" (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        not_given = default is None or default is False or default is argparse.SUPPRESS or default == []
        if "(default" in text or "default:" in text or not_given or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """The parser class of every ``lhama`` command (subparsers inherit it)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


# -- model ---------------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        "-m",
        default="default",
        help="GGUF file, Hugging Face folder, Meta folder, config name (random weights) or 'default' "
        "(the shipped SmolLM2-135M)",
    )
    g.add_argument("--tokenizer", help="tokenizer file/folder when the checkpoint has none (e.g. a named config)")
    g.add_argument("--chat-format", help="override the chat format: llama3, llama2, jinja, or a .jinja file")
    g.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        help="float weights in this dtype (default: a quantized GGUF stays quantized on a CPU; "
        "else float32 on a CPU, bfloat16 on CUDA); with a quantized file it asks for the dequantized model",
    )
    g.add_argument("--max-seq-len", type=int, help="cap the context window in tokens (default: the model's)")
    g.add_argument(
        "--lora",
        action="append",
        default=[],
        help="PEFT LoRA adapter folder to apply to --model (merged in at load); with serve and batch, "
        "NAME=PATH serves the adapter per request (per line) as model NAME instead (repeatable)",
    )
    g.add_argument(
        "--quantize",
        choices=["int8", "int4", "fp8"],
        help="weight-only quantization at load (see docs/quantization.md)",
    )
    g.add_argument("--quant-group-size", type=int, choices=[32, 64, 128], default=32, help="int4: weights per scale")


def add_kv_cache_dtype_arg(g) -> None:
    """``--kv-cache-dtype``, on every command that builds a KV cache (engine or reference loop)."""
    g.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default="auto",
        help="what K/V are stored in: auto = bfloat16 under float32 weights on a CPU (attention still "
        "computes in float32), else the weights' dtype; int8 = int8 values and a bfloat16 scale per token "
        f"and KV head, about half of bfloat16's memory (docs/engine.md); {KV_CACHE_DTYPE_ENV} sets "
        "auto's choice, the flag wins over it (default: auto)",
    )


def apply_kv_cache_dtype(a) -> None:
    """Make ``--kv-cache-dtype`` the process's choice through ``LHAMA_KV_CACHE_DTYPE`` (the flag,
    when given, wins over the variable), for the commands whose cache is built out of the CLI's
    reach (``agent``'s engine, ``rag ask``'s loop); the others pass the flag on
    (``stream_text(kv_cache_dtype=)``, ``EngineConfig.kv_cache_dtype``)."""
    import os

    value = getattr(a, "kv_cache_dtype", "auto")
    if value and value != "auto":
        os.environ[KV_CACHE_DTYPE_ENV] = value


def quant_config_from_args(a):
    """``QuantConfig`` for ``--quantize``, or None."""
    if not getattr(a, "quantize", None):
        return None
    from lhama.quant import QuantConfig

    return QuantConfig(a.quantize, group_size=a.quant_group_size)


def split_lora_flags(values) -> tuple[str | None, list[tuple[str, str]]]:
    """``--lora`` values: the one folder merged at load, and the NAME=PATH adapters served per request."""
    from lhama.errors import ConfigError

    merged, named = [], []
    for v in values or ():
        name, sep, path = v.partition("=")
        if sep and name and not any(c in name for c in "/\\") and path:
            named.append((name, path))
        else:
            merged.append(v)
    if len(merged) > 1:
        raise ConfigError(
            "only one --lora folder can be merged at load; serve several per request with lhama serve --lora NAME=PATH"
        )
    return (merged[0] if merged else None), named


def load_model_from_args(a, *, named_lora_ok: bool = False):
    """The model the ``add_model_args`` flags name, loaded (``lhama.loader.load_model``)."""
    import torch

    from lhama.errors import ConfigError
    from lhama.loader import load_model

    merged, named = split_lora_flags(getattr(a, "lora", None))
    if named and not named_lora_ok:
        raise ConfigError(
            f"--lora {named[0][0]}=... (an adapter served per request) is for lhama serve and batch; here "
            "give the adapter folder alone to merge it"
        )
    dtype = getattr(torch, a.dtype) if a.dtype else None
    return load_model(
        a.model,
        dtype=dtype,
        device=a.device,
        chat_format=a.chat_format,
        tokenizer=a.tokenizer,
        max_seq_len=a.max_seq_len,
        lora=merged,
        quantize=quant_config_from_args(a),
    )


# -- sampling ------------------------------------------------------------------------------------

SAMPLING_HELP = {
    "max_tokens": "most tokens to generate (fewer when the context runs out)",
    "temperature": "softmax temperature; 0 = greedy",
    "top_p": "nucleus sampling: keep the smallest set of tokens whose probability reaches this (1 = off)",
    "top_k": "keep the k most likely tokens (0 = off)",
    "min_p": "drop tokens below this fraction of the top token's probability (0 = off)",
    "repetition_penalty": "CTRL-style penalty on tokens of the prompt and output (1 = off)",
    "frequency_penalty": "OpenAI-style penalty growing with a token's count in the output",
    "presence_penalty": "OpenAI-style penalty on tokens already in the output",
    "seed": "random seed of the sampler",
}


def add_sampling_args(
    p: argparse.ArgumentParser,
    only: tuple[str, ...] | None = None,
    defaults: SamplingDefaults = SAMPLING_DEFAULTS,
    title: str = "sampling (docs/generation.md)",
    stop: bool = True,
):
    """Flags for the ``SamplingDefaults`` fields (all, or ``only`` these) plus ``--stop`` (when
    all are asked for and ``stop``)."""
    g = p.add_argument_group(title)
    for f in fields(SamplingDefaults):
        if only is not None and f.name not in only:
            continue
        kind = float if isinstance(getattr(SAMPLING_DEFAULTS, f.name), float) else int
        value = getattr(defaults, f.name)
        g.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            default=value,
            help=SAMPLING_HELP[f.name] + (" (default: a fresh one per request)" if value is None else ""),
        )
    if only is None and stop:
        g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    return g


def sampling_defaults_from_args(a, base: SamplingDefaults = SAMPLING_DEFAULTS) -> SamplingDefaults:
    """``SamplingDefaults`` with the ``add_sampling_args`` flags present in ``a``."""
    return base.with_(**{f.name: getattr(a, f.name) for f in fields(SamplingDefaults) if hasattr(a, f.name)})


def sampling_params_from_args(a):
    """``SamplingParams`` from the ``add_sampling_args`` flags (and ``--logprobs N`` if present)."""
    from lhama.generate import SamplingParams

    values = {f.name: getattr(a, f.name) for f in fields(SamplingDefaults) if hasattr(a, f.name)}
    top = getattr(a, "logprobs", 0) or 0
    return SamplingParams(**values, stop=tuple(getattr(a, "stop", ())), logprobs=bool(top), top_logprobs=top)


# -- speculative decoding ------------------------------------------------------------------------
def add_speculative_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculative decoding (docs/scaling.md)")
    g.add_argument(
        "--draft-model",
        help="draft: self:int4 (an int4 copy of the model), a model sharing the "
        "tokenizer, self:N (the model's first N layers), self:int4:N, or ngram "
        "(prompt lookup)",
    )
    g.add_argument(
        "--num-speculative-tokens",
        type=int,
        default=None,
        help="tokens the draft proposes per step (default: 6 for self:int4/int8, else 4)",
    )


def speculation_from_args(a, lm):
    if not getattr(a, "draft_model", None):
        return None
    from lhama.generate.speculative import load_speculation

    return load_speculation(a.draft_model, lm, a.num_speculative_tokens)


# -- engine --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineDefaults:
    """``EngineConfig``'s defaults for the fields the engine flags set."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 256
    block_size: int = 16


ENGINE_DEFAULTS = EngineDefaults()


def add_engine_args(p: argparse.ArgumentParser):
    """The engine flags, in a group the caller may add more to (serve adds --tp)."""
    g = p.add_argument_group("engine (docs/engine.md)")
    d = ENGINE_DEFAULTS
    g.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="sequences run in one step")
    g.add_argument(
        "--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens, help="tokens computed in one step"
    )
    g.add_argument("--kv-cache-gb", type=float, help="KV-cache budget in GiB (default: see docs/engine.md)")
    g.add_argument(
        "--kv-cache-fraction",
        type=float,
        help="KV-cache budget as a fraction of available memory (default: 0.25 on a CPU, 0.9 on a "
        "GPU; never more than --max-num-seqs full contexts)",
    )
    g.add_argument("--block-size", type=int, default=d.block_size, help="tokens per KV-cache block")
    add_kv_cache_dtype_arg(g)
    g.add_argument("--max-model-len", type=int, help="cap on prompt + output tokens per request")
    g.add_argument("--no-prefix-caching", action="store_true", help="do not reuse KV blocks of shared prefixes")
    g.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    g.add_argument(
        "--enforce-eager",
        action="store_true",
        help="CUDA: launch every decode kernel from Python instead of replaying CUDA graphs",
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="batch-invariant results: a request's tokens and logprobs do not depend on the other "
        "requests or on prefix-cache hits (slower; see docs/server.md)",
    )
    return g


def engine_config_from_args(a):
    from lhama.engine.config import EngineConfig

    return EngineConfig(
        max_num_seqs=a.max_num_seqs,
        max_num_batched_tokens=a.max_num_batched_tokens,
        kv_cache_gb=a.kv_cache_gb,
        kv_cache_fraction=a.kv_cache_fraction,
        block_size=a.block_size,
        max_model_len=a.max_model_len,
        enable_prefix_caching=not a.no_prefix_caching,
        compile=a.compile,
        cuda_graphs=not a.enforce_eager,
        deterministic=a.deterministic,
        kv_cache_dtype=getattr(a, "kv_cache_dtype", "auto"),
    )
