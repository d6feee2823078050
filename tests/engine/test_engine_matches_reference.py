"""The engine's batched, chunked, paged output equals the single-sequence reference loop."""

from __future__ import annotations

import pytest
from engine_fakes import random_prompts

from lhama.generate import SamplingParams, generate_tokens


def reference(loaded, prompt, params):
    return list(generate_tokens(loaded.model, prompt, params, stop_ids=loaded.tokenizer.stop_ids))


def ids(steps):
    return [s.token_id for s in steps]


# Block size 4, budget 8 tokens/step: prompts from 1 token to many blocks, most chunked.
LENGTHS = [1, 3, 4, 5, 8, 13, 29, 47]


@pytest.mark.parametrize("fixture", ["tiny", "tiny_mha"])
def test_batched_greedy_equals_reference(request, make_engine, fixture):
    loaded = request.getfixturevalue(fixture)
    eng = make_engine(loaded, max_num_batched_tokens=8)
    prompts = random_prompts(LENGTHS, seed=3)
    params = SamplingParams(temperature=0, max_tokens=10)
    results = eng.generate(prompts, params)
    assert eng.stats().steps_total > max(LENGTHS) // 8  # the long prompts were chunked
    for prompt, res in zip(prompts, results):
        ref = reference(loaded, prompt, params)
        assert ids(res.completions[0].steps) == ids(ref), f"prompt of {len(prompt)} tokens"


def test_requests_join_a_running_batch(tiny, make_engine):
    """Continuous batching: requests added at different steps, decoding alongside prefills."""
    eng = make_engine(tiny, max_num_batched_tokens=6, max_num_seqs=3)
    prompts = random_prompts([7, 2, 19, 11, 4, 30], seed=5)
    params = [SamplingParams(temperature=0, max_tokens=n) for n in (9, 14, 5, 12, 8, 6)]
    reqs, pending = [], list(zip(prompts, params))
    step = 0
    while pending or eng.has_unfinished():
        if pending and step % 3 == 0:
            p, sp = pending.pop(0)
            reqs.append((p, sp, eng.add_request(None, p, sp)))
        eng.step()
        step += 1
    for p, sp, req in reqs:
        assert ids(eng.result(req).completions[0].steps) == ids(reference(tiny, p, sp))


def test_seeded_sampling_same_alone_and_in_batch(tiny, make_engine):
    params = SamplingParams(
        temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=16, logprobs=True, top_logprobs=3
    )
    prompt = random_prompts([11], seed=9)[0]
    alone = make_engine(tiny).generate([prompt], params)[0].completions[0]
    others = random_prompts([5, 23, 2, 17], seed=10)
    mixed = [
        SamplingParams(temperature=1.0, max_tokens=20),
        SamplingParams(temperature=0, max_tokens=7),
        SamplingParams(temperature=0.7, seed=5, max_tokens=12),
        SamplingParams(temperature=1.3, max_tokens=9),
    ]
    batch = make_engine(tiny, max_num_batched_tokens=8).generate(
        others[:2] + [prompt] + others[2:], mixed[:2] + [params] + mixed[2:]
    )
    in_batch = batch[2].completions[0]
    assert in_batch.token_ids == alone.token_ids
    ref = reference(tiny, prompt, params)
    assert ids(in_batch.steps) == ids(ref)
    for got, want in zip(in_batch.steps, ref):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert [t for t, _ in got.top_logprobs] == [t for t, _ in want.top_logprobs]
        assert [lp for _, lp in got.top_logprobs] == pytest.approx([lp for _, lp in want.top_logprobs], abs=1e-4)


def test_penalties_stop_ids_and_min_tokens_follow_reference(tiny, make_engine):
    prompts = random_prompts([6, 14, 9], seed=11)
    free = reference(tiny, prompts[0], SamplingParams(temperature=0, max_tokens=12))
    stop = ids(free)[4]
    cases = [
        (prompts[0], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=(stop,))),
        (prompts[0], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=(stop,), min_tokens=8)),
        (prompts[1], SamplingParams(temperature=0, max_tokens=12, repetition_penalty=1.5, frequency_penalty=0.5)),
        (prompts[2], SamplingParams(temperature=0.8, seed=3, max_tokens=12, presence_penalty=1.0)),
        (prompts[2], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)),
    ]
    results = make_engine(tiny, max_num_batched_tokens=8).generate([c[0] for c in cases], [c[1] for c in cases])
    for (prompt, params), res in zip(cases, results):
        comp = res.completions[0]
        assert ids(comp.steps) == ids(reference(tiny, prompt, params)), params
    assert results[0].completions[0].finish_reason == "stop"
    assert results[0].completions[0].stop_reason == stop
    assert stop not in results[1].completions[0].token_ids[:8]


def test_text_and_stop_strings(tiny, make_engine):
    """Stop strings are cut from the text (also when they end inside a token), and the tokens
    end with the one that completed the stop string - the rules of ``generate.stream_text``."""
    tok = tiny.tokenizer
    prompt = random_prompts([10], seed=12)[0]
    base = SamplingParams(temperature=0, max_tokens=15, ignore_eos=True)
    ref_ids = ids(reference(tiny, prompt, base))
    full = tok.decode(ref_ids)
    words = full.split()
    stop_word = words[4] + " " + words[5][:2]  # spans two tokens, ends mid-token
    cut = full.index(stop_word)
    n_tokens = next(k for k in range(1, len(ref_ids) + 1) if stop_word in tok.decode(ref_ids[:k]))
    eng = make_engine(tiny)
    req = eng.add_request("r", prompt, base.with_(stop=(stop_word,)))
    deltas = []
    while eng.has_unfinished():
        deltas += eng.step()
    assert "".join(d.text for d in deltas) == full[:cut]
    assert sum((d.token_ids for d in deltas), []) == ref_ids[:n_tokens]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason == stop_word
    comp = eng.result(req).completions[0]
    assert comp.text == full[:cut] and comp.finish_reason == "stop"
    # Without the stop string: the whole text, finish "length".
    comp = make_engine(tiny).generate([prompt], base)[0].completions[0]
    assert comp.text == full and comp.finish_reason == "length" and comp.token_ids == ref_ids


def test_long_prompt_is_chunked_and_does_not_stall_decodes(tiny, make_engine):
    eng = make_engine(tiny, max_num_batched_tokens=8)
    short = eng.add_request("short", [1, 2, 3], SamplingParams(temperature=0, max_tokens=60, ignore_eos=True))
    eng.step()  # short's prompt
    long_prompt = random_prompts([150], seed=13)[0]
    long = eng.add_request("long", long_prompt, SamplingParams(temperature=0, max_tokens=4))
    steps = 0
    while long.seqs[0].num_computed < len(long_prompt):
        before = short.seqs[0].num_output
        deltas = eng.step()
        steps += 1
        assert short.seqs[0].num_output == before + 1  # a token every step
        assert sum(1 for d in deltas if d.request_id == "short") == 1
    assert steps >= 150 // 7  # the prompt went in chunks of at most 7 (8 minus the decode)
    while eng.has_unfinished():
        eng.step()
    assert ids(eng.result(long).completions[0].steps) == ids(reference(tiny, long_prompt, long.params))
