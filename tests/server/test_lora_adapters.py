"""Per-request LoRA adapters over HTTP: a real ``lhama serve`` with ``--lora NAME=PATH``, adapters
loaded and unloaded at run time, requests for several adapters and the base model at once,
through the official ``openai`` client and httpx."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from lhama.loader import load_model
from lhama.model.configs import get_config
from tests.engine.lora_adapters import make_adapter
from tests.serving import MODEL, ServerProcess

PROMPT = "Write one sentence about the sea:"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    args = load_model("default").args
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a1": make_adapter(root / "a1", args, rank=8, targets=("all",), seed=1),
        "a2": make_adapter(root / "a2", args, rank=4, targets=("wq", "wv", "w2"), seed=2),
        "big": make_adapter(root / "big", args, rank=16, targets=("wq",), seed=3),
        "foreign": make_adapter(root / "foreign", get_config("tiny-llama3").args, rank=4, targets=("wq",), seed=4),
    }


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory, adapters):
    srv = ServerProcess(
        tmp_path_factory.mktemp("lora-data"),
        "--lora",
        f"a1={adapters['a1']}",
        "--max-loras",
        "3",
        "--max-lora-rank",
        "8",
        timeout=600,
    )
    yield srv
    srv.stop()


def _complete(client, model: str) -> str:
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
    assert r.model == model
    return r.choices[0].text


def _steps(client, model: str) -> list[tuple[str, dict[str, float]]]:
    """Greedy tokens of PROMPT with each step's top-4 logprobs."""
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=4)
    lp = r.choices[0].logprobs
    return list(zip(lp.tokens, lp.top_logprobs, strict=True))


def _agree_up_to_near_tie(got, ref, tol: float) -> int:
    """How many leading tokens agree; the first that differs must be a near-tie of ``ref``."""
    for i, ((g, _), (r, top)) in enumerate(zip(got, ref)):
        if g != r:
            assert g in top and top[r] - top[g] <= tol, (i, g, r, top)
            return i
    return min(len(got), len(ref))


def _moved(a, b) -> float:
    """The largest change of a top-4 logprob between two greedy runs, over the steps up to and
    including the first where their tokens differ (inf if a token one ranks is missing in the
    other's top 4 there)."""
    moved = 0.0
    for (ta, top_a), (tb, top_b) in zip(a, b):
        for tok, lp in top_a.items():
            moved = max(moved, abs(lp - top_b[tok]) if tok in top_b else float("inf"))
        if ta != tb:
            break
    return moved


def _post(srv, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{srv.base}/{route}", json=body, timeout=120)


def test_adapters_served_per_request(lora_server, adapters):
    client = openai.OpenAI(base_url=lora_server.base, api_key="unused", max_retries=0, timeout=120)
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {MODEL, "a1"}
    assert cards["a1"].parent == MODEL
    base, a1 = _complete(client, MODEL), _complete(client, "a1")
    assert base != a1

    r = _post(lora_server, "load_lora_adapter", {"lora_name": "a2", "lora_path": str(adapters["a2"])})
    assert r.status_code == 200, r.text
    assert {m.id for m in client.models.list().data} == {MODEL, "a1", "a2"}
    a2 = _complete(client, "a2")
    chat = client.chat.completions.create(
        model="a2", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    assert chat.model == "a2" and chat.choices[0].message.content

    # Base and both adapters at once (the engine batches them into the same steps): each gets
    # what it gets alone. Exactly so up to rounding: an adapter's low-rank fp32 matmuls round
    # differently at another row count, and the int8 activations of the GGUF block kernels can
    # turn that into another greedy token at a near-tie (docs/server.md; `--deterministic` is
    # bitwise). So tokens agree until they end or differ where the alone run ranks the batched
    # token within 0.5 nats of its own.
    alone = {m: _steps(client, m) for m in (MODEL, "a1", "a2")}
    models = [MODEL, "a1", "a2"] * 3
    with ThreadPoolExecutor(len(models)) as pool:
        batched = list(pool.map(lambda m: (m, _steps(client, m)), models))
    for m, got in batched:
        _agree_up_to_near_tie(got, alone[m], 0.5)
    # Each adapter moves the model's distribution. Not asserted on the text: a random rank-4
    # adapter can leave 12 greedy tokens as they were (a2's ' calm' vs ' a' were 0.03 nats apart
    # with bf16 prompt rows on an AMX Xeon).
    for x, y in ((MODEL, "a1"), (MODEL, "a2"), ("a1", "a2")):
        assert _moved(alone[x], alone[y]) > 0.1, (x, y)

    assert _post(lora_server, "unload_lora_adapter", {"lora_name": "a2"}).status_code == 200
    with pytest.raises(openai.NotFoundError) as e:
        _complete(client, "a2")
    assert e.value.code == "model_not_found" and e.value.body["param"] == "model"
    assert {m.id for m in client.models.list().data} == {MODEL, "a1"}
    # Loaded again under another name, the same folder gives the same output.
    assert (
        _post(lora_server, "load_lora_adapter", {"lora_name": "a2-again", "lora_path": str(adapters["a2"])}).status_code
        == 200
    )
    assert _complete(client, "a2-again") == a2


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"lora_name": "a1", "lora_path": "ADAPTER:a2"}, 400, "already loaded"),
        ({"lora_name": "x", "lora_path": "/no/such/folder"}, 400, "adapter_config.json is missing"),
        ({"lora_name": "x", "lora_path": "ADAPTER:big"}, 400, "rank 16 is above"),
        ({"lora_name": "x", "lora_path": "ADAPTER:foreign"}, 400, "does not fit the model"),
        ({"lora_name": MODEL, "lora_path": "ADAPTER:a2"}, 400, "base model's name"),
        ({"lora_name": "x"}, 400, "lora_path"),
    ],
)
def test_load_errors_are_clear_4xx(lora_server, adapters, body, status, words):
    if str(body.get("lora_path", "")).startswith("ADAPTER:"):
        body = dict(body, lora_path=str(adapters[body["lora_path"].split(":", 1)[1]]))
    r = _post(lora_server, "load_lora_adapter", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] + str(err.get("param")), err


def test_unknown_adapter_is_404(lora_server):
    r = _post(lora_server, "unload_lora_adapter", {"lora_name": "never-loaded"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    client = openai.OpenAI(base_url=lora_server.base, api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="never-loaded", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.code == "model_not_found"


def test_runtime_loading_needs_enable_lora(server, adapters):
    r = _post(server, "load_lora_adapter", {"lora_name": "a2", "lora_path": str(adapters["a2"])})
    assert r.status_code == 400 and "--enable-lora" in r.json()["error"]["message"]


def test_responses_and_embeddings_honour_adapters(lora_server):
    """``model: NAME`` picks the adapter in /v1/responses (the same text as chat completions
    through it) and /v1/embeddings (another vector than the base model's); unknown names are 404."""
    client = openai.OpenAI(base_url=lora_server.base, api_key="unused", max_retries=0, timeout=120)

    def chat(model, prompt):
        msgs = [{"role": "user", "content": prompt}]
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=0)
        return r.choices[0].message.content

    def respond(model, prompt):
        r = client.responses.create(model=model, input=prompt, max_output_tokens=10, temperature=0, store=False)
        assert r.model == model
        return r.output_text

    # A random adapter changes some greedy answers, not every one: take the first prompt where
    # a1's chat answer differs from the base's, so that equal texts prove which weights answered.
    prompts = [PROMPT, "Write one sentence about the moon:", "Name a colour."]
    prompt = next((p for p in prompts if chat("a1", p) != chat(MODEL, p)), None)
    assert prompt is not None, "a1 changes none of the greedy chat answers"
    assert respond("a1", prompt) == chat("a1", prompt) != chat(MODEL, prompt) == respond(MODEL, prompt)

    def embed(model):
        return client.embeddings.create(model=model, input=PROMPT).data[0].embedding

    base, a1 = embed(MODEL), embed("a1")
    assert len(base) == len(a1) and base != a1 and embed("a1") == a1
    for call in (lambda: respond("nope", PROMPT), lambda: embed("nope")):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.code == "model_not_found"
