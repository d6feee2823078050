"""``POST /v1/embeddings``: the loaded model's mean-pooled, unit-length hidden states
(``lhama.model.embedding``), one input at a time in a worker thread beside the engine thread.

The worker takes the model's embedding lock per input, so concurrent embedding requests
interleave, and checks a stop flag between inputs: a client that disconnects stops its work
after the input being computed, and its admission ticket is released then - not after every
input is done (chat used to get 429s long after the embedding clients had gone)."""

from __future__ import annotations

import asyncio
import base64
import struct
import threading

import torch
from fastapi import APIRouter, Request

from lhama.errors import ContextLengthExceededError, SamplingError
from lhama.model.embedding import mean_pooled_embedding
from lhama.openai.schemas import EmbeddingRequest
from lhama.server.errors import APIError
from lhama.server.streaming import json_response, until_disconnect

ROUTE = "/v1/embeddings"
router = APIRouter()


def embedding_inputs(state, inp) -> list[list[int]]:
    tok = state.loaded.tokenizer
    if isinstance(inp, str):
        items = [tok.encode(inp)]
    elif not inp:
        raise SamplingError("input", "must not be empty")
    elif all(isinstance(x, int) for x in inp):
        items = [list(inp)]
    elif all(isinstance(x, str) for x in inp):
        items = [tok.encode(x) for x in inp]
    else:
        items = [list(x) for x in inp]
    if len(items) > state.config.max_embedding_inputs:
        raise SamplingError(
            "input", f"at most {state.config.max_embedding_inputs} inputs per request, got {len(items)}"
        )
    ctx, vocab = state.max_model_len, state.loaded.args.vocab_size
    for i, ids in enumerate(items):
        if not ids:
            raise SamplingError("input", f"input {i} is empty")
        if len(ids) > ctx:
            raise APIError(
                400,
                f"input {i}: {ContextLengthExceededError(len(ids), 0, ctx)}",
                param="input",
                code="context_length_exceeded",
            )
        if min(ids) < 0 or max(ids) >= vocab:
            raise SamplingError("input", f"input {i} has a token id outside the vocabulary (0..{vocab - 1})")
    return items


def _encode(vec: torch.Tensor, fmt: str):
    if fmt == "base64":  # OpenAI's base64: little-endian float32
        return base64.b64encode(struct.pack(f"<{vec.numel()}f", *vec.tolist())).decode()
    return vec.tolist()


@router.post(ROUTE, tags=["openai"], summary="Create embeddings (mean-pooled final hidden states, unit length)")
async def create_embeddings(body: EmbeddingRequest, request: Request):
    state = request.app.state.lhama
    items, lora = checked_inputs(state, body)
    ticket = state.admit()
    return json_response(await until_disconnect(request, _embeddings(state, body, items, lora), ticket))


def checked_inputs(state, body: EmbeddingRequest):
    """The request's token ids and its adapter (``model: NAME`` of a loaded LoRA adapter, else
    None); every client error is raised here, before admission."""
    lora = state.check_model(body.model)
    dim = state.loaded.args.dim
    if body.dimensions is not None and body.dimensions != dim:
        raise SamplingError(
            "dimensions", f"this model's embeddings have {dim} dimensions; omit the field or send {dim}"
        )
    return embedding_inputs(state, body.input), lora


async def embeddings_body(state, body: EmbeddingRequest, *, bypass_limit: bool = False) -> dict:
    """The response body (batch lines; they are bounded by the batch's own concurrency)."""
    items, lora = checked_inputs(state, body)
    ticket = state.admit(bypass_limit=bypass_limit)
    try:
        return await _embeddings(state, body, items, lora)
    finally:
        ticket.release()


class _Stopped(Exception):
    pass


def _embed_items(state, items: list[list[int]], stop: threading.Event, lora=None) -> list[torch.Tensor]:
    """Each input's vector; with ``lora`` (a ``LoraRequest``) through that adapter: the slots'
    step is per thread, so the engine thread's steps are not disturbed."""
    out = []
    for ids in items:
        while not state.embed_lock.acquire(timeout=0.05):  # another request's input is running
            if stop.is_set():
                raise _Stopped
        try:
            if stop.is_set():
                raise _Stopped
            if lora is not None:
                state.loras.begin_step([lora.slot] * len(ids))
            try:
                out.append(mean_pooled_embedding(state.loaded.model, ids))
            finally:
                if lora is not None:
                    state.loras.end_step()
        finally:
            state.embed_lock.release()
    return out


async def _embeddings(state, body: EmbeddingRequest, items: list[list[int]], lora=None) -> dict:
    stop = threading.Event()
    worker = asyncio.ensure_future(asyncio.to_thread(_embed_items, state, items, stop, lora))
    try:
        vectors = await asyncio.shield(worker)
    except asyncio.CancelledError:  # the client left (until_disconnect) or the server stops
        stop.set()
        await asyncio.gather(worker, return_exceptions=True)  # at most the input being computed
        state.metrics.cancelled.labels(ROUTE).inc()
        raise
    n = sum(len(x) for x in items)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    return {"object": "list", "data": data, "model": body.model, "usage": {"prompt_tokens": n, "total_tokens": n}}
