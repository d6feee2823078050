"""The Responses API's hosted tools on this server: ``file_search`` over lhama's vector stores and
``web_search`` through the Brave client run before the model writes (small models do not reliably
decide to search), their passages grounding the turn as a numbered system message; the code
interpreter runs the model's Python in the bubblewrap sandbox. Citations ``[n]`` in the answer
become ``file_citation`` / ``url_citation`` annotations.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from lhama.openai.responses_api import new_item_id
from lhama.server.errors import APIError

_CITATION = re.compile(r"\[(\d+)\]")
WEB_KEY_ENV = "BRAVE_SEARCH_API_KEY"


@dataclass
class Grounding:
    """What the searches found for one response: output items, the system text, citation targets."""

    items: list[dict] = field(default_factory=list)
    system_text: str | None = None
    sources: list[dict] = field(default_factory=list)  # by number - 1: {"kind", "file_id"/"url", "title"}

    def annotations(self, text: str) -> list[dict]:
        out = []
        for m in _CITATION.finditer(text):
            n = int(m.group(1))
            if not 1 <= n <= len(self.sources):
                continue
            s = self.sources[n - 1]
            if s["kind"] == "file":
                out.append({"type": "file_citation", "file_id": s["file_id"], "filename": s["title"], "index": m.end()})
            else:
                out.append(
                    {
                        "type": "url_citation",
                        "url": s["url"],
                        "title": s["title"],
                        "start_index": m.start(),
                        "end_index": m.end(),
                    }
                )
        return out


def check_web_search(tools: list[dict]) -> None:
    if any(t["type"] in ("web_search", "web_search_preview") for t in tools) and not os.environ.get(WEB_KEY_ENV):
        raise APIError(
            400,
            f"web_search needs a Brave Search API key on the server: start it with {WEB_KEY_ENV} "
            f"set, or leave the tool out",
            param="tools",
            code="web_search_unavailable",
        )


def last_user_text(items: list[dict]) -> str:
    for it in reversed(items):
        if it.get("type") == "message" and it.get("role") == "user":
            return "".join(p.get("text", "") for p in it["content"])
    return ""


def ground(state, tools: list[dict], query: str, include: list[str]) -> Grounding:
    """Run the request's file and web searches for ``query`` (blocking: call off the event loop)."""
    from lhama.rag.answer import SYSTEM_PROMPT

    g, blocks = Grounding(), []
    fs = [t for t in tools if t["type"] == "file_search"]
    if fs and query.strip():
        mgr = state.vector_stores
        ids = list(dict.fromkeys(i for t in fs for i in t["vector_store_ids"]))
        for i in ids:
            mgr.get(i)  # 404 for an unknown store
        k = max(int(t.get("max_num_results") or 5) for t in fs)
        hits = mgr.search(ids, query, k)
        results = []
        for h in hits:
            c = h.chunk
            g.sources.append({"kind": "file", "file_id": c.file_key, "title": c.file_name})
            blocks.append(f"[{len(g.sources)}] ({c.location})\n{c.text}")
            results.append(
                {
                    "file_id": c.file_key,
                    "filename": c.file_name,
                    "score": round(float(h.score), 6),
                    "text": c.text,
                    "attributes": {},
                }
            )
        g.items.append(
            {
                "id": new_item_id("fs"),
                "type": "file_search_call",
                "status": "completed",
                "queries": [query],
                "results": results if "file_search_call.results" in include else None,
            }
        )
    if any(t["type"] in ("web_search", "web_search_preview") for t in tools) and query.strip():
        from lhama.errors import ToolError
        from lhama.tools.builtin import BraveSearch

        try:
            found = json.loads(BraveSearch()(query)).get("top_k", [])
        except ToolError as e:
            raise APIError(502, f"web_search failed: {e}", param="tools", code="web_search_failed") from None
        for r in found:
            g.sources.append({"kind": "url", "url": r.get("url", ""), "title": r.get("title", "")})
            blocks.append(f"[{len(g.sources)}] ({r.get('title', '')} - {r.get('url', '')})\n{r.get('description', '')}")
        g.items.append(
            {
                "id": new_item_id("ws"),
                "type": "web_search_call",
                "status": "completed",
                "action": {
                    "type": "search",
                    "query": query,
                    "sources": [{"type": "url", "url": r.get("url", "")} for r in found],
                },
            }
        )
    if g.items:
        g.system_text = SYSTEM_PROMPT + (
            "\n\nSources:\n\n" + "\n\n".join(blocks) if blocks else "\n\nNo source matches this question."
        )
    return g


def run_code(code: str) -> str:
    """The sandbox's report (status, stdout, stderr) for ``code``; blocking."""
    from lhama.tools.builtin import CodeInterpreter

    return CodeInterpreter()(code)
