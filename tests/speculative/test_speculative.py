"""Speculative decoding: the target's greedy output exactly, the target's distribution when sampling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lhama.errors import ConfigError, SamplingError
from lhama.generate import SamplingParams, generate_tokens
from lhama.generate.speculative import NgramDraft, Speculation, self_draft, speculative_tokens
from lhama.model import build_model


def _ids(steps):
    return [s.token_id for s in steps]


@pytest.fixture
def tiny(tiny_llama3_args):
    return build_model(tiny_llama3_args.with_(n_layers=3), init="random", seed=1).eval()


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_matches_target_with_every_kind_of_draft(tiny, tiny_llama3_args, k):
    prompt = [5, 17, 99, 3, 42, 17, 99]
    p = SamplingParams(temperature=0, max_tokens=40)
    ref = _ids(generate_tokens(tiny, prompt, p))
    other = build_model(tiny_llama3_args.with_(n_layers=1), init="random", seed=7).eval()  # unrelated weights
    for draft in (self_draft(tiny, 1), self_draft(tiny, 2), other, NgramDraft(), tiny):
        spec = Speculation(draft, k)
        assert _ids(speculative_tokens(tiny, spec, prompt, p)) == ref, type(draft).__name__
        assert spec.stats.emitted == 40 and spec.stats.rounds <= 40
    # The target as its own draft: every proposal is kept, k + 1 tokens per target forward.
    spec = Speculation(tiny, k)
    list(speculative_tokens(tiny, spec, prompt, p))
    assert spec.stats.acceptance_rate == 1.0 and spec.stats.rounds == -(-(40 - 1) // (k + 1))


def test_stops_budget_min_tokens_and_logprobs_like_the_plain_loop(tiny):
    prompt = [1, 2, 3]
    ref = _ids(generate_tokens(tiny, prompt, SamplingParams(temperature=0, max_tokens=30)))
    stop = ref[5]
    first = ref.index(stop)
    p = SamplingParams(temperature=0, max_tokens=30, logprobs=True, top_logprobs=3)
    got = list(speculative_tokens(tiny, Speculation(tiny, 4), prompt, p, stop_ids=[stop]))
    want = list(generate_tokens(tiny, prompt, p, stop_ids=[stop]))
    assert _ids(got) == _ids(want) == ref[: first + 1]
    for g, w in zip(got, want):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert [t for t, _ in g.top_logprobs] == [t for t, _ in w.top_logprobs]
    p = SamplingParams(temperature=0, max_tokens=30, min_tokens=first + 3)
    assert _ids(speculative_tokens(tiny, Speculation(self_draft(tiny, 1), 3), prompt, p, stop_ids=[stop])) == _ids(
        generate_tokens(tiny, prompt, p, stop_ids=[stop])
    )


def test_logit_bias_like_the_plain_loop(tiny):
    prompt = [1, 2, 3]
    ref = _ids(generate_tokens(tiny, prompt, SamplingParams(temperature=0, max_tokens=12)))
    p = SamplingParams(temperature=0, max_tokens=12, logit_bias={ref[0]: -100.0, ref[1]: -100.0}, logprobs=True)
    got = list(speculative_tokens(tiny, Speculation(self_draft(tiny, 1), 3), prompt, p))
    want = list(generate_tokens(tiny, prompt, p))
    assert _ids(got) == _ids(want) and not {ref[0], ref[1]} & set(_ids(got))
    assert [g.logprob for g in got] == pytest.approx([w.logprob for w in want], abs=1e-4)


def test_sampling_keeps_the_target_distribution(tiny_llama3_args):
    # A 16-token vocabulary and a draft that disagrees with the target: the second token (drawn by
    # draft-and-verify) must follow the target's marginal sum_t p(t) p(. | t).
    args = tiny_llama3_args.with_(vocab_size=16)
    target = build_model(args, init="random", seed=3).eval()
    with torch.no_grad():
        target.output.weight.mul_(15)  # far from uniform, and far from the draft
    draft = build_model(args.with_(n_layers=1), init="random", seed=4).eval()
    prompt = [3, 1, 4]
    with torch.inference_mode():
        p1 = target(torch.tensor([prompt]))[0, -1].softmax(-1)
        cond = torch.stack([target(torch.tensor([prompt + [t]]))[0, -1].softmax(-1) for t in range(16)])
    want = (p1.unsqueeze(1) * cond).sum(0)
    p = SamplingParams(temperature=1.0, max_tokens=3)  # 3: the second token goes through verification
    n, accepted = 600, 0
    counts = torch.zeros(16)
    for seed in range(n):
        spec = Speculation(draft, 1)
        steps = list(speculative_tokens(target, spec, prompt, p.with_(seed=seed)))
        counts[steps[1].token_id] += 1
        accepted += spec.stats.accepted
    tv = 0.5 * (counts / n - want).abs().sum()
    assert tv < 0.08, (tv, counts / n, want)
    assert 0 < accepted < n  # the draft was both right and wrong


def test_bad_drafts_and_params_are_typed_errors(tiny, tiny_llama3_args):
    with pytest.raises(ConfigError, match="1..2"):
        self_draft(tiny, 3)
    wrong_vocab = build_model(tiny_llama3_args.with_(vocab_size=300), init="random").eval()
    with pytest.raises(ConfigError, match="vocabulary"):
        list(speculative_tokens(tiny, Speculation(wrong_vocab), [1, 2], SamplingParams(temperature=0, max_tokens=4)))
    with pytest.raises(SamplingError, match="repetition_penalty"):
        list(speculative_tokens(tiny, Speculation(tiny), [1, 2], SamplingParams(repetition_penalty=1.2)))
    with pytest.raises(SamplingError, match="logits_processor"):  # a constraint is never silently dropped
        list(speculative_tokens(tiny, Speculation(tiny), [1, 2], SamplingParams(logits_processor=lambda ids, x: x)))
    with pytest.raises(ConfigError):
        Speculation(tiny, 0)


def test_smollm2_greedy_is_identical_with_self_and_ngram_drafts(smollm2_path):
    from lhama.loader import load_model

    lm = load_model(smollm2_path, dtype=torch.float32)  # float weights: the kernels under test are exact there
    ids = lm.chat_format.encode_dialog(
        [{"role": "user", "content": "Repeat exactly: the quick brown fox jumps over the lazy dog."}]
    )
    p = SamplingParams(temperature=0, max_tokens=20)
    stops = lm.chat_format.stop_ids
    ref = _ids(generate_tokens(lm.model, ids, p, stop_ids=stops))
    ngram = Speculation(NgramDraft(), 5)
    assert _ids(speculative_tokens(lm.model, ngram, ids, p, stop_ids=stops)) == ref
    assert ngram.stats.acceptance_rate > 0.3 and ngram.stats.rounds < len(ref)  # it quotes the prompt
    assert (
        _ids(
            speculative_tokens(
                lm.model, Speculation(self_draft(lm.model, 6), 3), ids, p.with_(max_tokens=8), stop_ids=stops
            )
        )
        == ref[:8]
    )


def test_cli_generate_with_a_draft(capsys):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [
        sys.executable,
        "-m",
        "lhama.cli",
        "generate",
        "one two three one two three",
        "--model",
        "tiny-llama3",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--json",
    ]
    run = lambda *extra: subprocess.run(base + list(extra), capture_output=True, text=True, timeout=300, env=env)  # noqa: E731
    r = run("--draft-model", "self:1", "--num-speculative-tokens", "3")
    assert r.returncode == 0, r.stderr
    from lhama.cli import main

    assert main(base[3:]) == 0  # the plain loop, in this process
    out, ref = json.loads(r.stdout), json.loads(capsys.readouterr().out)
    assert out["text"] == ref["text"] and out["completion_tokens"] == ref["completion_tokens"]
    assert out["speculative"]["target_forwards"] <= ref["completion_tokens"]
    assert main(["generate", "x", "--model", "tiny-llama3", "--draft-model", "self:9"]) == 2
    assert "self-draft" in capsys.readouterr().err


def test_draft_model_by_spec():
    from lhama.generate.speculative import load_speculation
    from lhama.loader import load_model

    target = load_model("tiny-llama3", seed=0)
    spec = load_speculation("tiny-llama3", target, 3)  # another model (here: same shape) with the same tokenizer
    assert spec.draft is not target.model and spec.num_speculative_tokens == 3
    p = SamplingParams(temperature=0, max_tokens=10)
    assert _ids(speculative_tokens(target.model, spec, [1, 2, 3], p)) == _ids(
        generate_tokens(target.model, [1, 2, 3], p)
    )
    with pytest.raises(ConfigError, match="self:N"):
        load_speculation("self:x", target)
