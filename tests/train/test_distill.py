"""Knowledge distillation: the loss, chunking, student configs, a real run on tiny models with the
SmolLM2 tokenizer (fast), the CLI, and the must-show with SmolLM2 as the teacher (slow)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lhama.errors import ConfigError
from lhama.loader import load_model
from lhama.model import build_model
from lhama.train.config import TrainConfig
from lhama.train.data import collate, load_chat_examples, make_rows
from lhama.train.distill import DistillConfig, DistillLoss, kd_token_losses, run_distill, student_args
from lhama.train.recipe import RecipeOptions
from tests.train.smol_tiny import tiny_smol_args, tiny_smol_folder, write_jsonl


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, smollm2_path):
    return tiny_smol_folder(tmp_path_factory.mktemp("smol"), smollm2_path)


def _chat_rows(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Count from {i} to {i + 4}."},
                {"role": "assistant", "content": " ".join(str(j) for j in range(i, i + 5))},
            ]
        }
        for i in range(start, start + n)
    ]


def test_kd_loss_terms():
    torch.manual_seed(0)
    s, t = torch.randn(6, 50), torch.randn(6, 50)
    y = torch.randint(0, 50, (6,))
    # kd_ratio 0: plain cross-entropy; identical distributions: KL 0.
    assert torch.allclose(
        kd_token_losses(s, t, y, DistillConfig(kd_ratio=0.0)), F.cross_entropy(s, y, reduction="none")
    )
    assert torch.allclose(kd_token_losses(s, s, y, DistillConfig(kd_ratio=1.0)), torch.zeros(6), atol=1e-6)
    # kd_ratio 1 at temperature T: T² · KL(teacher_T || student_T), as torch's kl_div computes it.
    T = 2.0
    got = kd_token_losses(s, t, y, DistillConfig(kd_ratio=1.0, temperature=T))
    want = (
        F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="none").sum(-1) * T * T
    )
    assert torch.allclose(got, want, atol=1e-5)
    mix = kd_token_losses(s, t, y, DistillConfig(kd_ratio=0.3))
    one = kd_token_losses(s, t, y, DistillConfig(kd_ratio=1.0))
    zero = kd_token_losses(s, t, y, DistillConfig(kd_ratio=0.0))
    assert torch.allclose(mix, 0.3 * one + 0.7 * zero, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(kd_ratio=1.5), dict(chunk_tokens=0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        DistillConfig(**bad)


def test_chunked_loss_equals_unchunked_with_same_gradients(tmp_path, teacher_dir):
    lm = load_model(teacher_dir, dtype=torch.float32, device="cpu")
    rows = make_rows(
        load_chat_examples(write_jsonl(tmp_path / "d.jsonl", _chat_rows(4)), lm.chat_format), 64, pack=True
    )
    batch = collate(rows)
    results = []
    for chunk in (7, 10_000):
        student = build_model(tiny_smol_args(16), init="random", seed=3)
        loss, n = DistillLoss(lm.model, DistillConfig(kd_ratio=0.5, temperature=2.0, chunk_tokens=chunk))(
            student, batch
        )
        loss.backward()
        results.append((loss.item(), int(n), student.layers[0].attention.wq.weight.grad.clone()))
    (l1, n1, g1), (l2, n2, g2) = results
    assert n1 == n2 > 7 and l1 == pytest.approx(l2, rel=1e-5)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_student_specs(tmp_path):
    teacher = tiny_smol_args(64)
    a30 = student_args("smollm2-30m", teacher.with_(vocab_size=49152))
    assert 25e6 < a30.n_params() < 35e6 and a30.vocab_size == 49152 and a30.tie_embeddings
    cfg = tmp_path / "student.json"
    cfg.write_text(json.dumps({"dim": 48, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "hidden_dim": 96}))
    s = student_args(str(cfg), teacher, 128)
    assert (s.dim, s.n_layers, s.vocab_size, s.max_seq_len) == (48, 3, 49152, 128)
    cfg.write_text(json.dumps({"dim": 48, "layers": 3}))
    with pytest.raises(ConfigError, match="unknown model option.*layers"):
        student_args(str(cfg), teacher)
    with pytest.raises(ConfigError, match="neither a preset"):
        student_args("no-such-student", teacher)


def test_distill_run_and_baseline(tmp_path, teacher_dir):
    """The recipe end to end on tiny models: KD and the teacher-free baseline from the same init,
    held-out perplexity reported, the student written as a loadable model with the tokenizer."""
    data = write_jsonl(tmp_path / "train.jsonl", _chat_rows(24))
    held = write_jsonl(tmp_path / "held.jsonl", _chat_rows(6, start=100))
    student = tmp_path / "student.json"
    student.write_text(json.dumps({"dim": 16, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "hidden_dim": 32}))
    common = dict(lr=3e-3, max_steps=4, batch_size=4, max_seq_len=64, progress=False)
    kd = run_distill(
        RecipeOptions(model=str(teacher_dir), data=(str(data),), eval_data=str(held)),
        TrainConfig(output_dir=str(tmp_path / "kd"), **common),
        DistillConfig(kd_ratio=0.7, temperature=2.0),
        student=str(student),
    )
    base = run_distill(
        RecipeOptions(model=str(teacher_dir), data=(str(data),), eval_data=str(held)),
        TrainConfig(output_dir=str(tmp_path / "base"), **common),
        DistillConfig(kd_ratio=0.0),
        student=str(student),
    )
    assert kd["eval_ppl_student_before"] == pytest.approx(base["eval_ppl_student_before"])  # same init
    assert kd["eval_ppl_student_after"] < kd["eval_ppl_student_before"]
    assert kd["final_loss"] != base["final_loss"]  # the teacher term changes training
    hist = [json.loads(line) for line in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["loss"] < hist[0]["loss"]
    out = load_model(kd["model_out"], dtype=torch.float32, device="cpu")
    assert out.args.dim == 16 and out.tokenizer.encode("hello") == load_model(teacher_dir).tokenizer.encode("hello")
    assert math.isfinite(kd["eval_ppl_teacher"])


def test_cli_distill(tmp_path, teacher_dir, capsys):
    """``lhama distill`` through the real parser and command (in-process), GGUF export."""
    from lhama.cli import main

    data = write_jsonl(tmp_path / "train.jsonl", _chat_rows(8))
    student = tmp_path / "student.yaml"
    student.write_text("dim: 16\nn_layers: 1\nn_heads: 2\nn_kv_heads: 1\nhidden_dim: 32\n")
    assert (
        main(
            [
                "distill",
                "--teacher",
                str(teacher_dir),
                "--student",
                str(student),
                "--data",
                str(data),
                "--max-steps",
                "2",
                "--batch-size",
                "2",
                "--max-seq-len",
                "64",
                "--kd-ratio",
                "0.9",
                "--temperature",
                "1.5",
                "--export",
                "gguf",
                "--output-dir",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 0
    )
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["steps"] == 2 and s["distill"]["kd_ratio"] == 0.9 and s["model_out"].endswith(".gguf")
    assert load_model(s["model_out"]).args.dim == 16
    assert (
        main(
            [
                "distill",
                "--teacher",
                str(teacher_dir),
                "--student",
                "nope",
                "--data",
                str(data),
                "--output-dir",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "neither a preset" in capsys.readouterr().err


@pytest.mark.slow
def test_distilled_student_beats_baseline_on_teacher_text(tmp_path, smollm2_path):
    """Must-show (docs/training.md): SmolLM2 writes the data (greedy answers to varied prompts);
    a ~7M-parameter student trained with the teacher's logits reaches lower held-out perplexity on
    the teacher's text than the same student (same init, data, steps) trained without them."""
    from lhama.engine import EngineConfig, LLMEngine
    from lhama.generate import SamplingParams

    teacher = load_model(smollm2_path, dtype=torch.float32, device="cpu")
    topics = [
        "dogs",
        "the ocean",
        "coffee",
        "rain",
        "music",
        "trees",
        "bread",
        "the moon",
        "trains",
        "winter",
        "cats",
        "rivers",
    ]
    asks = [
        "Write two sentences about {}.",
        "Give one fun fact about {}.",
        "Describe {} to a child.",
        "Why do people like {}?",
    ]
    prompts = [a.format(t) for t in topics for a in asks]
    engine = LLMEngine.from_loaded(teacher, EngineConfig(kv_cache_gb=0.5))
    ids = [teacher.chat_format.encode_dialog([{"role": "user", "content": p}]) for p in prompts]
    res = engine.generate(ids, SamplingParams(max_tokens=48, temperature=0.0))
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r.completions[0].text}]}
        for p, r in zip(prompts, res)
    ]
    del engine
    held = [r for i, r in enumerate(rows) if i % 8 == 7]
    train = [r for i, r in enumerate(rows) if i % 8 != 7]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "held.jsonl", held)
    common = dict(lr=3e-3, epochs=5, batch_size=8, max_seq_len=128, warmup_steps=3, progress=False)
    out = {}
    for name, ratio in (("kd", 0.9), ("baseline", 0.0)):
        out[name] = run_distill(
            RecipeOptions(
                model=str(smollm2_path), data=(str(tmp_path / "train.jsonl"),), eval_data=str(tmp_path / "held.jsonl")
            ),
            TrainConfig(output_dir=str(tmp_path / name), **common),
            DistillConfig(kd_ratio=ratio, temperature=1.0),
            student="smollm2-8m",
        )
    print(
        json.dumps(
            {
                k: {
                    m: v[m]
                    for m in (
                        "eval_ppl_student_before",
                        "eval_ppl_student_after",
                        "eval_ppl_teacher",
                        "steps",
                        "student_params",
                        "tokens_per_s",
                    )
                }
                for k, v in out.items()
            }
        )
    )
    assert out["kd"]["eval_ppl_student_after"] < out["baseline"]["eval_ppl_student_after"]
