"""``lhama finetune`` end to end: LoRA SFT of the real default model (adapter, merged GGUF export,
``--lora`` at load), full SFT and continued pretraining on a tiny config, config files and bad
input."""

from __future__ import annotations

import json

import pytest
import torch

from lhama.cli import build_parser, main

from .conftest import write_chat_jsonl


def _finetune(capsys, *argv) -> dict:
    rc = main(["finetune", "--no-progress", *map(str, argv)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_lora_sft_of_default_model_then_chat_with_the_adapter(smollm2_path, tmp_path, capsys):
    from lhama.loader import load_model
    from lhama.peft_adapter import load_peft_adapter

    data = write_chat_jsonl(tmp_path / "train.jsonl", 6)
    out = tmp_path / "run"
    s = _finetune(
        capsys,
        "--recipe",
        "lora",
        "--model",
        smollm2_path,
        "--data",
        data,
        "--eval-data",
        data,
        "--output-dir",
        out,
        "--max-steps",
        2,
        "--batch-size",
        2,
        "--max-seq-len",
        64,
        "--lr",
        3e-3,
        "--lora-rank",
        4,
        "--lora-target",
        "q_proj",
        "--lora-target",
        "v_proj",
    )
    assert s["steps"] == 2 and s["recipe"] == "lora"
    assert s["eval_loss_after"] < s["eval_loss_before"]  # it learned (evaluated on its own data here)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["target_modules"] == ["q_proj", "v_proj"] and cfg["peft_type"] == "LORA"
    assert (out / "loss.png").is_file() and (out / "summary.json").is_file()

    # --lora merges the adapter at load: same logits as the unmerged adapter, different from base.
    tokens = torch.tensor([[1, 2, 3, 400, 500, 600]])
    merged = load_model(smollm2_path, lora=out / "adapter", device="cpu")
    plain = load_model(smollm2_path, dtype=torch.float32, device="cpu")  # LoRA attaches to float linears
    with torch.no_grad():
        base_logits = plain.model(tokens)
        load_peft_adapter(plain.model, out / "adapter")
        unmerged = plain.model(tokens)
        got = merged.model(tokens)
    torch.testing.assert_close(got, unmerged, rtol=1e-3, atol=5e-3)  # fp32 rounding of W + BA
    assert (got - base_logits).abs().max() > 1e-3
    del plain, merged

    assert (
        main(
            [
                "generate",
                "What is 2 plus 3?",
                "--chat",
                "--model",
                str(smollm2_path),
                "--lora",
                str(out / "adapter"),
                "--temperature",
                "0",
                "--max-tokens",
                "4",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip()
    # chat and serve take the same flag.
    assert build_parser().parse_args(["serve", "--lora", "A"]).lora == ["A"]
    assert build_parser().parse_args(["chat", "--lora", "A"]).lora == ["A"]


def test_full_sft_and_pretrain_on_a_tiny_config(tmp_path, capsys):
    from lhama.loader import load_model

    data = write_chat_jsonl(tmp_path / "train.jsonl", 12)
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(
        f"recipe: sft\nmodel: tiny-llama3\ndata: {data}\nlr: 1.0e-3\nmax_steps: 9\nbatch_size: 2\nmax_seq_len: 64\n"
    )
    s = _finetune(capsys, "--config", cfg_file, "--max-steps", 2, "--output-dir", tmp_path / "sft")
    assert s["steps"] == 2 and s["recipe"] == "sft"  # the flag overrides the file
    lm = load_model(tmp_path / "sft" / "model", device="cpu")  # an HF folder with the tokenizer
    assert lm.args.dim == 64 and lm.tokenizer.vocab_size > 0

    # LoRA with merged export: the GGUF holds base + BA, the adapter loads onto the named config.
    s = _finetune(
        capsys,
        "--recipe",
        "lora",
        "--model",
        "tiny-llama3",
        "--data",
        data,
        "--max-steps",
        2,
        "--batch-size",
        2,
        "--max-seq-len",
        64,
        "--lr",
        1e-2,
        "--lora-target",
        "all",
        "--export",
        "gguf",
        "--gguf-type",
        "f32",
        "--output-dir",
        tmp_path / "lora",
    )
    from lhama.checkpoints import read_checkpoint

    exported = read_checkpoint(tmp_path / "lora" / "model.gguf").state_dict
    adapted = load_model("tiny-llama3", lora=tmp_path / "lora" / "adapter", device="cpu").model.state_dict()
    base = load_model("tiny-llama3", device="cpu").model.state_dict()
    assert not torch.equal(exported["layers.0.feed_forward.w2.weight"], base["layers.0.feed_forward.w2.weight"])
    for k, v in exported.items():
        torch.testing.assert_close(v, adapted[k], rtol=1e-5, atol=1e-6, msg=k)

    # `lhama chat --lora`: the chat command's own loading path, then its session loop.
    import io

    from lhama.cli.args import load_model_from_args, sampling_params_from_args
    from lhama.cli.chat import run_chat

    a = build_parser().parse_args(
        [
            "chat",
            "--model",
            "tiny-llama3",
            "--lora",
            str(tmp_path / "lora" / "adapter"),
            "--temperature",
            "0",
            "--max-tokens",
            "3",
        ]
    )
    chat_lm = load_model_from_args(a)
    torch.testing.assert_close(
        chat_lm.model.state_dict()["layers.0.feed_forward.w2.weight"],
        exported["layers.0.feed_forward.w2.weight"],
        rtol=1e-5,
        atol=1e-6,
    )
    shown = io.StringIO()
    assert run_chat(chat_lm, sampling_params_from_args(a), stdin=io.StringIO("hello\n/exit\n"), stdout=shown) == 0
    assert shown.getvalue().strip()
    assert main(["generate", "x", "--model", "tiny-llama3", "--lora", str(tmp_path)]) == 2
    assert "adapter_config.json is missing" in capsys.readouterr().err

    text = tmp_path / "corpus.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    s = _finetune(
        capsys,
        "--recipe",
        "pretrain",
        "--model",
        "tiny-llama3",
        "--data",
        text,
        "--max-steps",
        2,
        "--batch-size",
        2,
        "--max-seq-len",
        32,
        "--output-dir",
        tmp_path / "cpt",
    )
    assert s["recipe"] == "pretrain" and s["train_rows"] >= 10  # one long document split into rows


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "lora", "--model", "tiny-llama3"], "no training data"),
        (["--recipe", "sft", "--lora-rank", "4", "--data", "x.jsonl"], "use --recipe lora"),
        (["--data", "missing.jsonl", "--model", "tiny-llama3"], "does not exist"),
        (["--data", "x.jsonl", "--lr", "-1"], "lr must be positive"),
    ],
)
def test_bad_options_fail_with_a_message(tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--output-dir", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_unknown_config_keys_are_rejected(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"lerning_rate": 1e-3, "data": "x.jsonl"}))
    assert main(["finetune", "--config", str(f)]) == 2
    assert "unknown option(s) lerning_rate" in capsys.readouterr().err
