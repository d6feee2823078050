"""The shared Trainer on a tiny random model: it learns, accumulation and packing are exact,
the schedule is warmup + cosine, and it writes metrics, a loss curve and atomic checkpoints."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from lhama.errors import ConfigError
from lhama.train import BatchIterator, TrainConfig, Trainer, causal_lm_loss, collate, make_rows
from lhama.train.checkpointing import latest_checkpoint
from lhama.train.trainer import lr_factor

from .conftest import synthetic_examples


def _cfg(tmp_path, **kw):
    base = dict(
        lr=3e-3,
        max_steps=4,
        batch_size=4,
        max_seq_len=32,
        output_dir=str(tmp_path / "run"),
        progress=False,
        warmup_steps=0,
        max_grad_norm=0.0,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_loss_goes_down_and_outputs_are_written(tiny_model, synthetic_rows, tmp_path):
    cfg = _cfg(tmp_path, max_steps=30, lr=1e-2, warmup_steps=3, save_every=10, keep_checkpoints=2)
    res = Trainer(tiny_model, causal_lm_loss, BatchIterator(synthetic_rows, 4), cfg).train()
    losses = [h["loss"] for h in res.history]
    assert res.steps == 30 and len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    out = tmp_path / "run"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 31))
    assert all(m["tokens_per_s"] > 0 and m["tokens"] > 0 for m in lines)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts == ["step-000020", "step-000030"]  # keep_checkpoints=2 pruned step 10
    assert latest_checkpoint(out / "checkpoints").name == "step-000030"
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_grad_accumulation_equals_one_big_batch(tiny_model, synthetic_rows, tmp_path):
    """4 rows at once == 2 micro-batches of 2: the step is a token-weighted mean either way."""
    a, b = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    ra = Trainer(
        a, causal_lm_loss, BatchIterator(synthetic_rows, 4, shuffle=False), _cfg(tmp_path / "a", max_steps=3)
    ).train()
    rb = Trainer(
        b,
        causal_lm_loss,
        BatchIterator(synthetic_rows, 2, shuffle=False),
        _cfg(tmp_path / "b", max_steps=3, batch_size=2, grad_accum=2),
    ).train()
    assert [h["loss"] for h in ra.history] == pytest.approx([h["loss"] for h in rb.history], rel=1e-5)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_packing_does_not_change_the_loss(tiny_model):
    """Packed rows (several examples, attention kept within each) give the same summed loss as
    one example per row."""
    examples = synthetic_examples(10, seed=3)
    packed = make_rows(examples, 64, pack=True)
    single = make_rows(examples, 64, pack=False)
    assert len(packed) < len(single) == 10
    tiny_model.eval()
    with torch.no_grad():
        lp, np_ = causal_lm_loss(tiny_model, collate(packed))
        ls, ns = causal_lm_loss(tiny_model, collate(single))
    assert int(np_) == int(ns) == sum(sum(1 for x in e.labels[1:] if x != -100) for e in examples)
    torch.testing.assert_close(lp, ls, rtol=1e-5, atol=1e-4)


def test_positions_restart_per_packed_example():
    rows = make_rows(synthetic_examples(6, seed=1), 40, pack=True)
    batch = collate(rows[:1])
    docs, pos = batch["doc_ids"][0], batch["positions"][0]
    for d in set(docs.tolist()) - {-1}:
        assert pos[docs == d].tolist() == list(range(int((docs == d).sum())))
    # No target crosses an example boundary.
    boundary = (docs[1:] != docs[:-1]).nonzero().flatten()
    assert all(batch["labels"][0, i] == -100 for i in boundary.tolist())


def test_gradient_checkpointing_gives_the_same_step(tiny_model, synthetic_rows, tmp_path):
    a, b = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    ra = Trainer(a, causal_lm_loss, BatchIterator(synthetic_rows, 4), _cfg(tmp_path / "a", max_steps=2)).train()
    rb = Trainer(
        b, causal_lm_loss, BatchIterator(synthetic_rows, 4), _cfg(tmp_path / "b", max_steps=2, grad_checkpointing=True)
    ).train()
    assert b.gradient_checkpointing
    assert [h["loss"] for h in ra.history] == pytest.approx([h["loss"] for h in rb.history], rel=1e-5)


def test_bf16_autocast_trains(tiny_model, synthetic_rows, tmp_path):
    res = Trainer(
        tiny_model, causal_lm_loss, BatchIterator(synthetic_rows, 4), _cfg(tmp_path, max_steps=2, dtype="bf16")
    ).train()
    assert all(math.isfinite(h["loss"]) for h in res.history)
    assert tiny_model.tok_embeddings.weight.dtype == torch.float32  # weights stay fp32 under autocast


def test_frozen_params_do_not_move(tiny_model, synthetic_rows, tmp_path):
    before = tiny_model.tok_embeddings.weight.detach().clone()
    params = [p for n, p in tiny_model.named_parameters() if n.startswith("layers.0.")]
    Trainer(tiny_model, causal_lm_loss, BatchIterator(synthetic_rows, 4), _cfg(tmp_path, max_steps=2), params).train()
    assert torch.equal(tiny_model.tok_embeddings.weight, before)


def test_bad_configs_are_typed_errors(tiny_model, synthetic_rows, tmp_path):
    with pytest.raises(ConfigError, match="lr must be positive"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="dtype"):
        TrainConfig(dtype="fp8")
    with pytest.raises(ConfigError, match="no training rows"):
        BatchIterator([], 2)
    with pytest.raises(ConfigError, match="no parameters"):
        Trainer(tiny_model, causal_lm_loss, BatchIterator(synthetic_rows, 4), _cfg(tmp_path), params=[])


def test_resume_in_place_continues_and_without_checkpoint_starts_fresh(tiny_model, synthetic_rows, tmp_path):
    cfg = _cfg(tmp_path, max_steps=2)
    t = Trainer(copy.deepcopy(tiny_model), causal_lm_loss, BatchIterator(synthetic_rows, 4), cfg)
    assert not t.resume()  # nothing saved yet
    t.train(resume=True)
    longer = Trainer(
        copy.deepcopy(tiny_model), causal_lm_loss, BatchIterator(synthetic_rows, 4), cfg.with_(max_steps=4)
    )
    res = longer.train(resume=True)  # picks up the finished 2-step run and adds two steps
    assert [h["step"] for h in res.history] == [1, 2, 3, 4]
