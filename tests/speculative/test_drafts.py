"""Quantized self-drafts (``self:int4``), quantized targets, and the ``--draft-model`` spellings."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lhama.errors import ConfigError
from lhama.generate import SamplingParams, generate_tokens
from lhama.generate.drafts import DraftSpec, parse_draft_spec
from lhama.generate.speculative import (
    NgramDraft,
    Speculation,
    load_speculation,
    quantized_self_draft,
    self_draft,
    speculative_tokens,
)
from lhama.model import build_model
from lhama.quant import is_quantized, quantize_model


def _ids(steps):
    return [s.token_id for s in steps]


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    from lhama.loader import load_model

    # fp32: the precision whose greedy output speculation reproduces exactly (and self:int4 needs float weights)
    return load_model(smollm2_path, dtype=torch.float32)


def test_int4_self_draft_on_smollm2_gives_the_plain_loops_tokens(smollm2):
    lm = smollm2
    ids = lm.chat_format.encode_dialog(
        [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
    )
    p = SamplingParams(temperature=0, max_tokens=32)
    stops = lm.chat_format.stop_ids
    ref = _ids(generate_tokens(lm.model, ids, p, stop_ids=stops))
    spec = load_speculation("self:int4", lm)
    assert spec.num_speculative_tokens == 6  # the default for quantized self-drafts
    assert _ids(speculative_tokens(lm.model, spec, ids, p, stop_ids=stops)) == ref
    # Free-form text, no prompt to copy: the int4 copy agrees with the target most of the time,
    # so each fp32 forward yields several tokens (the source of the speed-up in bench/speculative.py).
    assert spec.stats.acceptance_rate > 0.6, spec.stats
    assert spec.stats.tokens_per_target_forward > 3, spec.stats
    draft = spec.draft
    # The draft is quantized, the target untouched, and the embedding table is one tensor for both.
    assert is_quantized(draft) and not is_quantized(lm.model)
    assert type(lm.model.layers[0].attention.wq) is nn.Linear and type(lm.model.output) is nn.Linear
    assert draft.tok_embeddings.weight.data_ptr() == lm.model.tok_embeddings.weight.data_ptr()
    assert draft.layers[0].attention.wqkv is not None and lm.model.layers[0].attention.wqkv is None


def test_quantized_self_draft_spellings_keep_greedy_output(tiny_llama3_args):
    target = build_model(tiny_llama3_args.with_(n_layers=3), init="random", seed=2).eval()
    prompt = [7, 8, 9, 7, 8]
    p = SamplingParams(temperature=0, max_tokens=24)
    ref = _ids(generate_tokens(target, prompt, p))
    for precision, layers in (("int4", None), ("int8", None), ("int4", 2), ("int8", 3)):
        draft = quantized_self_draft(target, precision, layers)
        assert draft.args.n_layers == (layers or 3) and draft.quant_config.mode == precision
        spec = Speculation(draft, 5)
        assert _ids(speculative_tokens(target, spec, prompt, p)) == ref, (precision, layers)
        assert spec.stats.accepted > 0  # a quantized copy of the same weights is a useful draft
    # bf16 target, int4 draft from the bf16 weights: runs, and its first tokens match.
    bf16 = build_model(tiny_llama3_args.with_(n_layers=3), init="random", seed=2, dtype=torch.bfloat16).eval()
    spec = Speculation(quantized_self_draft(bf16, "int4"), 4)
    assert len(_ids(speculative_tokens(bf16, spec, prompt, p))) == 24 and spec.draft.dtype == torch.bfloat16


def test_a_quantized_target_speculates_with_ngram_layer_and_model_drafts(tiny_llama3_args):
    target = build_model(tiny_llama3_args.with_(n_layers=3), init="random", seed=5).eval()
    quantize_model(target, "int4")
    other = build_model(tiny_llama3_args.with_(n_layers=1), init="random", seed=6).eval()
    prompt = [1, 2, 3, 1, 2, 3, 1]
    p = SamplingParams(temperature=0, max_tokens=20)
    ref = _ids(generate_tokens(target, prompt, p))
    for draft in (NgramDraft(), self_draft(target, 2), other):
        assert _ids(speculative_tokens(target, Speculation(draft, 4), prompt, p)) == ref, type(draft).__name__
    with pytest.raises(ConfigError, match="already quantized"):
        quantized_self_draft(target, "int4")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("self:int9", "unknown self-draft precision 'int9'"),
        ("self:fp8", "unknown self-draft precision 'fp8'"),
        ("self:int4:x", "self:int4:N"),
        ("self:int4:2:3", "self:int4:N"),
        ("self:", "self:N"),
        ("self:abc", "self:N"),
        ("", "empty"),
        ("ngram+ngram", "after a model draft"),
        ("self:int9+ngram", "int9"),
    ],
)
def test_bad_draft_spellings_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_draft_spec(spec)


def test_draft_spellings_parse():
    assert parse_draft_spec("ngram") == DraftSpec("ngram")
    assert parse_draft_spec("self:12") == DraftSpec("layers", layers=12)
    assert parse_draft_spec("self:int4") == DraftSpec("quantized", precision="int4")
    assert parse_draft_spec("self:int8:20") == DraftSpec("quantized", layers=20, precision="int8")
    assert parse_draft_spec("path/to/draft.gguf") == DraftSpec("model", model="path/to/draft.gguf")
    assert parse_draft_spec("self:int4+ngram") == DraftSpec("quantized", precision="int4", lookup=True)
    assert parse_draft_spec("d.gguf+ngram") == DraftSpec("model", model="d.gguf", lookup=True)


def test_prompt_lookup_in_front_of_a_model_draft(tiny_llama3_args):
    target = build_model(tiny_llama3_args.with_(n_layers=3), init="random", seed=2).eval()
    draft = quantized_self_draft(target, "int4")
    prompt = [7, 8, 9, 10, 11, 7, 8, 9, 10, 11, 7, 8]
    for temperature in (0.0, 1.0):
        p = SamplingParams(temperature=temperature, max_tokens=30, seed=3)
        ref = _ids(generate_tokens(target, prompt, p))
        hybrid = Speculation(draft, 4, lookup=NgramDraft(min_ngram=2))
        out = _ids(speculative_tokens(target, hybrid, prompt, p))
        if temperature == 0:
            assert out == ref
        assert len(out) == 30 and hybrid.stats.proposed > 0
    # The spelling builds the same pair: the int4 copy plus a lookup that needs two matching tokens.
    from lhama.loader import load_model

    spec = load_speculation("self:int4+ngram", load_model("tiny-llama3", seed=0))
    assert spec.lookup == NgramDraft(min_ngram=2) and spec.draft.quant_config.mode == "int4"
    assert spec.num_speculative_tokens == 6


def test_load_speculation_errors_and_defaults():
    from lhama.loader import load_model

    lm = load_model("tiny-llama3", seed=0)
    with pytest.raises(ConfigError, match="1..2 of the target's 2 layers, got 3"):
        load_speculation("self:int4:3", lm)
    with pytest.raises(ConfigError, match="not ngram, self:int4, self:N, nor a model"):
        load_speculation("no-such-draft-model", lm)
    assert load_speculation("ngram", lm).num_speculative_tokens == 4
    assert load_speculation("self:int4", lm, 3).num_speculative_tokens == 3
    with pytest.raises(ConfigError, match="1..32"):
        load_speculation("self:int4", lm, 0)


def test_cli_self_int4_draft_and_quantized_target(capsys):
    from lhama.cli import main

    base = [
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

    def run(*extra):
        assert main(base + list(extra)) == 0
        return json.loads(capsys.readouterr().out)

    ref, spec = run(), run("--draft-model", "self:int4")
    assert spec["text"] == ref["text"] and spec["completion_tokens"] == ref["completion_tokens"]
    assert spec["speculative"]["target_forwards"] < ref["completion_tokens"]
    qref, qspec = run("--quantize", "int4"), run("--quantize", "int4", "--draft-model", "ngram")
    assert qspec["text"] == qref["text"] and "speculative" in qspec
    assert main(base + ["--quantize", "int4", "--draft-model", "self:int4"]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(base + ["--draft-model", "self:int9"]) == 2
    assert "int9" in capsys.readouterr().err
