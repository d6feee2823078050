"""A bandwidth-bound workload beside the default file: random weights with a real model's full
shapes (every layer, the whole vocabulary), quantized by llama.cpp's own quantizer.

``make_files("llama3.2-1b", cache_dir)`` writes ``<shape>.f16.gguf`` (random N(0, 0.02) weights,
norms 1, streamed tensor by tensor so no whole model is ever in memory), then asks llama.cpp
(``llama_model_quantize``, in a child process: native code we do not own never takes the run
down) for ``<shape>.q4_0.gguf`` and ``<shape>.q8_0.gguf``. Files are reused when present.

The file has no vocabulary (``tokenizer.ggml.model = none``): the benchmark hands token ids to
every system, drawn at random from the model's vocabulary. lhama's loader wants a tokenizer and a
chat format anyway (``tokenizer_for``): the default model's and a one-line template; neither is
used by the measurements.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SHAPES = ("llama3.2-1b", "llama3.2-3b")
# llama.cpp's file type ids (enum llama_ftype) for the copies it writes.
QUANTS = {"q4_0": 2, "q8_0": 7}
CONTEXT = 8192  # what the file declares: the benchmark needs < 1K tokens; 128K would only size caches


def write_random_f16(shape: str, path: Path, seed: int = 0) -> Path:
    import gguf
    import numpy as np

    from lhama.checkpoints.gguf import ARCH, GGUF_NAMES, ROPE_FREQS, rope_divisors
    from lhama.checkpoints.layout import expected_shapes
    from lhama.model import get_config

    args = get_config(shape).args.with_(max_seq_len=CONTEXT)
    Q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(None, ARCH)
    p = f"{ARCH}."
    w.add_string("general.name", f"random {shape} (lhama bench)")
    for key, value in (
        ("context_length", args.max_seq_len),
        ("embedding_length", args.dim),
        ("block_count", args.n_layers),
        ("feed_forward_length", args.hidden_dim),
        ("attention.head_count", args.n_heads),
        ("attention.head_count_kv", args.n_kv_heads),
        ("vocab_size", args.vocab_size),
        ("rope.dimension_count", args.head_dim),
    ):
        w.add_uint32(p + key, value)
    w.add_float32(p + "rope.freq_base", float(args.rope_theta))
    w.add_float32(p + "attention.layer_norm_rms_epsilon", float(args.norm_eps))
    w.add_uint32("general.file_type", int(gguf.LlamaFileType.MOSTLY_F16))
    w.add_string("tokenizer.ggml.model", "none")

    plan: list[tuple[str, tuple[int, ...], object]] = []
    if args.rope_scaling is not None:
        plan.append((ROPE_FREQS, (args.head_dim // 2,), Q.F32))
    for name, shp in expected_shapes(args).items():
        plan.append((name, shp, Q.F32 if len(shp) == 1 else Q.F16))
    for name, shp, q in plan:
        theirs = name if name == ROPE_FREQS else GGUF_NAMES.to_theirs(name)
        np_dtype = np.float32 if q == Q.F32 else np.float16
        nbytes = int(np.prod(shp)) * np.dtype(np_dtype).itemsize
        w.add_tensor_info(theirs, shp, np.dtype(np_dtype), nbytes, raw_dtype=q)

    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name, shp, _q in plan:
            if name == ROPE_FREQS:
                a = rope_divisors(args).float().numpy()
            elif len(shp) == 1:
                a = np.ones(shp, np.float32)
            else:  # row by row block: bounded memory for the 128K x 3K embedding
                a = np.empty(shp, np.float16)
                step = max(1, (1 << 24) // shp[1])
                for r in range(0, shp[0], step):
                    a[r : r + step] = rng.standard_normal((min(step, shp[0] - r), shp[1]), np.float32) * 0.02
            w.write_tensor_data(a)
        w.close()
        os.replace(tmp, path)
    finally:
        w.close()
        tmp.unlink(missing_ok=True)
    return path


_QUANTIZE = """import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def quantize_with_llama_cpp(src: Path, out: Path, ftype: int, threads: int) -> Path:
    tmp = out.with_name(out.name + ".partial")
    r = subprocess.run(
        [sys.executable, "-c", _QUANTIZE, str(src), str(tmp), str(ftype), str(threads)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize {src.name} -> {out.name} failed ({r.returncode}): {r.stderr[-2000:]}")
    os.replace(tmp, out)
    return out


def make_files(
    shape: str, cache_dir: Path, quants: tuple[str, ...] = tuple(QUANTS), threads: int = 2, log=print
) -> dict[str, Path]:
    """{quant: path} for ``shape``, writing what is not in ``cache_dir`` yet."""
    src = cache_dir / f"{shape}.random.f16.gguf"
    out = {q: cache_dir / f"{shape}.random.{q}.gguf" for q in quants}
    if not src.exists() and not all(p.exists() for p in out.values()):
        log(f"writing {src} (random weights, full {shape} shapes)")
        write_random_f16(shape, src)
    for q, path in out.items():
        if not path.exists():
            log(f"llama.cpp quantizes {src.name} -> {path.name}")
            quantize_with_llama_cpp(src, path, QUANTS[q], threads)
    return out


def tokenizer_for(cache_dir: Path) -> tuple[str, str]:
    """(tokenizer, chat format) for ``load_model`` on a vocabulary-less file."""
    from lhama.loader import default_model_path

    template = cache_dir / "plain.jinja"
    if not template.exists():
        template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    return str(default_model_path()), str(template)


def random_ids(vocab_size: int, n: int, seed: int = 0) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(3, vocab_size) for _ in range(n)]
