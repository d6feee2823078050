"""What a user sees when something is wrong: one line, exit 2, before any model loads (the
model named here does not exist, so an error about it would mean the check came too late);
and a closed pipe ends a command quietly."""

from __future__ import annotations

import socket
import subprocess
import sys

LHAMA = [sys.executable, "-m", "lhama.cli"]


def lhama(*args, timeout=120):
    return subprocess.run([*LHAMA, *map(str, args)], check=False, capture_output=True, text=True, timeout=timeout)


def test_batch_with_a_missing_input_file(tmp_path):
    r = lhama("batch", tmp_path / "nope.jsonl", tmp_path / "out.jsonl", "--model", tmp_path / "missing.gguf")
    assert r.returncode == 2
    assert (
        r.stderr.strip() == f"error: batch input {tmp_path / 'nope.jsonl'} does not exist; give an OpenAI batch "
        "JSONL file"
    )
    assert not (tmp_path / "out.jsonl").exists()
    r = lhama("batch", tmp_path, tmp_path / "out.jsonl", "--model", tmp_path / "missing.gguf")
    assert r.returncode == 2 and "is a folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_serve_on_a_busy_port(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = lhama("serve", "--host", "127.0.0.1", "--port", port, "--model", tmp_path / "missing.gguf")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}: "), r.stderr
    assert "--port" in lines[0] and "missing.gguf" not in lines[0]


def test_generate_into_a_closed_pipe_is_quiet():
    """`lhama generate ... | head -c1`: the reader leaves after one byte; no traceback."""
    p = subprocess.Popen(
        [*LHAMA, "generate", "one two three", "--model", "tiny-llama3", "--max-tokens", "400", "--temperature", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout.read(1)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141  # 128 + SIGPIPE, as a shell reports a writer whose reader left
    assert err == ""


def test_generate_piped_into_head_in_a_shell():
    r = subprocess.run(
        f"{sys.executable} -m lhama.cli generate 'one two' --model tiny-llama3 --max-tokens 400 | head -c1",
        shell=True,
        check=False,
        capture_output=True,
        timeout=300,
    )
    err = r.stderr.decode()
    assert len(r.stdout) == 1 and "Traceback" not in err and "BrokenPipe" not in err, err
