"""Broken, truncated, mismatched and malicious files: each must give a CheckpointError that
names the file (and the tensor where there is one), never a library traceback or code execution."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import gguf
import pytest
import torch
from safetensors.torch import save_file

from lhama.checkpoints import detect_format, load_weights, read_checkpoint, read_gguf_metadata, write_checkpoint
from lhama.errors import CheckpointError, ModelNotFoundError
from lhama.model import build_model


def _raises(path, *fragments) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg or str(Path(path).name) in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return info.value


@pytest.fixture
def args(tiny_llama3_args):
    return tiny_llama3_args


@pytest.fixture
def sd(args):
    return build_model(args, init="random").state_dict()


@pytest.fixture
def good_gguf(tmp_path, sd, args):
    return write_checkpoint(sd, args, tmp_path / "good.gguf", fmt="gguf", gguf_type="f32")


def _rewrite_gguf(src: Path, dst: Path, *, drop=(), reshape=None, metadata=None, add=None) -> Path:
    """Copy a GGUF with the gguf library, dropping/reshaping/adding tensors or overriding metadata."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, "llama")
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        if metadata and key in metadata:
            value, vtype = metadata[key]
        else:
            value = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(key, value, vtype)
    for name, array in (add or {}).items():
        w.add_tensor(name, array)
    for t in r.tensors:
        if t.name in drop:
            continue
        data = t.data.copy()
        if reshape and t.name in reshape:
            data = data.reshape(reshape[t.name])
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


# -- GGUF ------------------------------------------------------------------------------------
def test_gguf_wrong_magic(tmp_path):
    p = tmp_path / "fake.gguf"
    p.write_bytes(b"GGML" + os.urandom(200))
    _raises(p, "not a GGUF file")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        read_gguf_metadata(p)


def test_gguf_truncated_in_tensor_data_names_tensor(good_gguf, tmp_path):
    data = good_gguf.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[: int(len(data) * 0.6)])
    err = _raises(p, "truncated")
    assert err.tensor and err.tensor.startswith(("blk.", "output")), err


def test_gguf_truncated_in_header(good_gguf, tmp_path):
    p = tmp_path / "cut.gguf"
    p.write_bytes(good_gguf.read_bytes()[:300])
    _raises(p, "GGUF")


def test_gguf_missing_tensor(good_gguf, tmp_path):
    p = _rewrite_gguf(good_gguf, tmp_path / "missing.gguf", drop={"blk.1.ffn_up.weight"})
    err = _raises(p, "missing", "blk.1.ffn_up.weight")
    assert err.tensor == "blk.1.ffn_up.weight"


def test_gguf_shape_mismatch(good_gguf, tmp_path, args):
    # same bytes, different shape: 192x64 read as 64x192
    p = _rewrite_gguf(
        good_gguf, tmp_path / "shape.gguf", reshape={"blk.0.ffn_gate.weight": (args.dim, args.hidden_dim)}
    )
    _raises(p, "blk.0.ffn_gate.weight", "shape")


def test_gguf_unknown_tensor(good_gguf, tmp_path):
    p = _rewrite_gguf(good_gguf, tmp_path / "extra.gguf", add={"blk.0.mystery.weight": torch.zeros(4).numpy()})
    _raises(p, "unexpected", "blk.0.mystery.weight")


def test_gguf_garbage_metadata(good_gguf, tmp_path):
    p = _rewrite_gguf(
        good_gguf, tmp_path / "meta.gguf", metadata={"llama.block_count": ("thirty", gguf.GGUFValueType.STRING)}
    )
    _raises(p, "llama.block_count", "thirty")


def test_gguf_wrong_architecture(good_gguf, tmp_path):
    p = _rewrite_gguf(good_gguf, tmp_path / "arch.gguf", metadata={"general.name": ("x", gguf.GGUFValueType.STRING)})
    # architecture is written by GGUFWriter("llama"); flip it via raw bytes of the value
    data = p.read_bytes().replace(b"llama", b"mamba", 1)
    p.write_bytes(data)
    _raises(p, "mamba")


def test_gguf_rope_freqs_not_llama31(good_gguf, tmp_path):
    r = gguf.GGUFReader(good_gguf)
    freqs = next(t for t in r.tensors if t.name == "rope_freqs.weight").data.copy()
    freqs[0::2], freqs[1::2] = 1.0, 3.0  # positive, but not the Llama 3.1 curve (not even monotone)
    p = _rewrite_gguf(good_gguf, tmp_path / "freqs.gguf", drop={"rope_freqs.weight"}, add={"rope_freqs.weight": freqs})
    _raises(p, "rope_freqs.weight", "Llama 3.1")


# -- safetensors (HF) ------------------------------------------------------------------------
@pytest.fixture
def good_hf(tmp_path, sd, args):
    return write_checkpoint(sd, args, tmp_path / "hf", fmt="safetensors")


def test_safetensors_garbage(good_hf):
    f = good_hf / "model.safetensors"
    f.write_bytes(os.urandom(1000))
    _raises(f, "safetensors")
    _raises(good_hf, "model.safetensors")


def test_safetensors_truncated_names_tensor(good_hf):
    f = good_hf / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    err = _raises(good_hf, "truncated")
    assert err.tensor and err.tensor.startswith(("model.", "lm_head")), err


def test_safetensors_missing_tensor(good_hf):
    from safetensors.torch import load_file

    tensors = load_file(good_hf / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, good_hf / "model.safetensors", metadata={"format": "pt"})
    err = _raises(good_hf, "missing", "model.layers.1.mlp.up_proj.weight")
    assert err.tensor == "model.layers.1.mlp.up_proj.weight"


def test_safetensors_shape_mismatch(good_hf):
    from safetensors.torch import load_file

    tensors = load_file(good_hf / "model.safetensors")
    tensors["model.layers.0.self_attn.v_proj.weight"] = torch.zeros(7, 64)
    save_file(tensors, good_hf / "model.safetensors", metadata={"format": "pt"})
    _raises(good_hf, "model.layers.0.self_attn.v_proj.weight", "(7, 64)")


def test_hf_config_garbage(good_hf):
    (good_hf / "config.json").write_text("{ not json")
    _raises(good_hf, "config.json", "JSON")
    cfg = {"model_type": "llama", "hidden_size": "big", "num_hidden_layers": 2}
    (good_hf / "config.json").write_text(json.dumps(cfg))
    _raises(good_hf, "hidden_size", "big")


def test_hf_index_points_to_missing_shard(good_hf):
    (good_hf / "model.safetensors").rename(good_hf / "model-00001-of-00002.safetensors")
    (good_hf / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "model.norm.weight": "model-00002-of-00002.safetensors",
                    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                }
            }
        )
    )
    _raises(good_hf, "model-00002-of-00002.safetensors", "missing")


# -- Meta .pth -------------------------------------------------------------------------------
class _RunsCode:
    """Pickles as a call to os.system: what a malicious checkpoint looks like."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def good_meta(tmp_path, sd, args):
    return write_checkpoint(sd, args, tmp_path / "meta", fmt="meta")


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_pth_that_runs_code_is_refused(good_meta, tmp_path, sd, container):
    marker = tmp_path / "PWNED"
    shard = good_meta / "consolidated.00.pth"
    payload = dict(sd)
    payload["tok_embeddings.weight"] = _RunsCode(marker)
    if container == "torch.save":
        torch.save(payload, shard)
    else:
        shard.write_bytes(pickle.dumps(payload, protocol=2))  # legacy torch format
    err = _raises(good_meta, "consolidated.00.pth", "unsafe", "execute code")
    assert not marker.exists(), "the pickle's code ran"
    assert "system" in str(err)  # says which callable it wanted
    assert "weights_only=False" not in str(err)  # and does not advise turning the protection off


def test_pth_truncated(good_meta):
    shard = good_meta / "consolidated.00.pth"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    _raises(good_meta, "consolidated.00.pth", "truncated or corrupt")


def test_pth_non_tensor_entry(good_meta, sd):
    payload = dict(sd)
    payload["layers.0.ffn_norm.weight"] = "not a tensor"
    torch.save(payload, good_meta / "consolidated.00.pth")
    err = _raises(good_meta, "layers.0.ffn_norm.weight", "not a tensor")
    assert err.tensor == "layers.0.ffn_norm.weight"


def test_pth_not_a_dict(good_meta):
    torch.save([torch.zeros(2)], good_meta / "consolidated.00.pth")
    _raises(good_meta, "dict of tensors")


def test_pth_missing_and_misshapen(good_meta, sd):
    payload = dict(sd)
    del payload["layers.1.attention.wo.weight"]
    torch.save(payload, good_meta / "consolidated.00.pth")
    _raises(good_meta, "layers.1.attention.wo.weight", "missing")
    payload = dict(sd)
    payload["norm.weight"] = torch.ones(3)
    torch.save(payload, good_meta / "consolidated.00.pth")
    _raises(good_meta, "norm.weight", "(3,)")


def test_meta_params_garbage(good_meta):
    (good_meta / "params.json").write_text('{"dim": "wide"}')
    _raises(good_meta, "params.json", "dim")


# -- detection and load_weights ----------------------------------------------------------------
def test_detect_format_errors(tmp_path):
    with pytest.raises(ModelNotFoundError):
        detect_format(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        detect_format(tmp_path / "empty")
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="config.json"):
        detect_format(tmp_path / "w.safetensors")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="unrecognised"):
        detect_format(tmp_path / "readme.txt")


def test_load_weights_checks_every_tensor(args, sd):
    model = build_model(args)
    bad = dict(sd)
    del bad["layers.0.attention.wq.weight"]
    with pytest.raises(CheckpointError, match=r"layers\.0\.attention\.wq\.weight.*missing"):
        load_weights(model, bad, "ckpt.bin")
    bad = dict(sd, **{"layers.0.attention.wq.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match=r"ckpt\.bin.*layers\.0\.attention\.wq\.weight.*\(3, 3\)"):
        load_weights(model, bad, "ckpt.bin")
    bad = dict(sd, **{"layers.9.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"layers\.9\.extra\.weight.*unexpected"):
        load_weights(model, bad, "ckpt.bin")
    load_weights(model, sd)  # and the intact dict loads, sharing storage with it
    assert model.norm.weight.data_ptr() == sd["norm.weight"].data_ptr()
