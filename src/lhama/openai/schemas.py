"""OpenAI request bodies (pydantic v2): what the server's routes take (they also make its OpenAPI
spec) and what every batch line's ``body`` is checked against.

Unknown fields are ignored (clients send ``user``, ``store``, ``metadata``...), but fields we
cannot honour are declared so they are refused out loud instead of silently dropped. Value
ranges that ``SamplingParams`` already checks are left to it, so the two never disagree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# torch.Generator.manual_seed takes a signed or unsigned 64-bit value; the engine adds the
# sample index, so keep one below the top.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 2


class RequestBody(BaseModel):
    """Base of every body: unknown fields ignored, no NaN/inf, aliases accepted."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)


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
    strict: bool | None = None


class Tool(RequestBody):
    type: Literal["function"] = "function"
    function: FunctionDef


class FileSearchTool(RequestBody):
    """Server-side retrieval from ``/v1/vector_stores`` (see ``lhama.server.vector_stores``)."""

    type: Literal["file_search"]
    vector_store_ids: list[str] = Field(default_factory=list)
    max_num_results: int | None = Field(default=None, ge=1, le=50)
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
    strict: bool | None = None


class ResponseFormatJSONSchema(RequestBody):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema,
                           Field(discriminator="type")]


class StreamOptions(RequestBody):
    include_usage: bool | None = False


class _Sampling(RequestBody):
    """Fields shared by chat and text completions (plus vLLM-style extensions)."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None  # refused when non-empty: not implemented
    user: str | None = None
    # extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
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
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(RequestBody):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class BatchCreateRequest(RequestBody):
    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None
