"""DPO: the loss, pair tokenisation, log-probs, every reference mode, a real run on a tiny model with
the SmolLM2 tokenizer (fast), the CLI, and the must-show on SmolLM2 itself (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lhama.errors import ConfigError
from lhama.loader import load_model
from lhama.model.lora import LoraConfig, apply_lora
from lhama.peft_adapter import load_peft_adapter
from lhama.train.config import TrainConfig
from lhama.train.data import IGNORE
from lhama.train.dpo import (
    DPOConfig,
    DPOLoss,
    PairIterator,
    collate_pairs,
    dpo_losses,
    precompute_reference,
    preference_margin,
    run_dpo,
    sequence_logps,
    tokenize_pairs,
)
from lhama.train.recipe import RecipeOptions
from tests.train.smol_tiny import arithmetic_pairs, tiny_smol_folder, write_jsonl


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory, smollm2_path):
    return tiny_smol_folder(tmp_path_factory.mktemp("smol"), smollm2_path)


@pytest.fixture(scope="module")
def smol(smol_dir):
    return load_model(smol_dir, dtype=torch.float32, device="cpu")


def test_loss_formulas():
    z = torch.zeros(3)
    # Policy equal to the reference: h = 0, sigmoid loss log 2 whatever beta or smoothing.
    assert torch.allclose(dpo_losses(z, z, z, z, DPOConfig(beta=0.3)), torch.full((3,), math.log(2)))
    pc, pr = torch.tensor([-1.0]), torch.tensor([-3.0])
    rc, rr = torch.tensor([-2.0]), torch.tensor([-2.5])
    h = (-1 + 2) - (-3 + 2.5)  # 1.5
    got = dpo_losses(pc, pr, rc, rr, DPOConfig(beta=0.5))
    assert got.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.75))), rel=1e-6)
    smooth = dpo_losses(pc, pr, rc, rr, DPOConfig(beta=0.5, label_smoothing=0.2)).item()
    want = 0.8 * -F.logsigmoid(torch.tensor(0.75)).item() + 0.2 * -F.logsigmoid(torch.tensor(-0.75)).item()
    assert smooth == pytest.approx(want, rel=1e-6)
    ipo = dpo_losses(pc, pr, rc, rr, DPOConfig(beta=0.5, loss="ipo")).item()
    assert ipo == pytest.approx((h - 1.0) ** 2)


@pytest.mark.parametrize(
    "bad",
    [dict(beta=0), dict(loss="hinge"), dict(label_smoothing=0.5), dict(reference="nope"), dict(max_prompt_len=-1)],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        DPOConfig(**bad)


def test_tokenize_pairs_labels_exactly_the_answer(smol):
    fmt, tok = smol.chat_format, smol.tokenizer
    recs = [
        {"prompt": "Hi there", "chosen": "Hello!", "rejected": [{"role": "assistant", "content": "Go away."}]},
        {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
            "chosen": {"role": "assistant", "content": "4"},
            "rejected": "5",
        },
    ]
    rows, cut = tokenize_pairs(recs, fmt, 128, 0)
    assert cut == 0 and len(rows) == 2
    ids, targets = rows[0].chosen
    answer = [t for t in targets if t != IGNORE]
    text = tok.decode(answer)
    assert text.startswith("Hello!") and text.endswith("<|im_end|>")  # trained through end of turn
    prompt_len = len(fmt.encode_dialog([{"role": "user", "content": "Hi there"}]))
    assert ids[:prompt_len] == fmt.encode_dialog([{"role": "user", "content": "Hi there"}])
    assert targets[prompt_len - 1] == ids[prompt_len]  # shifted: last prompt position predicts the answer
    assert "Be brief." in tok.decode(rows[1].rejected[0])


def test_tokenize_pairs_errors_and_truncation(smol):
    fmt = smol.chat_format
    with pytest.raises(ConfigError, match="pairs.jsonl:1.*needs 'prompt', 'chosen' and 'rejected'"):
        tokenize_pairs([{"prompt": "x", "chosen": "y"}], fmt, 64, 0, source="pairs.jsonl")
    with pytest.raises(ConfigError, match="same answer"):
        tokenize_pairs([{"prompt": "x", "chosen": "y", "rejected": "y"}], fmt, 64, 0)
    with pytest.raises(ConfigError, match="prompt"):
        tokenize_pairs([{"chosen": "y", "rejected": "z"}], fmt, 64, 0)
    long = {"prompt": "word " * 200, "chosen": "yes " * 100, "rejected": "no"}
    rows, cut = tokenize_pairs([long], fmt, 64, 16)
    assert cut == 2
    for ids, targets in (rows[0].chosen, rows[0].rejected):
        assert len(ids) <= 64 and len(ids) == len(targets)
        assert any(t != IGNORE for t in targets)


def test_sequence_logps_match_a_plain_forward(smol):
    rows, _ = tokenize_pairs(arithmetic_pairs(1, 4), smol.chat_format, 128, 0)
    batch = collate_pairs(rows)
    model = smol.model.eval()
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch["chosen_tokens"], batch["chosen_labels"])
        logp = torch.log_softmax(model(batch["chosen_tokens"]), dim=-1)
    for b, row in enumerate(rows):
        ids, targets = row.chosen
        want = sum(logp[b, t, y].item() for t, y in enumerate(targets) if y != IGNORE)
        assert sums[b].item() == pytest.approx(want, rel=1e-4)
        assert counts[b].item() == sum(1 for y in targets if y != IGNORE)
    # Padding of the shorter sequence does not change its log-prob: score one row alone.
    alone, _ = sequence_logps(model, torch.tensor([rows[0].chosen[0]]), torch.tensor([rows[0].chosen[1]]))
    assert alone[0].item() == pytest.approx(sums[0].item(), rel=1e-5)


def test_every_reference_mode_starts_at_log2(smol_dir):
    """Before any update the policy is the reference, so the first loss is log 2 in every mode."""
    lm = load_model(smol_dir, dtype=torch.float32, device="cpu")
    rows, _ = tokenize_pairs(arithmetic_pairs(1, 5), lm.chat_format, 128, 0)
    batch = collate_pairs(rows)
    apply_lora(lm.model, LoraConfig(rank=4, target_modules=("all",)))
    gen = torch.Generator().manual_seed(0)
    for _name, lora in lm.model.named_modules():
        if hasattr(lora, "lora_b"):  # make the adapters non-zero: adapters_off must really switch them off
            with torch.no_grad():
                lora.lora_b.weight.copy_(torch.randn(lora.lora_b.weight.shape, generator=gen))
    ref_rows = precompute_reference(lm.model, rows, adapters_off=True)
    loss_pre, n = DPOLoss(DPOConfig(beta=1.0))(lm.model, collate_pairs(ref_rows))
    assert int(n) == 4
    # With adapters on, the policy differs from the reference (base): the loss is not log 2...
    assert abs(loss_pre.item() / 4 - math.log(2)) > 1e-3
    # ...and the adapters_off reference computed per batch gives the same loss as the precomputed one.
    loss_off, _ = DPOLoss(DPOConfig(beta=1.0, reference="adapters_off"))(lm.model, batch)
    assert loss_off.item() == pytest.approx(loss_pre.item(), rel=1e-5)
    # A policy identical to its reference: exactly log 2 per pair.
    from lhama.train.dpo import frozen_copy

    loss_copy, _ = DPOLoss(DPOConfig(beta=1.0, reference="model"), frozen_copy(lm.model))(lm.model, batch)
    assert loss_copy.item() / 4 == pytest.approx(math.log(2), abs=1e-5)


def test_pair_iterator_resumes_at_the_same_batch(smol):
    rows, _ = tokenize_pairs(arithmetic_pairs(1, 11), smol.chat_format, 128, 0)
    a = PairIterator(rows, 3, seed=5)
    for _ in range(4):
        next(a)
    b = PairIterator(rows, 3, seed=5)
    b.load_state_dict(a.state_dict())
    x, y = next(a), next(b)
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_dpo_lora_run_raises_heldout_margin(tmp_path, smol_dir):
    """The whole recipe on a tiny model: LoRA, adapters-off reference, metrics, PEFT adapter."""
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_pairs(1, 17))
    held = write_jsonl(tmp_path / "held.jsonl", arithmetic_pairs(40, 46))
    out = tmp_path / "run"
    s = run_dpo(
        RecipeOptions(model=str(smol_dir), data=(str(train),), eval_data=str(held)),
        TrainConfig(lr=5e-3, max_steps=12, batch_size=4, max_seq_len=96, output_dir=str(out), progress=False),
        LoraConfig(rank=8, alpha=16),
        DPOConfig(beta=0.1, reference="adapters_off"),
    )
    before, after = s["eval_before"]["margin"], s["eval_after"]["margin"]
    assert after > before + 1.0, (before, after)
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # step 1 starts at the reference
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["reward_accuracy"] == 1.0
    assert hist[-1]["reward_margin"] > 0
    # The adapter is PEFT-format and reproduces the trained policy's held-out margin.
    lm = load_model(smol_dir, dtype=torch.float32, device="cpu")
    load_peft_adapter(lm.model, out / "adapter")
    rows, _ = tokenize_pairs(arithmetic_pairs(40, 46), lm.chat_format, 96, 0)
    assert preference_margin(lm.model, rows)["margin"] == pytest.approx(after, rel=1e-4)


def test_cli_finetune_dpo_with_config_file(tmp_path, smol_dir, capsys):
    """``lhama finetune --recipe dpo`` through the real argument parser and command (in-process:
    a subprocess would spend most of its time importing torch; rejection-sample covers that)."""
    from lhama.cli import main

    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_pairs(1, 9))
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(
        f"model: {smol_dir}\ndata: {train}\nmax_steps: 3\nbatch_size: 4\nmax_seq_len: 96\n"
        f"lr: 0.001\nref_model: {smol_dir}\ndpo:\n  beta: 0.2\n  reference: precompute\n"
    )
    assert (
        main(
            [
                "finetune",
                "--recipe",
                "dpo",
                "--config",
                str(cfg),
                "--output-dir",
                str(tmp_path / "out"),
                "--no-progress",
                "--dpo-loss",
                "ipo",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["recipe"] == "dpo" and summary["steps"] == 3 and summary["pairs"] == 8
    # The separate reference is the same weights as the starting policy, so step 1 is at the IPO
    # loss of h = 0: (1 / (2 beta))^2.
    first = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx((1 / 0.4) ** 2, rel=1e-4)
    assert summary["dpo"] == {
        "beta": 0.2,
        "loss": "ipo",
        "label_smoothing": 0.0,
        "reference": "precompute",
        "max_prompt_len": 0,
    }
    assert list(Path(summary["model_out"]).glob("*.safetensors"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {smol_dir}\ndata: {train}\ndpo:\n  betta: 0.2\n")
    assert main(["finetune", "--recipe", "dpo", "--config", str(bad), "--output-dir", str(tmp_path / "bad")]) == 2
    assert "betta" in capsys.readouterr().err


@pytest.mark.slow
def test_dpo_on_smollm2_raises_margin_on_heldout_pairs(tmp_path, smollm2_path):
    """Must-show (docs/training.md): LoRA DPO on the real SmolLM2 raises log π(chosen) − log π(rejected)
    on held-out pairs it never saw."""
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_pairs(1, 33))
    held = write_jsonl(tmp_path / "held.jsonl", arithmetic_pairs(60, 76))
    s = run_dpo(
        RecipeOptions(model=str(smollm2_path), data=(str(train),), eval_data=str(held)),
        TrainConfig(
            lr=2e-4,
            max_steps=16,
            batch_size=4,
            max_seq_len=96,
            warmup_steps=2,
            output_dir=str(tmp_path / "run"),
            progress=False,
        ),
        LoraConfig(rank=8, alpha=16),
        DPOConfig(beta=0.1, reference="adapters_off"),
    )
    print(json.dumps({k: s[k] for k in ("eval_before", "eval_after", "final_loss", "steps")}))
    assert s["eval_after"]["margin"] > s["eval_before"]["margin"] + 1.0
    assert s["eval_after"]["accuracy"] >= s["eval_before"]["accuracy"]
