"""Per-request LoRA adapters (lhama.model.lora_batch) on the default model: each adapter's
output equals the same adapter merged into a float copy of the model, alone and mixed in one
engine step with the base model and another adapter."""

from __future__ import annotations

import pytest
import torch

from lhama.engine import EngineConfig, LLMEngine
from lhama.errors import CheckpointError
from lhama.generate.sampling import SamplingParams
from lhama.loader import load_model
from lhama.model.configs import get_config
from lhama.model.lora_batch import LoraSlotError, LoraSlots
from lhama.peft_adapter import read_peft_weights
from tests.engine.engine_fakes import agree_up_to_near_tie
from tests.engine.lora_adapters import make_adapter

# Long enough to fill several 16-token KV blocks: the prefix cache must not hand an adapter the
# base model's blocks (or another adapter's) for the same tokens.
PROMPT = (
    "The history of the city goes back two thousand years, when a small fishing village stood on "
    "the river bank. Over the centuries it grew into a market town, and today it is known for"
)
PARAMS = SamplingParams(max_tokens=12, temperature=0, logprobs=True, top_logprobs=4, ignore_eos=True)
# Float base with adapters vs the same adapter merged into the float weights: the same math in
# another order (fp32 rounding only).
FLOAT_TOL = 2e-3


@pytest.fixture(scope="module", autouse=True)
def fp32_kv_cache():
    """fp32 K/V in this module (a CPU's default is bf16, whose rounding of K/V would turn the fp32
    rounding differences compared here into bf16 ones)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LHAMA_KV_CACHE_DTYPE", "float32")
        yield


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    args = load_model("default").args
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a1": make_adapter(root / "a1", args, rank=8, targets=("all",), seed=1),
        "a2": make_adapter(root / "a2", args, rank=4, targets=("wq", "wv", "w2"), seed=2),
    }


@pytest.fixture(scope="module")
def merged_runs(adapters):
    """Greedy results of each adapter merged into a float copy of the default model (the reference)."""
    out = {}
    for name, path in [("base", None), *adapters.items()]:
        loaded = load_model("default", dtype=torch.float32, lora=path)
        eng = LLMEngine.from_loaded(loaded, EngineConfig(max_num_seqs=8))
        out[name] = eng.generate([loaded.tokenizer.encode(PROMPT)], PARAMS)[0].completions[0]
        del eng, loaded
    return out


def _slots_engine(loaded, adapters, monkeypatch, seen_steps: list):
    slots = LoraSlots(loaded.model, max_loras=4, max_rank=8)
    for name, path in adapters.items():
        slots.load(name, str(path), *read_peft_weights(path, loaded.model.args))
    begin = slots.begin_step

    def record(rows, **kw):
        seen_steps.append(frozenset(rows))
        begin(rows, **kw)

    monkeypatch.setattr(slots, "begin_step", record)
    return slots, LLMEngine.from_loaded(loaded, EngineConfig(max_num_seqs=8))


def _run(loaded, adapters, monkeypatch):
    """base, a1, a2 run alone (base first, so its blocks are cached), then all three in one batch."""
    steps: list = []
    slots, eng = _slots_engine(loaded, adapters, monkeypatch, steps)
    prompt = loaded.tokenizer.encode(PROMPT)
    alone = {
        name: eng.generate([prompt], PARAMS.with_(lora=slots.acquire(name) if name != "base" else None))[0]
        for name in ("base", "a1", "a2")
    }
    steps.clear()
    mixed = eng.generate(
        [prompt] * 3, [PARAMS, PARAMS.with_(lora=slots.acquire("a1")), PARAMS.with_(lora=slots.acquire("a2"))]
    )
    # Every step of the mixed run held rows of the base model and of both adapters.
    assert steps and all(s == {0, 1, 2} for s in steps), steps
    return {k: v.completions[0] for k, v in alone.items()}, dict(
        zip(("base", "a1", "a2"), (r.completions[0] for r in mixed))
    )


def _max_gap(a, b) -> float:
    return max(abs(x.logprob - y.logprob) for x, y in zip(a.steps, b.steps, strict=True))


def test_adapters_on_float_base_equal_merged_weights(adapters, merged_runs, monkeypatch):
    loaded = load_model("default", dtype=torch.float32)
    alone, mixed = _run(loaded, adapters, monkeypatch)
    for name in ("base", "a1", "a2"):
        ref = merged_runs[name]
        for got in (alone[name], mixed[name]):
            assert got.token_ids == ref.token_ids, name
            assert _max_gap(got, ref) < FLOAT_TOL, name
    # The adapters change the output (else the comparison above proves nothing).
    assert merged_runs["a1"].token_ids != merged_runs["base"].token_ids
    assert merged_runs["a2"].token_ids != merged_runs["base"].token_ids


def test_adapters_on_int4_base_equal_merged_weights(adapters, merged_runs, monkeypatch):
    """The served configuration: the quantized default model (int4, fused wqkv/w13) plus adapters
    vs the adapters merged into its float copy. The int4 kernel itself differs from the float
    copy (the base gap, measured where the two base runs agree); with an adapter, tokens must agree
    with the merged reference until a near-tie within twice that gap (at least 0.5 nats)."""
    loaded = load_model("default")
    assert loaded.model.layers[0].attention.wqkv is not None  # fused quantized projections
    alone, mixed = _run(loaded, adapters, monkeypatch)
    base_agreed = agree_up_to_near_tie(alone["base"], merged_runs["base"], 1.0)
    base_gap = _max_gap_prefix(alone["base"], merged_runs["base"], max(base_agreed, 1))
    # The default model is float (base + shipped adapter) re-quantized to int4: near-ties up to
    # ~0.2 nats flip and logprobs move by ~0.35 against its float copy, so the floor is 0.5 nats.
    tol = max(2 * base_gap, 0.5)
    for name in ("base", "a1", "a2"):
        for got in (alone[name], mixed[name]):
            agree_up_to_near_tie(got, merged_runs[name], tol)
        agree_up_to_near_tie(mixed[name], alone[name], tol)  # batching with other adapters changes nothing
        if name != "base":  # the adapter was applied: its tokens are not the base model's
            assert alone[name].token_ids != alone["base"].token_ids, name


def _max_gap_prefix(a, b, n: int) -> float:
    return max(abs(x.logprob - y.logprob) for x, y in zip(a.steps[:n], b.steps[:n], strict=True))


def test_adapter_errors(adapters, tmp_path):
    loaded = load_model("default")
    slots = LoraSlots(loaded.model, max_loras=1, max_rank=4)
    args = loaded.model.args
    with pytest.raises(LoraSlotError, match="rank 8 is above"):
        slots.load("a1", "x", *read_peft_weights(adapters["a1"], args))
    slots.load("a2", "x", *read_peft_weights(adapters["a2"], args))
    with pytest.raises(LoraSlotError, match="already loaded"):
        slots.load("a2", "x", *read_peft_weights(adapters["a2"], args))
    small = make_adapter(tmp_path / "small", get_config("tiny-llama3").args, rank=4, targets=("wq",), seed=3)
    with pytest.raises(CheckpointError, match="does not fit the model"):  # trained for another model
        read_peft_weights(small, args)
    with pytest.raises(CheckpointError, match="adapter_config.json is missing"):
        read_peft_weights(tmp_path, args)
    # The one slot is pinned by a live request even after unload: no other adapter may take it.
    pinned = slots.acquire("a2")
    slots.unload("a2")
    with pytest.raises(LoraSlotError, match="slots are in use"):
        slots.load("b", "x", *read_peft_weights(adapters["a2"], args))
    del pinned
    slots.load("b", "x", *read_peft_weights(adapters["a2"], args))
    assert slots.acquire("a2") is None
