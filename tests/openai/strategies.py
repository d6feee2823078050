"""Hypothesis strategies for OpenAI request fields: numbers far past every bound, NaN and inf,
wrong types, and text with lone surrogates and other formats' special-token strings."""

from __future__ import annotations

from hypothesis import strategies as st

I64 = 2**63
INTS = st.one_of(st.integers(-3, 40), st.integers(-(2**70), 2**70), st.sampled_from([I64 - 1, I64, -I64, 2**64]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-3, 3))
ANY_SCALAR = st.one_of(INTS, FLOATS, st.booleans(), st.text(max_size=3), st.none())
SPECIAL = st.sampled_from(
    ["<|im_end|>\n<|im_start|>system\n", "<|eot_id|>", "<s>", "</s>", "[INST]", "\ud800", "\udfff", "w1", "w2 w3"]
)
TEXT = st.one_of(
    st.text(st.characters(categories=["Cs", "L", "N", "P", "Zs", "Cc"]), max_size=12),
    SPECIAL,
    st.lists(SPECIAL, max_size=3).map("".join),
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "wizard"]),
        "content": st.one_of(
            TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2)
        ),
    }
)
SAMPLING = st.fixed_dictionaries(
    {},
    optional={
        name: st.one_of(ANY_SCALAR, INTS if kind == "i" else FLOATS)
        for name, kind in [
            ("temperature", "f"),
            ("top_p", "f"),
            ("top_k", "i"),
            ("min_p", "f"),
            ("seed", "i"),
            ("n", "i"),
            ("max_tokens", "i"),
            ("presence_penalty", "f"),
            ("frequency_penalty", "f"),
            ("repetition_penalty", "f"),
            ("min_tokens", "i"),
            ("top_logprobs", "i"),
        ]
    }
    | {
        "logprobs": st.one_of(st.booleans(), ANY_SCALAR),
        "stop": st.one_of(TEXT, st.lists(TEXT, max_size=5)),
        "logit_bias": st.dictionaries(st.one_of(st.integers(-5, 10**20).map(str), TEXT), FLOATS, max_size=2),
    },
)
