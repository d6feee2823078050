"""OpenAI request bodies (pydantic v2): what the server's routes take (they also make its OpenAPI
spec) and what every batch line's ``body`` is checked against.

Unknown fields are ignored (clients send ``user``, ``store``, ``metadata``...), but fields we
cannot honour are declared so they are refused out loud instead of silently dropped.

This is the one place where values are checked at the API boundary (the server's routes and
every batch job validate against these models): numbers are strict (``"5"`` is not 5, ``"yes"``
not true, as OpenAI answers 400) and range-checked (int64 bounds everywhere; temperature
[0, 2]; top_p (0, 1]; penalties [-2, 2]; logit_bias values [-100, 100]), and no text anywhere -
fields, list items, dict keys, nested JSON - may hold invalid Unicode (a lone surrogate such as
``"\\ud800"`` is a legal JSON escape but no text). Checks that need the model (``top_k`` and
logit_bias ids against the vocabulary, the context) are in ``lhama.openai.requests``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
# torch.Generator.manual_seed takes a signed or unsigned 64-bit value; the engine adds the
# sample index, so keep one below the top.
SEED_MIN, SEED_MAX = I64_MIN, 2**63 - 2

# Strict scalars: JSON's types as OpenAI checks them (an int is a fine float, a string is no number).
Bool = Annotated[bool, Strict()]
Int = Annotated[int, Strict(), Field(ge=I64_MIN, le=I64_MAX)]
Count = Annotated[int, Strict(), Field(ge=1, le=I64_MAX)]  # max_tokens, n, best_of...
NonNegInt = Annotated[int, Strict(), Field(ge=0, le=I64_MAX)]
TokenId = Annotated[int, Strict(), Field(ge=0, le=I64_MAX)]  # checked against the vocabulary later
Float = Annotated[float, Strict()]
Penalty = Annotated[float, Strict(), Field(ge=-2.0, le=2.0)]


def invalid_unicode(value, path: str = "") -> str | None:
    """Where ``value`` (str, list, dict, nested) holds a lone surrogate, as a sub-path, or None.
    Validated sub-models are skipped: their own fields were checked."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"{path or 'the text'} (character {e.start}: U+{ord(value[e.start]):04X})"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            bad = invalid_unicode(k, f"{path} key") if isinstance(k, str) else None
            bad = bad or invalid_unicode(v, f"{path}.{k}" if path else str(k))
            if bad:
                return bad
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            bad = invalid_unicode(v, f"{path}[{i}]")
            if bad:
                return bad
    return None


class RequestBody(BaseModel):
    """Base of every body: unknown fields ignored, no NaN/inf, aliases accepted, no invalid
    Unicode in any field."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value):
        bad = invalid_unicode(value)
        if bad:
            raise ValueError(
                f"invalid Unicode in {bad}: a lone surrogate or a byte that is not UTF-8 is not text; send valid UTF-8"
            )
        return value


class TextPart(RequestBody):
    type: Literal["text"]
    text: str


class FunctionCall(RequestBody):
    name: str
    arguments: str = "{}"  # a JSON-encoded object, as OpenAI sends it


class ToolCall(RequestBody):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(RequestBody):
    role: Literal["system", "developer", "user", "assistant", "tool", "ipython"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(RequestBody):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: Bool | None = None


class Tool(RequestBody):
    type: Literal["function"] = "function"
    function: FunctionDef


class FileSearchTool(RequestBody):
    """Server-side retrieval from ``/v1/vector_stores`` (see ``lhama.server.vector_stores``)."""

    type: Literal["file_search"]
    vector_store_ids: list[str] = Field(default_factory=list)
    max_num_results: Annotated[int, Strict()] | None = Field(default=None, ge=1, le=50)
    filters: dict[str, Any] | None = None  # refused when set: not implemented
    ranking_options: dict[str, Any] | None = None  # refused when set: not implemented


class NamedFunction(RequestBody):
    name: str


class NamedToolChoice(RequestBody):
    type: Literal["function"] = "function"
    function: NamedFunction


class ResponseFormatText(RequestBody):
    type: Literal["text"]


class ResponseFormatJSONObject(RequestBody):
    type: Literal["json_object"]


class JSONSchemaSpec(RequestBody):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: Bool | None = None


class ResponseFormatJSONSchema(RequestBody):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema, Field(discriminator="type")
]


class StreamOptions(RequestBody):
    include_usage: Bool | None = False


class _Sampling(RequestBody):
    """Fields shared by chat and text completions (plus vLLM-style extensions)."""

    model: str
    max_tokens: Count | None = None
    temperature: Annotated[Float, Field(ge=0.0, le=2.0)] | None = None  # OpenAI's range; the web chat relies on it
    top_p: Annotated[Float, Field(gt=0.0, le=1.0)] | None = None
    n: Count | None = None  # capped per server (RequestLimits.max_n)
    stop: str | list[str] | None = None
    seed: Annotated[int, Strict(), Field(ge=SEED_MIN, le=SEED_MAX)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stream: Bool | None = False
    stream_options: StreamOptions | None = None
    # token id (a decimal string) -> bias; ids are checked against the vocabulary in requests.py
    logit_bias: dict[str, Annotated[Float, Field(ge=-100.0, le=100.0)]] | None = None
    user: str | None = None
    # extensions
    top_k: NonNegInt | None = None  # 0 disables; at most the vocabulary size (requests.py)
    min_p: Annotated[Float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[Float, Field(gt=0.0, le=I64_MAX)] | None = None
    min_tokens: NonNegInt | None = None
    ignore_eos: Bool | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Count | None = None
    logprobs: Bool | None = False
    top_logprobs: NonNegInt | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: Bool | None = None
    response_format: ResponseFormat | None = None
    # Refused when set: legacy function calling (use tools), audio output, predicted outputs.
    functions: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    # ``{"type": "file_search"}`` entries of ``tools``, moved here before validation so function
    # tools keep their own error messages (lhama.server.vector_stores runs them).
    file_search_tools: list[FileSearchTool] | None = None

    @model_validator(mode="before")
    @classmethod
    def _split_file_search(cls, data):
        tools = data.get("tools") if isinstance(data, dict) else None
        if isinstance(tools, list) and any(isinstance(t, dict) and t.get("type") == "file_search" for t in tools):
            fs = [t for t in tools if isinstance(t, dict) and t.get("type") == "file_search"]
            rest = [t for t in tools if not (isinstance(t, dict) and t.get("type") == "file_search")]
            data = {**data, "tools": rest or None, "file_search_tools": fs}
        return data


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    logprobs: NonNegInt | None = None
    echo: Bool | None = False
    suffix: str | None = None
    best_of: Count | None = None


class EmbeddingRequest(RequestBody):
    model: str
    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Count | None = None
    user: str | None = None


class BatchCreateRequest(RequestBody):
    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None
