"""Llama 3.1's built-in tools: the code interpreter (``Environment: ipython``), Brave Search and
Wolfram Alpha. Real HTTP clients (httpx); keys come from the environment; base URLs can be
pointed elsewhere (a proxy, or a local server in tests). Results are trimmed to what the model
needs, as llama-stack trims them, so a search does not flood the context. ``as_tool`` turns
anything an agent is given (a Tool, a function, a built-in's name) into a ``Tool``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import httpx

from lhama.errors import ToolError
from lhama.tools.registry import Tool, tool
from lhama.tools.sandbox import SandboxLimits, run_python

BRAVE_URL = "https://api.search.brave.com/res/v1/web/search"
WOLFRAM_URL = "https://api.wolframalpha.com/v2/query"
QUERY_SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "string", "minLength": 1}},
    "required": ["query"],
    "additionalProperties": False,
}
CODE_SCHEMA = {
    "type": "object",
    "properties": {"code": {"type": "string"}},
    "required": ["code"],
    "additionalProperties": False,
}
BUILTIN_SCHEMAS = {"code_interpreter": CODE_SCHEMA, "brave_search": QUERY_SCHEMA, "wolfram_alpha": QUERY_SCHEMA}


def _key(tool: str, env: str, given: str | None) -> str:
    key = given or os.environ.get(env)
    if not key:
        raise ToolError(f"{tool} needs an API key: set the environment variable {env} (or pass api_key=).")
    return key


def _get(tool: str, url: str, *, params: dict, headers: dict, timeout: float) -> dict:
    try:
        r = httpx.get(url, params=params, headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise ToolError(f"{tool}: request to {url} failed: {e}") from None
    if r.status_code in (401, 403):
        raise ToolError(f"{tool}: the API key was refused (HTTP {r.status_code}); check it")
    if r.status_code == 429:
        raise ToolError(f"{tool}: rate limited (HTTP 429); try again later")
    if r.status_code >= 400:
        raise ToolError(f"{tool}: HTTP {r.status_code} from {url}: {r.text[:200]}")
    try:
        return r.json()
    except ValueError:
        raise ToolError(f"{tool}: {url} did not answer JSON") from None


@dataclass(frozen=True)
class BraveSearch:
    """``brave_search``: Brave's web search API (``X-Subscription-Token`` header)."""

    api_key: str | None = None
    base_url: str | None = None
    top_k: int = 5
    timeout: float = 20.0

    def __post_init__(self):
        object.__setattr__(self, "api_key", _key("brave_search", "BRAVE_SEARCH_API_KEY", self.api_key))
        object.__setattr__(self, "base_url", self.base_url or os.environ.get("BRAVE_SEARCH_BASE_URL") or BRAVE_URL)

    def __call__(self, query: str) -> str:
        data = _get(
            "brave_search",
            self.base_url,
            params={"q": query, "count": self.top_k},
            headers={"X-Subscription-Token": self.api_key, "Accept": "application/json"},
            timeout=self.timeout,
        )
        return json.dumps({"query": query, "top_k": trim_brave(data, self.top_k)}, ensure_ascii=False)


def trim_brave(data: dict, top_k: int) -> list[dict]:
    """Web results (then news), each as title, url, description, and extra snippets if any."""
    out = []
    for section in ("web", "news"):
        for r in (data.get(section) or {}).get("results") or []:
            item = {"title": r.get("title", ""), "url": r.get("url", ""), "description": r.get("description", "")}
            if r.get("extra_snippets"):
                item["extra_snippets"] = r["extra_snippets"][:3]
            if r.get("age"):
                item["age"] = r["age"]
            out.append(item)
    return out[:top_k]


@dataclass(frozen=True)
class WolframAlpha:
    """``wolfram_alpha``: the Full Results API (``appid``, plaintext pods as JSON)."""

    api_key: str | None = None
    base_url: str | None = None
    timeout: float = 30.0

    def __post_init__(self):
        object.__setattr__(self, "api_key", _key("wolfram_alpha", "WOLFRAM_ALPHA_API_KEY", self.api_key))
        object.__setattr__(self, "base_url", self.base_url or os.environ.get("WOLFRAM_ALPHA_BASE_URL") or WOLFRAM_URL)

    def __call__(self, query: str) -> str:
        data = _get(
            "wolfram_alpha",
            self.base_url,
            params={"input": query, "appid": self.api_key, "format": "plaintext", "output": "json"},
            headers={"Accept": "application/json"},
            timeout=self.timeout,
        )
        return json.dumps(trim_wolfram(data), ensure_ascii=False)


def trim_wolfram(data: dict) -> dict:
    """Pod titles and their plaintext; images, states and layout dropped."""
    qr = data.get("queryresult")
    if not isinstance(qr, dict):
        raise ToolError("wolfram_alpha: the answer has no 'queryresult'")
    if qr.get("error"):
        err = qr["error"] if isinstance(qr["error"], dict) else {}
        raise ToolError(f"wolfram_alpha: {err.get('msg', 'the API reported an error')}")
    if not qr.get("success"):
        tips = qr.get("tips") or {}
        return {"success": False, "message": tips.get("text", "Wolfram Alpha did not understand the query")}
    pods = []
    for pod in qr.get("pods") or []:
        texts = [s.get("plaintext") for s in pod.get("subpods") or [] if s.get("plaintext")]
        if texts:
            pods.append({"title": pod.get("title", ""), "results": texts})
    return {"success": True, "pods": pods}


@dataclass(frozen=True)
class CodeInterpreter:
    """``code_interpreter``: the model's Python, run in the bubblewrap sandbox."""

    limits: SandboxLimits = SandboxLimits()

    def __call__(self, code: str) -> str:
        return format_sandbox_result(run_python(code, limits=self.limits))


def format_sandbox_result(res) -> str:
    """What the model reads back in the ipython turn (llama-stack's layout: status, then the
    streams it produced)."""
    status = "completed" if res.ok else ("error" if res.killed_reason is None else f"killed ({res.killed_reason})")
    parts = [status if res.ok or res.killed_reason else f"{status} (exit code {res.exit_code})"]
    if res.stdout:
        parts.append(f"[stdout]\n{res.stdout.rstrip()}\n[/stdout]")
    if res.stderr:
        parts.append(f"[stderr]\n{res.stderr.rstrip()}\n[/stderr]")
    return "\n".join(parts)


def builtin_tool(name: str, **options) -> Tool:
    """A built-in tool by name; ``options`` go to its client (api_key, base_url, limits...).
    Missing keys fail here, before a model ever calls the tool."""
    if name == "code_interpreter":
        fn = CodeInterpreter(**options)
        return Tool(name, "Run Python code in a sandbox and see its output.", CODE_SCHEMA, fn)
    if name == "brave_search":
        return Tool(name, "Search the web with Brave Search.", QUERY_SCHEMA, BraveSearch(**options))
    if name == "wolfram_alpha":
        return Tool(name, "Ask Wolfram Alpha (math, science, units, facts).", QUERY_SCHEMA, WolframAlpha(**options))
    raise ToolError(f"unknown built-in tool {name!r}; built-ins are brave_search, wolfram_alpha, code_interpreter")


def as_tool(obj: Any) -> Tool:
    """A ``Tool`` from a Tool, a plain function (``registry.tool``), or a built-in's name."""
    if isinstance(obj, Tool):
        return obj
    if isinstance(obj, str):
        return builtin_tool(obj)
    if callable(obj):
        return tool(obj)
    raise ToolError(f"not a tool: {obj!r} (give a lhama.tools.Tool, a function, or a built-in tool name)")
