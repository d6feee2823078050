"""Hostile sizes in checkpoint metadata (issue 17, F3): a params.json with n_layers 10**9, a GGUF
whose llama.block_count got a 4-byte edit, an HF config.json with huge dims. Each must fail with
a one-line CheckpointError before anything is sized from the claim: ``lhama info`` and loading,
in a fresh process whose peak RSS is compared with the same process before the call."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import pytest

from lhama.checkpoints import write_checkpoint
from lhama.model import build_model

# What the child process may add to its peak RSS while refusing the file (the claims would
# need terabytes); imports are done before the baseline is taken.
MAX_GROWTH_MB = 100

# VmHWM: this process's own peak (getrusage's ru_maxrss survives exec: a child of a big pytest
# process would report the parent's size and hide any growth).
PROBE = textwrap.dedent("""
    import json, sys
    def peak_kb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    import lhama.checkpoints.gguf, lhama.checkpoints.hf, lhama.checkpoints.meta, lhama.loader
    import lhama.tokenizer
    from lhama.errors import CheckpointError
    how, path = sys.argv[1], sys.argv[2]
    before = peak_kb()
    try:
        if how == "read_args":
            from lhama.checkpoints import read_args
            read_args(path)
        else:
            lhama.loader.load_model(path)
        result = {"error": None}
    except CheckpointError as e:
        result = {"error": str(e), "type": type(e).__name__}
    result["growth_kb"] = peak_kb() - before
    print(json.dumps(result))
""")


def _probe(how: str, path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, how, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def tiny(tiny_llama3_args):
    return tiny_llama3_args, build_model(tiny_llama3_args, init="random").state_dict()


def _meta_hostile(tmp_path, tiny):
    args, sd = tiny
    folder = write_checkpoint(sd, args, tmp_path / "meta", fmt="meta")
    params = json.loads((folder / "params.json").read_text())
    params.update(n_layers=10**9, dim=8192, n_heads=64, n_kv_heads=8, vocab_size=128256)
    (folder / "params.json").write_text(json.dumps(params))
    return folder, "n_layers"


def _gguf_hostile(tmp_path, tiny):
    args, sd = tiny
    path = write_checkpoint(sd, args, tmp_path / "m.gguf", fmt="gguf", gguf_type="f32")
    data = bytearray(path.read_bytes())
    key = b"llama.block_count"
    at = data.index(key) + len(key)
    assert struct.unpack_from("<I", data, at)[0] == 4  # value type UINT32
    assert struct.unpack_from("<I", data, at + 4)[0] == args.n_layers
    struct.pack_into("<I", data, at + 4, 10**9)  # the 4-byte edit
    path.write_bytes(bytes(data))
    return path, "n_layers"


def _hf_hostile(tmp_path, tiny):
    args, sd = tiny
    folder = write_checkpoint(sd, args, tmp_path / "hf", fmt="safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(
        hidden_size=2**30,
        intermediate_size=2**32,
        num_attention_heads=2**10,
        num_key_value_heads=2**10,
        head_dim=2**20,
        num_hidden_layers=10**6,
        max_position_embeddings=2**40,
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, "beyond the sane limit"


HOSTILE = {"meta-params.json": _meta_hostile, "gguf-block_count": _gguf_hostile, "hf-config.json": _hf_hostile}


@pytest.mark.parametrize("how", ["read_args", "load_model"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_sizes_fail_fast_and_small(tmp_path, tiny, kind, how):
    path, fragment = HOSTILE[kind](tmp_path, tiny)
    result = _probe(how, path)
    assert result["type"] == "CheckpointError", result
    assert fragment in result["error"] and "\n" not in result["error"], result
    assert result["growth_kb"] < MAX_GROWTH_MB * 1024, result


def test_lhama_info_refuses_hostile_params_in_one_line(tmp_path, tiny):
    path, _ = _meta_hostile(tmp_path, tiny)
    out = subprocess.run(
        [sys.executable, "-m", "lhama.cli", "info", str(path)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "n_layers = 1,000,000,000" in lines[0], out.stderr
    assert "Traceback" not in out.stderr
