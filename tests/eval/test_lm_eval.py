"""The lm-evaluation-harness backend: its three request types on a tiny model, the harness
finding ``--model lhama``, and (slow) agreement with the harness's Hugging Face backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import needs

needs.module("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from lhama.eval.lm_eval_adapter import LhamaLM  # noqa: E402
from lhama.eval.loglik import LogLikelihood, rolling_logprob  # noqa: E402

MC_YAML = """task: lhama_test_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{labels[0]}}}} {{{{question}}}}\\n{{{{labels[1]}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""
PPL_YAML = """task: lhama_test_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
"""


def _req(kind, args, i=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=i)


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return LhamaLM(loaded=tiny_lm, max_length=64)


def test_loglikelihood_splits_like_the_hf_backend(lm, tiny_lm):
    tok = tiny_lm.tokenizer
    reqs = [
        _req("loglikelihood", ("Question: 2+2?\nAnswer:", " 4")),
        _req("loglikelihood", ("The sky is ", "blue")),  # trailing space moves to the continuation
        _req("loglikelihood", ("", "Hello world")),
    ]  # empty context: the prefix token
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    ll = LogLikelihood(tiny_lm.model)
    bos = tok.bos_id
    want = ll.continuation(
        [
            (tok.encode("Question: 2+2?\nAnswer:", bos=True), tok.encode(" 4")),
            (tok.encode("The sky is", bos=True), tok.encode(" blue")),
            ([bos], tok.encode("Hello world")),
        ]
    )
    for (lp, greedy), w in zip(got, want):
        assert lp == pytest.approx(w.logprob, abs=1e-4) and greedy == w.greedy


def test_rolling_uses_disjoint_windows_of_max_length(lm, tiny_lm):
    text = " ".join(["lhama evaluates models offline"] * 30)
    (got,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (text,))], disable_tqdm=True)
    toks = tiny_lm.tokenizer.encode(text, bos=True)
    assert len(toks) > 64  # several windows
    (want,) = rolling_logprob(LogLikelihood(tiny_lm.model), [toks], lm.prefix_token_id, window=64, stride=64)
    assert got == pytest.approx(want.logprob, abs=1e-3)


def test_generate_until_respects_max_tokens_and_stops(lm):
    out = lm.generate_until(
        [
            _req("generate_until", ("Once upon a time", {"until": ["\n\n"], "max_gen_toks": 5})),
            _req("generate_until", ("Hi", {"until": ["the"], "max_gen_toks": 3}), 1),
        ],
        disable_tqdm=True,
    )
    from lhama.generate import SamplingParams

    ref = lm.engine.generate(
        [lm.tok_encode("Once upon a time")], SamplingParams(temperature=0, max_tokens=5, stop=("\n\n",))
    )[0].completions[0]
    assert out[0] == ref.text and ref.completion_tokens <= 5  # greedy, max_gen_toks honoured
    assert "the" not in out[1]


@pytest.mark.slow
def test_simple_evaluate_with_a_local_task(tmp_path, tiny_lm):
    """The harness's own evaluator drives the adapter on a local YAML + JSONL task."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lhama.eval.tasks import shipped_tasks

    (tmp_path / "mc.yaml").write_text(MC_YAML.format(data=shipped_tasks()["mc-en"]))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    res = lm_eval.simple_evaluate(
        model=LhamaLM(loaded=tiny_lm),
        tasks=["lhama_test_mc"],
        limit=3,
        task_manager=TaskManager(include_path=str(tmp_path)),
    )
    r = res["results"]["lhama_test_mc"]
    assert 0 <= r["acc,none"] <= 1 and 0 <= r["acc_norm,none"] <= 1


def test_plain_lm_eval_process_finds_the_lhama_model():
    from lhama.cli.eval import install_lm_eval_hook

    install_lm_eval_hook()  # what `lhama lm-eval --install` does (idempotent)
    code = "from lm_eval.api.registry import get_model; print(get_model('lhama').__module__, get_model('hf').__name__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["lhama.eval.lm_eval_adapter", "HFLM"]


def _harness(model_args: list[str], tasks_dir: Path, out: Path, limit: int) -> dict:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    lm_eval_bin = Path(sys.executable).with_name("lm_eval")
    cmd = [
        str(lm_eval_bin),
        *model_args,
        "--device",
        "cpu",
        "--tasks",
        "lhama_test_mc,lhama_test_ppl",
        "--include_path",
        str(tasks_dir),
        "--limit",
        str(limit),
        "--output_path",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = out.rglob("results_*.json")
    return json.loads(path.read_text())["results"]


@pytest.mark.slow
def test_scores_agree_with_the_hf_backend_on_smollm2(tmp_path, smollm2_path):
    """`lm_eval --model lhama` and `lm_eval --model hf` on the same weights (the GGUF converted to a
    Hugging Face folder by `lhama convert`): within 0.5 points on a local task of all 8 languages."""
    from lhama.cli.eval import install_lm_eval_hook
    from lhama.eval.tasks import shipped_tasks

    install_lm_eval_hook()
    tasks = shipped_tasks()
    mc, ppl = tmp_path / "mc.jsonl", tmp_path / "ppl.jsonl"
    mc.write_text("".join(tasks[n].read_text() for n in tasks if n.startswith("mc-")))
    ppl.write_text("".join(tasks[n].read_text() for n in tasks if n.startswith("ppl-")))
    (tmp_path / "mc.yaml").write_text(MC_YAML.format(data=mc))
    (tmp_path / "ppl.yaml").write_text(PPL_YAML.format(data=ppl))
    hf_dir = tmp_path / "hf"
    conv = subprocess.run(
        [sys.executable, "-m", "lhama.cli", "convert", str(smollm2_path), str(hf_dir), "--to", "safetensors"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert conv.returncode == 0, conv.stderr
    ours = _harness(["--model", "lhama", "--model_args", f"pretrained={smollm2_path}"], tmp_path, tmp_path / "o1", 40)
    theirs = _harness(
        ["--model", "hf", "--model_args", f"pretrained={hf_dir},dtype=float32", "--batch_size", "16"],
        tmp_path,
        tmp_path / "o2",
        40,
    )
    for metric in ("acc,none", "acc_norm,none"):
        assert abs(ours["lhama_test_mc"][metric] - theirs["lhama_test_mc"][metric]) * 100 <= 0.5
    assert abs(ours["lhama_test_ppl"]["bits_per_byte,none"] - theirs["lhama_test_ppl"]["bits_per_byte,none"]) <= 0.005
    w1, w2 = ours["lhama_test_ppl"]["word_perplexity,none"], theirs["lhama_test_ppl"]["word_perplexity,none"]
    assert abs(w1 - w2) / w2 <= 0.005
