"""OpenAI request bodies to engine inputs, engine results to OpenAI response bodies.

Used by the offline batch job (``lhama.engine.batch``); covers ``/v1/chat/completions`` and
``/v1/completions`` with the sampling fields the engine supports (plus a few vLLM-style
extensions: ``top_k``, ``min_p``, ``min_tokens``, ``repetition_penalty``, ``ignore_eos``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from lhama.engine.outputs import RequestResult
from lhama.errors import LhamaError, SamplingError
from lhama.generate.loop import Completion
from lhama.generate.sampling import SamplingParams

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"


class InvalidRequestError(LhamaError, ValueError):
    """A request body the engine cannot serve (missing field, wrong type, unsupported option)."""

    http_status = 400
    code = "invalid_request"


@dataclass
class PreparedRequest:
    kind: str  # "chat" | "completion"
    prompts: list[list[int]]  # one for chat; completions may batch several prompts
    params: SamplingParams
    model: str


_EXTENSIONS = {"top_k": "top_k", "min_p": "min_p", "min_tokens": "min_tokens",
               "repetition_penalty": "repetition_penalty", "ignore_eos": "ignore_eos"}
_UNSUPPORTED = ("suffix", "audio", "prediction", "functions", "logit_bias")


def _num(body: dict, key: str, types, default):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) and types is not bool:
        raise SamplingError(key, f"must be a number, got {v!r}")
    if not isinstance(v, types):
        raise SamplingError(key, f"has the wrong type ({type(v).__name__})")
    return v


def sampling_params(body: dict, *, kind: str, prompt_len: int, context: int) -> SamplingParams:
    for key in _UNSUPPORTED:
        if body.get(key) not in (None, [], {}):
            raise InvalidRequestError(f"'{key}' is not supported")
    rf = body.get("response_format")
    if rf and (not isinstance(rf, dict) or rf.get("type") not in ("text", None)):
        raise InvalidRequestError("response_format other than text is not supported")
    if kind == "chat":
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        max_tokens = body.get("max_tokens", 16)  # the OpenAI default for completions
    if max_tokens is None:
        max_tokens = max(1, context - prompt_len)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise SamplingError("max_tokens", f"must be an integer, got {max_tokens!r}")
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise SamplingError("stop", "must be a string or a list of strings")
    if len(stop) > 4:
        raise SamplingError("stop", f"at most 4 stop strings, got {len(stop)}")
    kw = dict(
        max_tokens=max_tokens,
        temperature=float(_num(body, "temperature", (int, float), 1.0)),
        top_p=float(_num(body, "top_p", (int, float), 1.0)),
        n=_num(body, "n", int, 1),
        seed=_num(body, "seed", int, None),
        stop=tuple(stop),
        presence_penalty=float(_num(body, "presence_penalty", (int, float), 0.0)),
        frequency_penalty=float(_num(body, "frequency_penalty", (int, float), 0.0)),
    )
    if kind == "chat":
        want = body.get("logprobs") or False
        if not isinstance(want, bool):
            raise SamplingError("logprobs", "must be true or false for chat completions")
        top = _num(body, "top_logprobs", int, 0)
        if top and not want:
            raise SamplingError("top_logprobs", "needs logprobs: true")
        kw.update(logprobs=want, top_logprobs=top)
    else:
        lp = _num(body, "logprobs", int, None)
        if lp is not None:
            if not 0 <= lp <= 5:
                raise SamplingError("logprobs", f"must be in [0, 5] for completions, got {lp}")
            kw.update(logprobs=True, top_logprobs=lp)
        if body.get("echo"):
            raise InvalidRequestError("'echo' is not supported")
        best_of = body.get("best_of")
        if best_of not in (None, kw["n"]):
            raise InvalidRequestError("'best_of' other than n is not supported")
    for key, field in _EXTENSIONS.items():
        if key in body and body[key] is not None:
            kw[field] = body[key] if field == "ignore_eos" else _num(body, key, (int, float), None)
    if "top_k" in kw:
        kw["top_k"] = int(kw["top_k"])
    if "min_tokens" in kw:
        kw["min_tokens"] = int(kw["min_tokens"])
    return SamplingParams(**kw)


def prepare_request(loaded, url: str, body: dict, context: int) -> PreparedRequest:
    if not isinstance(body, dict):
        raise InvalidRequestError("'body' must be a JSON object")
    tok = loaded.tokenizer
    if url == CHAT_URL:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("'messages' must be a non-empty list")
        tools = body.get("tools") or None
        ids = loaded.chat_format.encode_dialog(messages, tools=tools) if tools else \
            loaded.chat_format.encode_dialog(messages)
        prompts, kind = [list(ids)], "chat"
    elif url == COMPLETIONS_URL:
        prompt = body.get("prompt")
        bos = getattr(tok, "bos_id", None) is not None
        if isinstance(prompt, str):
            prompts = [tok.encode(prompt, bos=bos)]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompts = [list(prompt)]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = [tok.encode(p, bos=bos) for p in prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
            prompts = [list(p) for p in prompt]
        else:
            raise InvalidRequestError("'prompt' must be a string, a list of strings, or token ids")
        kind = "completion"
    else:
        raise InvalidRequestError(f"unsupported url {url!r}; use {CHAT_URL} or {COMPLETIONS_URL}")
    params = sampling_params(body, kind=kind, prompt_len=max(len(p) for p in prompts), context=context)
    return PreparedRequest(kind, prompts, params, str(body.get("model") or loaded.name))


# -- responses ------------------------------------------------------------------------------
def _token_text(tok, token_id: int) -> tuple[str, list[int]]:
    b = tok.token_bytes(token_id)
    return b.decode("utf-8", errors="replace"), list(b)


def _usage(results: list[RequestResult]) -> dict:
    p = sum(r.prompt_tokens for r in results)
    c = sum(r.completion_tokens for r in results)
    cached = sum(r.cached_tokens for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _chat_logprobs(tok, comp: Completion) -> dict:
    content = []
    for step in comp.steps[:len(comp.token_ids)]:
        text, b = _token_text(tok, step.token_id)
        tops = []
        for tid, lp in step.top_logprobs or []:
            t, tb = _token_text(tok, tid)
            tops.append({"token": t, "logprob": lp, "bytes": tb})
        content.append({"token": text, "logprob": step.logprob, "bytes": b, "top_logprobs": tops})
    return {"content": content}


def chat_completion_body(loaded, prep: PreparedRequest, result: RequestResult) -> dict:
    choices = []
    for i, comp in enumerate(result.completions):
        finish = comp.finish_reason
        if finish == "stop" and isinstance(comp.stop_reason, str):
            message = {"role": "assistant", "content": comp.text}
        else:
            decoded = loaded.chat_format.decode_assistant(comp.token_ids)
            # Only OpenAI's message fields (chat formats may add their own, e.g. stop_reason).
            message = {"role": "assistant", "content": decoded.get("content", comp.text)}
            if decoded.get("tool_calls"):
                message["tool_calls"] = decoded["tool_calls"]
                finish = "tool_calls"
        choices.append({"index": i, "message": message,
                        "logprobs": _chat_logprobs(loaded.tokenizer, comp) if prep.params.logprobs else None,
                        "finish_reason": finish})
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": prep.model, "choices": choices, "usage": _usage([result])}


def _completion_logprobs(tok, comp: Completion) -> dict:
    tokens, lps, tops, offsets = [], [], [], []
    pos = 0
    for step in comp.steps[:len(comp.token_ids)]:
        text, _ = _token_text(tok, step.token_id)
        tokens.append(text)
        lps.append(step.logprob)
        tops.append({_token_text(tok, t)[0]: lp for t, lp in step.top_logprobs or []} or None)
        offsets.append(pos)
        pos += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def text_completion_body(loaded, prep: PreparedRequest, results: list[RequestResult]) -> dict:
    choices = []
    for r in results:  # prompt-major, then sample index, as OpenAI orders them
        for comp in r.completions:
            choices.append({"index": len(choices), "text": comp.text,
                            "logprobs": _completion_logprobs(loaded.tokenizer, comp) if prep.params.logprobs else None,
                            "finish_reason": comp.finish_reason})
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": prep.model, "choices": choices, "usage": _usage(results)}
