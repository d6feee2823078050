"""``lhama generate`` / ``chat`` / ``info`` end the process without the interpreter's teardown
(``lhama.cli.runner.exit_now``): the output is complete, the exit code is the command's, the
``atexit`` handlers run, and a thread a normal exit would wait for is waited for."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# A random-weight float model: the GGUF block kernels are never needed (nor built, when their
# sources just changed).
ENV = {**os.environ, "LHAMA_GGML_ISA": "reference"}

# The program as the `lhama` script runs it (main() with no argv), plus two witnesses: a global
# whose __del__ runs only in the interpreter's teardown, and an atexit handler.
PROGRAM = """
import atexit, os, sys, threading, time
class Witness:
    def __del__(self, write=os.write):
        write(2, b"teardown ran\\n")
witness = Witness()
atexit.register(lambda: print("atexit ran", file=sys.stderr, flush=True))
import lhama.cli
if sys.argv.pop(1) == "thread":  # a thread still at work when the command is done
    done, run = threading.Event(), lhama.cli.run_command
    lhama.cli.run_command = lambda *a: (run(*a), done.set())[0]
    threading.Thread(target=lambda: (done.wait(), time.sleep(0.5), print("thread done", flush=True))).start()
sys.exit(lhama.cli.main())
"""


def program(*args):
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, *args], check=False, capture_output=True, text=True, timeout=300, env=ENV
    )


def test_generate_exits_fast_with_its_whole_output():
    argv = ["generate", "one two three", "--model", "tiny-llama3", "--max-tokens", "6", "--temperature", "0"]
    r = program("-", *argv, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # the whole object, printed last, came through
    assert out["completion_tokens"] == 6 and out["finish_reason"] == "length"
    assert "atexit ran" in r.stderr and "teardown ran" not in r.stderr


def test_an_error_keeps_its_exit_code(tmp_path):
    r = program("-", "generate", "hi", "--model", str(tmp_path / "missing.gguf"))
    assert r.returncode == 2
    assert r.stderr.splitlines()[0].startswith("error: ") and "missing.gguf" in r.stderr
    assert "atexit ran" in r.stderr and "teardown ran" not in r.stderr


def test_a_running_non_daemon_thread_gets_the_normal_exit():
    r = program("thread", "info", "tiny-llama3")
    assert r.returncode == 0, r.stderr
    assert "thread done" in r.stdout and "layers" in r.stdout
    assert "atexit ran" in r.stderr and "teardown ran" in r.stderr
