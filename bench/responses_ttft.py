"""Turn-2 time to first token of ``/v1/responses``: a conversation continued with
``previous_response_id`` (its prompt starts with turn 1's, so the engine's prefix cache serves
it) against the same conversation sent cold (a fresh first word, so no block is cached).

    python bench/responses_ttft.py --url http://127.0.0.1:8000 [--repeats 3] [--facts 40]

Prints median TTFTs, their ratio and the cached tokens each turn reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from openai import OpenAI

MODEL = "SmolLM2-135M-Instruct.Q4_1"


def facts(n: int, nonce: str) -> str:
    return f"{nonce}. " + " ".join(f"Fact {i}: box {i} holds {i * 7 % 13} red marbles." for i in range(n))


def ttft(client: OpenAI, **kw) -> tuple[float, object]:
    """(seconds to the first text delta, the final usage) of one streamed response."""
    t0, first, usage = time.perf_counter(), None, None
    with client.responses.stream(model=MODEL, temperature=0, max_output_tokens=4, **kw) as s:
        for e in s:
            if first is None and e.type == "response.output_text.delta":
                first = time.perf_counter() - t0
            if e.type in ("response.completed", "response.incomplete"):
                usage = e.response.usage
    return (first if first is not None else time.perf_counter() - t0), usage


def run(url: str, repeats: int, n_facts: int) -> dict:
    client = OpenAI(base_url=url.rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=600)
    warm, cold, cached = [], [], []
    for _ in range(repeats):
        text = facts(n_facts, uuid.uuid4().hex[:8])
        one = client.responses.create(
            model=MODEL, input=text + "\nHow many marbles are in box 3?", temperature=0, max_output_tokens=8
        )
        t, two = ttft(client, previous_response_id=one.id, input="And in box 5?", store=False)
        warm.append(t)
        cached.append((one.usage.input_tokens, two.input_tokens, two.input_tokens_details.cached_tokens))
        items = [
            {"role": "user", "content": facts(n_facts, uuid.uuid4().hex[:8]) + "\nHow many marbles are in box 3?"},
            {"role": "assistant", "content": one.output_text},
            {"role": "user", "content": "And in box 5?"},
        ]
        t, _ = ttft(client, input=items, store=False)
        cold.append(t)
    out = {
        "turn2_ttft_cached_s": statistics.median(warm),
        "turn2_ttft_cold_s": statistics.median(cold),
        "tokens(turn1 input, turn2 input, turn2 cached)": cached,
    }
    out["speedup"] = out["turn2_ttft_cold_s"] / out["turn2_ttft_cached_s"]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--facts", type=int, default=40)
    a = ap.parse_args()
    for k, v in run(a.url, a.repeats, a.facts).items():
        print(f"{k}: {v}")
