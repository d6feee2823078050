"""The engine's per-step fast paths give what the general paths give: greedy rows sampled by
argmax without the sampler's state (same tokens and logprobs as ``BatchSampler``), and the
inputs of a step of generated tokens built from one tensor (same values as the general build,
decode gather index and mask built only when read)."""

from __future__ import annotations

import pytest
import torch
from engine_fakes import random_prompts

from lhama.generate import SamplingParams, generate_tokens
from lhama.generate.sampling import BatchSampler


class Spy:
    """Counts the calls of the runner's sampler (its type stays ``BatchSampler``)."""

    def __init__(self, sampler):
        self.inner, self.calls = sampler, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.inner(*a, **kw)


def spy_on(eng) -> Spy:
    spy = Spy(eng.runner.sampler.sample)
    eng.runner.sampler.sample = spy
    return spy


def test_greedy_rows_sample_as_the_batch_sampler(tiny, make_engine):
    eng = make_engine(tiny)
    V = tiny.model.args.vocab_size
    spy = spy_on(eng)
    params = [
        SamplingParams(temperature=0, max_tokens=4),
        SamplingParams(temperature=0, max_tokens=4, logprobs=True),
        SamplingParams(temperature=0, max_tokens=4, logprobs=True, top_logprobs=5),
        SamplingParams(temperature=0, max_tokens=4, top_logprobs=2),
    ]
    seqs = [eng.add_request(f"r{i}", [1, 2, 3], p).seqs[0] for i, p in enumerate(params)]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, V, generator=g) * 4
    logits[1, 7] = logits[1, 11] = logits[1].max() + 1  # a tie: the first index wins
    logits[3, 5] = float("nan")  # NaN counts as the maximum, as torch.argmax has it
    want = BatchSampler(V).sample(logits, params, generators=[None] * 4)
    for rows in ([0, 1, 2, 3], [2, 0, 3, 1]):
        got = eng.runner.sample(logits, rows, [seqs[r] for r in rows])
        assert spy.calls == 0  # the fast path took them
        idx = torch.tensor(rows)
        assert torch.equal(got.tokens, want.tokens[idx])
        assert got.tokens.tolist()[rows.index(1)] == 7 and got.tokens.tolist()[rows.index(3)] == 5
        for name in ("logprobs", "top_ids", "top_logprobs"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name)[idx], rtol=0, atol=0, equal_nan=True)
    # Rows whose logits something edits first go through the sampler, and so do seeded draws.
    for i, p in enumerate(
        [
            SamplingParams(temperature=0, max_tokens=4, repetition_penalty=1.3),
            SamplingParams(temperature=0, max_tokens=4, logit_bias={3: 5.0}),
            SamplingParams(temperature=0, max_tokens=4, min_tokens=2, stop_token_ids=[9]),
            SamplingParams(temperature=0.7, max_tokens=4, seed=5),
        ]
    ):
        before = spy.calls
        eng.runner.sample(logits[:1], [0], [eng.add_request(f"s{i}", [1, 2], p).seqs[0]])
        assert spy.calls == before + 1, p
    for rid in list(eng.requests):
        eng.abort(rid)


def test_greedy_logprobs_and_samples_match_the_reference(tiny, make_engine):
    eng = make_engine(tiny, max_num_batched_tokens=8)
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=True, top_logprobs=3, n=2)
    prompts = random_prompts([3, 9, 21], seed=14)
    results = eng.generate(prompts, params)
    for prompt, res in zip(prompts, results):
        want = list(generate_tokens(tiny.model, prompt, params, stop_ids=tiny.tokenizer.stop_ids))
        for comp in res.completions:  # both samples of a greedy request are the reference's
            assert [s.token_id for s in comp.steps] == [s.token_id for s in want]
            for got, ref in zip(comp.steps, want):
                assert got.logprob == pytest.approx(ref.logprob, abs=1e-4)
                assert [t for t, _ in got.top_logprobs] == [t for t, _ in ref.top_logprobs]


def test_decode_step_inputs_equal_the_general_build(tiny, make_engine):
    eng = make_engine(tiny, max_num_batched_tokens=64)
    # Contexts over 1 to 6 blocks of 4: the block tables are padded to the longest.
    for i, prompt in enumerate(random_prompts([2, 5, 11, 19], seed=21)):
        eng.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=6))
    while any(s.num_computed < s.num_tokens - 1 for s in eng.scheduler.running) or eng.scheduler.waiting:
        eng.step()
    sched = eng.scheduler.schedule()
    entries = sched.scheduled
    assert len(entries) == 4 and all(e.num_new == 1 and e.start >= e.seq.prompt_len for e in entries)
    run, KVH, bs = eng.runner, eng.cache.n_kv_heads, eng.cache.block_size
    fast, full = run._prepare_decode(entries), run._prepare_any(entries)
    assert run.prepare(sched).tokens.tolist() == fast.tokens.tolist()
    assert fast.all_rows_sample and fast.generated_rows == full.generated_rows == 4
    assert [s is t for s, t in zip(fast.sample_seqs, full.sample_seqs)] == [True] * 4
    for name in ("tokens", "positions", "sample_rows"):
        assert torch.equal(getattr(fast, name), getattr(full, name)), name
    assert fast.lora_rows == full.lora_rows
    a, b = fast.meta, full.meta
    assert a.num_decode == b.num_decode == 4 and a.decode_max_blocks == b.decode_max_blocks
    assert not a.prefills and not b.prefills
    for name in ("slots", "decode_tables", "decode_lens"):
        assert getattr(a, name).dtype == torch.long and torch.equal(getattr(a, name), getattr(b, name)), name
    # Built when read, as the gather-and-SDPA attention reads them.
    assert a._gather is None and a._mask is None
    tables, lens, mb = a.decode_tables, a.decode_lens, a.decode_max_blocks
    want_idx = torch.tensor([t * KVH + h for row in tables.tolist() for h in range(KVH) for t in row])
    want_mask = torch.tensor([[j < n for j in range(mb * bs)] for n in lens.tolist()]).view(4, 1, 1, mb * bs)
    for m in (a, b):
        assert torch.equal(m.decode_gather_idx, want_idx) and torch.equal(m.decode_mask, want_mask)
    assert lens.tolist() == [e.start + 1 for e in entries] and mb == -(-max(lens.tolist()) // bs)
    for rid in list(eng.requests):
        eng.abort(rid)
