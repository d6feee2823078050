"""The JSON-schema logits mask on the real SmolLM2 vocabulary, without a server: any sampled
path through the mask is valid JSON for the schema, the mask is cheap per step, and the
sampler applies a request's ``logits_processor`` to exactly the rows that carry one."""

from __future__ import annotations

import json
import time

import jsonschema
import numpy as np
import pytest
import torch

from lhama.errors import SamplingError
from lhama.generate.constrained import GrammarCompiler
from lhama.generate.sampling import BatchSampler, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 999},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["ok", "color", "n", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def compiler(smollm2_path):
    from lhama.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_path)
    return GrammarCompiler(tok, tok.vocab_size, sorted(tok.stop_ids))


def test_random_walks_through_the_mask_are_valid(compiler):
    tok = compiler.tokenizer
    grammar = compiler.grammar_for_schema(SCHEMA, "response_format")
    steps, elapsed = 0, 0.0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        proc = compiler.constraint(grammar)
        ids: list[int] = []
        for _ in range(300):
            logits = torch.from_numpy(rng.standard_normal(tok.vocab_size, dtype=np.float32) * 3)
            t0 = time.perf_counter()
            masked = proc(ids, logits)
            elapsed += time.perf_counter() - t0
            steps += 1
            # A Gumbel-max draw in numpy: small torch ops are slow on a busy 2-core box.
            nxt = int(np.argmax(masked.numpy() + rng.gumbel(size=tok.vocab_size)))
            if nxt in tok.stop_ids:
                break
            ids.append(nxt)
        else:
            pytest.fail(f"no end after 300 tokens: {tok.decode(ids)!r}")
        jsonschema.validate(json.loads(tok.decode(ids)), SCHEMA)
    per_step_ms = elapsed / steps * 1e3
    print(f"mask: {per_step_ms:.3f} ms per step over {steps} steps")
    assert per_step_ms < 20  # a decode step of even this 135M model on 2 CPU cores is ~50-100 ms


def test_invalid_or_unsupported_schemas_name_the_parameter(compiler):
    with pytest.raises(SamplingError) as e:
        compiler.grammar_for_schema({"type": "wat"}, "response_format")
    assert e.value.param == "response_format"
    with pytest.raises(SamplingError):
        compiler.grammar_for_schema({"type": "string", "pattern": "(unclosed"}, "tools")


def test_sampler_applies_the_processor_only_to_its_rows(compiler):
    V = compiler.vocab_size
    grammar = compiler.grammar_for_schema(
        {"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"], "additionalProperties": False},
        "response_format",
    )
    proc = compiler.constraint(grammar)
    sampler = BatchSampler(V)
    plain = SamplingParams(temperature=0)
    constrained = SamplingParams(temperature=0, logits_processor=proc)
    out: list[int] = []
    for _ in range(12):
        logits = torch.zeros(2, V)
        logits[:, 100] = 50.0  # what an unconstrained row picks
        res = sampler.sample(logits, [plain, constrained], generators=[None, None], outputs=[[], list(out)])
        assert int(res.tokens[0]) == 100
        tok = int(res.tokens[1])
        if tok in compiler.stop_ids:
            break
        out.append(tok)
    assert json.loads(compiler.tokenizer.decode(out)) == {"a": 1}


def test_a_processor_is_one_sequences_state(compiler):
    proc = compiler.constraint(compiler.grammar_for_schema({"type": "object"}, "response_format"))
    with pytest.raises(SamplingError) as e:
        SamplingParams(n=2, logits_processor=proc)
    assert e.value.param == "n"
    with pytest.raises(ValueError, match="output ids"):
        BatchSampler(compiler.vocab_size).sample(
            torch.zeros(1, compiler.vocab_size), [SamplingParams(logits_processor=proc)], generators=[None]
        )
