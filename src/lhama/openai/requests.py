"""An OpenAI request -> what the engine runs: prompt token ids and one ``SamplingParams``.

One set of rules for every front end (the server's routes, batch jobs in and out of the
server): a sampling field a request leaves out takes lhama's one set of defaults
(``lhama.sampling_defaults``, as ``lhama chat`` and ``generate`` do; a missing ``seed`` samples
afresh, and a missing ``max_tokens`` is cut to what the context has left), a prompt that fills
the context is refused (never truncated), ``n`` and the
number of prompts are capped, fields we cannot honour are refused out loud, and
``response_format`` / a forced tool call become a grammar that constrains each choice
(``lhama.generate.constrained``). Every failure is a typed ``LhamaError`` naming the parameter,
raised before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pydantic import ValidationError

from lhama.errors import ContextLengthExceededError, LhamaError, SamplingError
from lhama.generate.sampling import SamplingParams
from lhama.openai.chat_tools import OutputPlan, messages_as_dicts, plan_output
from lhama.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RequestBody,
)
from lhama.sampling_defaults import REQUEST_SAMPLING_DEFAULTS, SamplingDefaults

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
EMBEDDINGS_URL = "/v1/embeddings"
REQUEST_MODELS = {CHAT_URL: ChatCompletionRequest, COMPLETIONS_URL: CompletionRequest, EMBEDDINGS_URL: EmbeddingRequest}


class InvalidRequestError(LhamaError, ValueError):
    """A request body that cannot be served: wrong type, missing field, unsupported option."""

    http_status = 400
    code = "invalid_value"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        if code:
            self.code = code


@dataclass(frozen=True)
class RequestLimits:
    max_n: int = 16  # largest ``n`` of one request
    max_choices: int = 64  # prompts x n of one completions request
    # What a request's omitted sampling fields take (``lhama serve --temperature ...`` sets them).
    defaults: SamplingDefaults = REQUEST_SAMPLING_DEFAULTS


@dataclass
class PreparedRequest:
    """A checked request: ``prompts`` (one for chat; completions may send several), the
    sampling parameters, and for chat the output plan (tools shown, grammar, tool-call parsing)."""

    kind: str  # "chat" | "completion"
    req: ChatCompletionRequest | CompletionRequest
    prompts: list[list[int]]
    params: SamplingParams
    plan: OutputPlan | None = None

    @property
    def grammar(self) -> str | None:
        return self.plan.grammar if self.plan else None

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.params.n


_SCALAR_TAGS = frozenset(
    {"str", "int", "float", "bool", "none", "constrained-int", "constrained-float", "constrained-str", "dict", "list"}
)
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


def _model_names() -> frozenset[str]:
    seen, todo = set(), [RequestBody]
    while todo:
        cls = todo.pop()
        seen.add(cls.__name__)
        todo += cls.__subclasses__()
    return frozenset(seen)


def _is_union_tag(part: str, parent) -> bool:
    """Pydantic adds the union member it tried to an error location (``str``, ``list[str]``,
    ``function-after[...]``, a model's name, a discriminator value): none of it is a parameter."""
    return (
        "[" in part
        or part in _SCALAR_TAGS
        or part in _model_names()
        or (parent == "response_format" and part in ("text", "json_object", "json_schema"))
    )


def param_path(loc) -> str | None:
    """A pydantic error location as OpenAI names a parameter: ``messages[0].content``,
    ``logit_bias.123``."""
    out, parent = "", None
    for i, p in enumerate(loc):
        if isinstance(p, int):
            out += f"[{p}]"
        elif not (i == 0 and p in _LOCATIONS) and not _is_union_tag(str(p), parent):
            out += ("." if out else "") + str(p)
        parent = p
    return out or None


_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"})


def validation_problem(errors: list[dict]) -> tuple[str | None, str, str]:
    """(param, message, code) for pydantic's errors: the most telling one - a value's own
    problem (out of range, invalid Unicode) over "not this type" from each union member tried.
    The code is ``invalid_sampling_parameter`` for a number out of range, else ``invalid_value``."""
    if not errors:
        return None, "body: invalid request", "invalid_value"

    def rank(e: dict) -> int:
        return (
            1 if e.get("type", "").endswith("_type") or e.get("type") in ("literal_error", "union_tag_invalid") else 0
        )

    first = min(errors, key=rank)
    param = param_path(first.get("loc", ()))
    msg = first.get("msg", "invalid request")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    code = "invalid_sampling_parameter" if first.get("type") in _RANGE_ERRORS else "invalid_value"
    return param, f"{param or 'body'}: {msg}{more}", code


def parse_request(
    url: str, body, *, default_model: str | None = None, urls=(CHAT_URL, COMPLETIONS_URL)
) -> ChatCompletionRequest | CompletionRequest | EmbeddingRequest:
    """The pydantic request for a batch line's ``url`` and ``body`` (HTTP routes get theirs from
    FastAPI, which checks the same models); ``default_model`` fills a missing ``model``."""
    model_cls = REQUEST_MODELS.get(url) if url in urls else None
    if model_cls is None:
        raise InvalidRequestError(f"url {url!r} is not supported; use {' or '.join(urls)}", "url", "unsupported_url")
    if not isinstance(body, dict):
        raise InvalidRequestError("'body' must be a JSON object", "body")
    if default_model is not None and body.get("model") is None:
        body = {**body, "model": default_model}
    try:
        return model_cls.model_validate(body)
    except ValidationError as e:
        param, message, code = validation_problem(e.errors())
        raise InvalidRequestError(message, param, code) from None


def check_token_ranges(req: ChatCompletionRequest | CompletionRequest, vocab_size: int | None) -> None:
    """What the schema cannot know: ``top_k`` and ``logit_bias`` ids against the vocabulary."""
    if vocab_size is None:
        return
    if req.top_k is not None and req.top_k > vocab_size:
        raise SamplingError(
            "top_k", f"must be at most the vocabulary size {vocab_size} (0 disables it), got {req.top_k}"
        )
    for key in req.logit_bias or {}:
        token = key.strip()
        if not (token.isascii() and token.isdigit()) or int(token) >= vocab_size:
            raise SamplingError(f"logit_bias.{key}", f"keys must be token ids in [0, {vocab_size - 1}], got {key!r}")


def sampling_params(
    req: ChatCompletionRequest | CompletionRequest,
    prompt_len: int,
    *,
    context: int,
    limits: RequestLimits = RequestLimits(),
    constrained: bool = False,
    vocab_size: int | None = None,
) -> SamplingParams:
    """``SamplingParams`` for ``req`` whose (longest) prompt has ``prompt_len`` tokens."""
    check_token_ranges(req, vocab_size)
    chat = isinstance(req, ChatCompletionRequest)
    defaults = limits.defaults
    budget_param, max_tokens = "max_tokens", req.max_tokens
    if chat and req.max_completion_tokens is not None:
        budget_param, max_tokens = "max_completion_tokens", req.max_completion_tokens
    if prompt_len >= context:
        err = ContextLengthExceededError(prompt_len, max_tokens if max_tokens and max_tokens > 0 else 1, context)
        err.param = "messages" if chat else "prompt"
        raise err
    if max_tokens is None:  # the default, cut to what fits: never a silently truncated prompt
        max_tokens = min(defaults.max_tokens, context - prompt_len)
    n = 1 if req.n is None else req.n
    if n > limits.max_n:
        raise SamplingError("n", f"must be <= {limits.max_n}, got {n}")
    stop = req.stop if req.stop is not None else ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stop) > 4:
        raise SamplingError("stop", f"at most 4 stop sequences, got {len(stop)}")
    if chat:
        want_lp, top = bool(req.logprobs), req.top_logprobs or 0
        if top and not want_lp:
            raise SamplingError("top_logprobs", "needs logprobs: true")
    else:
        if req.logprobs is not None and not 0 <= req.logprobs <= 5:
            raise SamplingError("logprobs", f"must be in [0, 5], got {req.logprobs}")
        want_lp, top = req.logprobs is not None, req.logprobs or 0
    if constrained and req.min_tokens:
        raise SamplingError("min_tokens", "cannot be combined with a JSON schema or a forced tool call")
    kw = {"max_tokens": max_tokens, "n": n, "stop": stop, "logprobs": want_lp, "top_logprobs": top}
    for f in fields(SamplingDefaults):
        if f.name != "max_tokens":
            value = getattr(req, f.name)
            kw[f.name] = getattr(defaults, f.name) if value is None else value
    for name in ("min_tokens", "ignore_eos"):
        if getattr(req, name) is not None:
            kw[name] = getattr(req, name)
    if req.logit_bias:
        kw["logit_bias"] = {int(k): float(v) for k, v in req.logit_bias.items()}
    try:
        return SamplingParams(**kw)
    except SamplingError as e:
        if e.param == "max_tokens" and budget_param != "max_tokens":
            raise SamplingError(budget_param, str(e).split(": ", 1)[-1]) from None
        raise


def vocab_size_of(loaded) -> int | None:
    args = getattr(loaded, "args", None)
    return getattr(args, "vocab_size", None)


def chat_prompt(chat_format, req: ChatCompletionRequest, plan: OutputPlan) -> list[int]:
    """The prompt ids of a chat request through the model's chat format."""
    messages = messages_as_dicts(req)
    try:
        ids = (
            chat_format.encode_dialog(messages, tools=plan.tools) if plan.tools else chat_format.encode_dialog(messages)
        )
    except LhamaError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise InvalidRequestError(
            f"the {chat_format.name} chat format cannot render these messages: {e}", "messages", "invalid_messages"
        ) from None
    return list(ids)


def completion_prompts(tokenizer, prompt) -> list[list[int]]:
    """A completions ``prompt`` (a string, strings, token ids, or lists of ids) as id lists."""
    bos = getattr(tokenizer, "bos_id", None) is not None
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt, bos=bos)]
    if not prompt:
        raise SamplingError("prompt", "must not be empty")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if all(isinstance(p, str) for p in prompt):
        return [tokenizer.encode(p, bos=bos) for p in prompt]
    return [list(p) for p in prompt]


def prepare_chat(
    loaded, req: ChatCompletionRequest, compiler, *, context: int, limits: RequestLimits = RequestLimits()
) -> PreparedRequest:
    """Check and render a chat request; ``compiler`` (a ``GrammarCompiler``) turns
    ``response_format`` and forced tool calls into a grammar."""
    for name in ("functions", "audio", "prediction"):
        if getattr(req, name):
            raise InvalidRequestError(f"'{name}' is not supported", name)
    plan = plan_output(req, compiler)
    ids = chat_prompt(loaded.chat_format, req, plan)
    params = sampling_params(
        req,
        len(ids),
        context=context,
        limits=limits,
        constrained=plan.grammar is not None,
        vocab_size=vocab_size_of(loaded),
    )
    return PreparedRequest("chat", req, [ids], params, plan)


def prepare_completion(
    loaded, req: CompletionRequest, *, context: int, limits: RequestLimits = RequestLimits()
) -> PreparedRequest:
    for name in ("suffix", "echo"):
        if getattr(req, name):
            raise SamplingError(name, "is not supported")
    prompts = completion_prompts(loaded.tokenizer, req.prompt)
    if len(prompts) > limits.max_choices:
        raise SamplingError("prompt", f"at most {limits.max_choices} prompts per request, got {len(prompts)}")
    params = sampling_params(
        req, max(len(p) for p in prompts), context=context, limits=limits, vocab_size=vocab_size_of(loaded)
    )
    if req.best_of is not None and req.best_of != params.n:
        raise SamplingError("best_of", "only best_of == n is supported")
    if len(prompts) * params.n > limits.max_choices:
        raise SamplingError("n", f"prompts x n must be <= {limits.max_choices}")
    return PreparedRequest("completion", req, prompts, params)


def prepare(
    loaded,
    req: ChatCompletionRequest | CompletionRequest,
    compiler,
    *,
    context: int,
    limits: RequestLimits = RequestLimits(),
) -> PreparedRequest:
    if isinstance(req, ChatCompletionRequest):
        return prepare_chat(loaded, req, compiler, context=context, limits=limits)
    return prepare_completion(loaded, req, context=context, limits=limits)


def engine_requests(prep: PreparedRequest, compiler) -> list[tuple[int, list[int], SamplingParams]]:
    """(first choice index, prompt, params) per engine request: one per prompt (the engine forks
    ``n`` samples), but with a grammar one per choice, each with its own constraint (a
    constraint is one sequence's state) and sample i seeded ``seed + i`` as the engine would."""
    n, out = prep.params.n, []
    for p, prompt in enumerate(prep.prompts):
        if prep.grammar is None:
            out.append((p * n, prompt, prep.params))
            continue
        for i in range(n):
            seed = None if prep.params.seed is None else prep.params.seed + i
            proc = compiler.constraint(prep.grammar)
            out.append((p * n + i, prompt, prep.params.with_(n=1, seed=seed, logits_processor=proc)))
    return out
