"""The `lhama` CLI end to end on the real default model, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def lhama(*args, input=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "lhama.cli", *args],
        check=False,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_generate_chat_json_with_logprobs():
    r = lhama(
        "generate",
        "What is the capital of France? Answer in one word.",
        "--chat",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--json",
        "--logprobs",
        "2",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "Paris" in out["text"]
    assert 0 < out["completion_tokens"] <= 12 and out["prompt_tokens"] > 10
    assert all(lp["logprob"] <= 0 and len(lp["top"]) == 2 for lp in out["logprobs"])


def test_generate_streams_raw_completion_and_respects_stop():
    r = lhama("generate", "1, 2, 3, 4, 5,", "--temperature", "0", "--max-tokens", "20", "--stop", "9")
    assert r.returncode == 0, r.stderr
    assert "6" in r.stdout and "9" not in r.stdout


def test_chat_multi_turn_with_commands():
    lines = [
        "My name is Ada. Reply with one short sentence.",
        "What is my name?",
        "/reset",
        "/system You are a pirate.",
        "/bogus",
        "/exit",
    ]
    script = "".join(line + "\n" for line in lines)
    r = lhama("chat", "--temperature", "0", "--max-tokens", "24", input=script)
    assert r.returncode == 0, r.stderr
    assert "Ada" in r.stdout  # the second turn sees the first
    assert "(conversation cleared)" in r.stdout
    assert "system prompt set" in r.stdout
    assert "unknown command /bogus" in r.stdout


def test_bad_model_and_bad_sampling_are_clear_errors(tmp_path, capsys):
    # One case as a user meets it (a process: exit status 2, no traceback on stderr) ...
    r = lhama("generate", "hi", "--model", str(tmp_path / "missing.gguf"))
    assert r.returncode == 2 and "neither a file" in r.stderr and "Traceback" not in r.stderr
    # ... the others through the same entry point in this process (no second torch import):
    # main() returns 2 instead of raising, so nothing would reach a traceback.
    from lhama.cli import main

    assert main(["generate", "hi", "--temperature", "-1"]) == 2
    assert "temperature" in capsys.readouterr().err
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    assert main(["generate", "hi", "--model", str(junk)]) == 2
    assert "junk.gguf" in capsys.readouterr().err


def test_named_config_runs_big_model_code_path():
    r = lhama("generate", "hello", "--model", "tiny-llama3", "--temperature", "0", "--max-tokens", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["completion_tokens"] == 5


# Slow job: a whole conversion to a float HF folder and a chat from it (~18 s); convert is covered fast in test_file_modes.
@pytest.mark.slow
def test_convert_default_to_hf_folder_then_chat_from_it(tmp_path):
    out = tmp_path / "smol-hf"
    r = lhama("convert", "default", str(out), "--to", "safetensors")
    assert r.returncode == 0, r.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    r = lhama(
        "generate",
        "What is the capital of France? Answer in one word.",
        "--chat",
        "--model",
        str(out),
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in json.loads(r.stdout)["text"]
    r = lhama("info", str(out))
    assert r.returncode == 0 and "134.52M" in r.stdout


def test_batch_command_answers_every_line(tmp_path):
    lines = [
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "default",
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 8,
                "temperature": 0,
            },
        },
        {
            "custom_id": "b",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "default", "prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0},
        },
        {
            "custom_id": "bad",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "default", "messages": [{"role": "user", "content": "x"}], "temperature": -3},
        },
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    r = lhama("batch", str(src), str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    got = {json.loads(x)["custom_id"]: json.loads(x) for x in out.read_text().splitlines()}
    assert set(got) == {"a", "b", "bad"}
    assert got["a"]["response"]["status_code"] == 200
    assert got["b"]["response"]["body"]["choices"][0]["text"]
    assert got["bad"]["error"] is not None or got["bad"]["response"]["status_code"] == 400
