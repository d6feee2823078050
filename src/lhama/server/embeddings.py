"""``POST /v1/embeddings``: the loaded model's mean-pooled, unit-length hidden states
(``lhama.model.embedding``), one input at a time beside the engine thread."""

from __future__ import annotations

import asyncio
import base64
import struct

import torch
from fastapi import APIRouter, Request

from lhama.errors import ContextLengthExceededError, SamplingError
from lhama.model.embedding import mean_pooled_embedding
from lhama.openai.schemas import EmbeddingRequest
from lhama.server.errors import APIError

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
        raise SamplingError("input", f"at most {state.config.max_embedding_inputs} inputs per request, got {len(items)}")
    ctx, vocab = state.max_model_len, state.loaded.args.vocab_size
    for i, ids in enumerate(items):
        if not ids:
            raise SamplingError("input", f"input {i} is empty")
        if len(ids) > ctx:
            raise APIError(400, f"input {i}: {ContextLengthExceededError(len(ids), 0, ctx)}", param="input",
                           code="context_length_exceeded")
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
    return await embeddings_body(state, body)


async def embeddings_body(state, body: EmbeddingRequest, *, bypass_limit: bool = False) -> dict:
    state.check_model(body.model)
    dim = state.loaded.args.dim
    if body.dimensions is not None and body.dimensions != dim:
        raise SamplingError("dimensions", f"this model's embeddings have {dim} dimensions; omit the field or send {dim}")
    items = embedding_inputs(state, body.input)
    ticket = state.admit(bypass_limit=bypass_limit)
    try:
        def work():
            with state.embed_lock:
                return [mean_pooled_embedding(state.loaded.model, ids) for ids in items]

        vectors = await asyncio.to_thread(work)
    finally:
        ticket.release()
    n = sum(len(x) for x in items)
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": body.model, "usage": {"prompt_tokens": n, "total_tokens": n}}
