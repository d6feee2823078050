"""Offline batch files: OpenAI line format in and out, per-line errors, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from lhama.engine import EngineConfig, LLMEngine
from lhama.openai.batch import run_batch
from lhama.openai.engine_batch import EngineExecutor, run_batch_file

HERE = Path(__file__).parent
SRC = HERE.parent.parent / "src"


def line(cid, url="/v1/chat/completions", **body):
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


def chat(text, **kw):
    return dict(messages=[{"role": "system", "content": "w1 w2 w3"}, {"role": "user", "content": text}], **kw)


def read_out(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_formats_and_per_line_errors(tiny, tmp_path):
    lines = [
        line("chat-1", **chat("w5 w6 w7", max_tokens=6, temperature=0)),
        line("chat-n2", **chat("w9", max_tokens=5, temperature=1.0, seed=3, n=2, logprobs=True, top_logprobs=2)),
        line("cmpl-1", "/v1/completions", prompt="w1 w2 w3 w4", max_tokens=4, temperature=0, logprobs=2),
        line("cmpl-multi", "/v1/completions", prompt=[[1, 2, 3], [4, 5]], max_tokens=3, temperature=0, n=2),
        line("chat-stop", **chat("w5 w6 w7", max_tokens=6, temperature=0, stop=["w"])),
        '{"custom_id": "broken", "body": ',  # bad JSON
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": chat("w1")}),  # no custom_id
        line("bad-url", "/v1/embeddings", input="x"),
        line("bad-temp", **chat("w1", temperature=-1)),
        line("too-long", "/v1/completions", prompt=list(range(200)), max_tokens=100),
        line("bad-msgs", messages=[{"role": "wizard", "content": "hi"}]),
        line("chat-1", **chat("w1")),  # duplicate custom_id
        "",
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    eng = LLMEngine.from_loaded(tiny, EngineConfig(num_blocks=256, block_size=4))
    s = run_batch_file(tiny, src, out, engine=eng, progress=False)
    assert (s.total, s.already_done, s.succeeded, s.failed) == (12, 0, 5, 7)
    entries = read_out(out)
    assert len(entries) == 12
    by = {}
    for e in entries:
        by.setdefault(e["custom_id"], []).append(e)
    ok = {e["custom_id"]: e for e in entries if e["error"] is None}
    assert set(ok) == {"chat-1", "chat-n2", "cmpl-1", "cmpl-multi", "chat-stop"}
    body = ok["chat-1"]["response"]["body"]
    assert ok["chat-1"]["response"]["status_code"] == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    n2 = ok["chat-n2"]["response"]["body"]["choices"]
    assert [c["index"] for c in n2] == [0, 1]
    assert all(len(t["top_logprobs"]) == 2 for c in n2 for t in c["logprobs"]["content"])
    cm = ok["cmpl-1"]["response"]["body"]
    assert cm["object"] == "text_completion" and len(cm["choices"][0]["logprobs"]["tokens"]) >= 1
    assert len(ok["cmpl-multi"]["response"]["body"]["choices"]) == 4
    stop_choice = ok["chat-stop"]["response"]["body"]["choices"][0]
    assert stop_choice["finish_reason"] == "stop" and stop_choice["message"]["content"] == ""
    errors = {e["custom_id"]: e["error"] for e in entries if e["error"]}
    assert errors[None]["code"] in ("invalid_json", "invalid_request")
    assert {e["error"]["line"] for e in entries if e["custom_id"] is None} == {6, 7}
    assert errors["bad-url"]["code"] == "unsupported_url"
    assert errors["bad-temp"]["code"] == "invalid_sampling_parameter" and "temperature" in errors["bad-temp"]["message"]
    assert errors["too-long"]["code"] == "context_length_exceeded"
    assert errors["bad-msgs"]["code"] == "invalid_value" and errors["bad-msgs"]["message"].startswith(
        "messages[0].role"
    )
    assert by["bad-msgs"][0]["response"]["status_code"] == 400
    assert sorted((e["error"] or {}).get("code") or "ok" for e in by["chat-1"]) == ["duplicate_custom_id", "ok"]
    assert not eng.has_unfinished() and eng.kv_manager.num_free_blocks == eng.kv_manager.num_blocks
    # Run again: everything is already answered.
    s2 = run_batch_file(tiny, src, out, engine=eng, progress=False)
    assert (s2.already_done, s2.succeeded, s2.failed) == (12, 0, 0) and len(read_out(out)) == 12


class PrepareFails(EngineExecutor):
    """An executor that raises an unexpected error while preparing one line."""

    def prepare(self, line):
        if line.custom_id == "boom":
            raise KeyError("a bug while preparing this line")
        return super().prepare(line)


def test_a_line_that_makes_the_executor_raise_fails_alone(tiny, tmp_path):
    """Issue #17 F1: one line that makes the engine's step raise (or the executor, while
    preparing it) gets its own 500 record; the other lines are answered, the job finishes, and a
    rerun has nothing left to do instead of crashing again."""
    poison = [7, 7, 7, 7, 7]
    lines = [line(f"ok-{i}", "/v1/completions", prompt=f"w{i} w{i + 1}", max_tokens=5, temperature=0) for i in range(4)]
    lines.insert(2, line("poison", "/v1/completions", prompt=poison, max_tokens=5, temperature=0))
    lines.insert(4, line("boom", "/v1/completions", prompt="w1", max_tokens=5, temperature=0))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    eng = LLMEngine.from_loaded(tiny, EngineConfig(num_blocks=256, block_size=4))
    real_sample = eng.runner.sample

    def sample(logits, rows, seqs):  # as top_k >= 2**63 once made torch raise in the step
        if any(s.token_ids[: s.prompt_len] == poison for s in seqs):
            raise RuntimeError("Overflow when unpacking long long")
        return real_sample(logits, rows, seqs)

    eng.runner.sample = sample
    s = run_batch(src, out, PrepareFails(tiny, eng), progress=False)
    assert (s.total, s.succeeded, s.failed) == (6, 4, 2)
    got = {e["custom_id"]: e for e in read_out(out)}
    assert got["poison"]["response"]["status_code"] == 500 and got["poison"]["error"]["line"] == 3
    assert got["boom"]["error"]["code"] == "internal_error" and got["boom"]["error"]["line"] == 5
    assert "KeyError" in got["boom"]["error"]["message"]
    assert not eng.has_unfinished() and eng.kv_manager.num_free_blocks == eng.kv_manager.num_blocks
    # The healthy lines got the answers they get without the failing ones beside them.
    ref_src, ref = tmp_path / "ref_in.jsonl", tmp_path / "ref.jsonl"
    ref_src.write_text("\n".join(x for x in lines if '"ok-' in x) + "\n")
    run_batch_file(tiny, ref_src, ref, EngineConfig(num_blocks=256, block_size=4), progress=False)
    want = {e["custom_id"]: e["response"]["body"]["choices"] for e in read_out(ref)}
    assert want.keys() == {f"ok-{i}" for i in range(4)}
    for cid, choices in want.items():
        assert [c["text"] for c in got[cid]["response"]["body"]["choices"]] == [c["text"] for c in choices]
    s2 = run_batch(src, out, PrepareFails(tiny, eng), progress=False)
    assert (s2.already_done, s2.succeeded, s2.failed) == (6, 0, 0)


def test_sigkill_and_resume_answers_every_line_once(tmp_path):
    n = 40
    lines = []
    for i in range(n):
        if i % 13 == 5:
            lines.append(f'{{"custom_id": "oops-{i}", ')  # bad JSON
        elif i % 2:
            lines.append(line(f"req-{i}", **chat(f"w{i} w{i + 1}", max_tokens=16, temperature=0, ignore_eos=True)))
        else:
            lines.append(
                line(
                    f"req-{i}",
                    "/v1/completions",
                    prompt=f"w{i}",
                    max_tokens=16,
                    temperature=0.9,
                    seed=i,
                    ignore_eos=True,
                )
            )
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = [sys.executable, str(HERE / "batch_job_script.py"), str(src), str(out)]

    proc = subprocess.Popen(cmd + ["0.01"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().count("\n") >= 10:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = out.read_text().count("\n")
    assert 10 <= partial < n, "the job was not killed mid-run"
    with open(out, "ab") as f:  # as if it died in the middle of writing a line
        f.write(b'{"id": "batch_req_torn", "custom_id": "req-')

    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"already_done={partial}" in done.stdout

    entries = read_out(out)  # every line parses: the torn one is gone
    assert len(entries) == n
    counts = Counter(e["custom_id"] or f"line-{e['error']['line']}" for e in entries)
    assert all(c == 1 for c in counts.values())
    expected = {f"req-{i}" for i in range(n) if i % 13 != 5} | {f"line-{i + 1}" for i in range(n) if i % 13 == 5}
    assert set(counts) == expected
    for e in entries:
        if e["custom_id"]:
            assert e["error"] is None
            assert e["response"]["body"]["usage"]["completion_tokens"] == 16 * len(e["response"]["body"]["choices"])
        else:
            assert e["error"]["code"] == "invalid_json"
