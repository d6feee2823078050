"""Built-in tools against a local HTTP server that speaks the Brave Search and Wolfram Alpha API
shapes, the code interpreter in the real sandbox, and custom-tool registration."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qs, urlparse

import pytest

from lhama.errors import ToolError
from lhama.tools import sandbox
from lhama.tools.builtin import BraveSearch, WolframAlpha, as_tool, builtin_tool
from lhama.tools.registry import Tool, tool
from tests import needs

BRAVE_KEY, WOLFRAM_KEY = "brave-test-key", "wolfram-test-appid"
BRAVE_BODY = {
    "type": "search",
    "query": {"original": "llama"},
    "web": {
        "type": "search",
        "results": [
            {
                "title": f"Result {i}",
                "url": f"https://example.com/{i}",
                "description": f"About llamas, part {i}",
                "profile": {"name": "x", "img": "https://imgs/x.png"},
                "thumbnail": {"src": "https://t/x.jpg"},
                "extra_snippets": ["a", "b", "c", "d"],
                "language": "en",
                "family_friendly": True,
            }
            for i in range(8)
        ],
    },
    "news": {"results": [{"title": "News", "url": "https://news.example.com", "description": "fresh", "age": "1h"}]},
}
WOLFRAM_BODY = {
    "queryresult": {
        "success": True,
        "error": False,
        "numpods": 2,
        "pods": [
            {
                "title": "Input interpretation",
                "scanner": "Identity",
                "subpods": [{"title": "", "plaintext": "integral x^2 dx", "img": {"src": "https://img"}}],
            },
            {
                "title": "Indefinite integral",
                "subpods": [{"plaintext": "x^3/3 + constant"}],
                "states": [{"name": "More"}],
            },
            {"title": "Plot", "subpods": [{"plaintext": "", "img": {"src": "https://plot"}}]},
        ],
    }
}


class FakeAPI(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        FakeAPI.seen.append((u.path, q, dict(self.headers)))
        if u.path == "/res/v1/web/search":
            if self.headers.get("X-Subscription-Token") != BRAVE_KEY:
                return self._send(401, {"type": "ErrorResponse", "error": {"code": "SUBSCRIPTION_TOKEN_INVALID"}})
            if q.get("q") == "ratelimit":
                return self._send(429, {"error": "too many"})
            return self._send(200, BRAVE_BODY)
        if u.path == "/v2/query":
            if q.get("appid") != WOLFRAM_KEY:
                return self._send(
                    200, {"queryresult": {"success": False, "error": {"code": "1", "msg": "Invalid appid"}}}
                )
            if q.get("input") == "gibberish":
                return self._send(
                    200, {"queryresult": {"success": False, "error": False, "tips": {"text": "Check your spelling"}}}
                )
            return self._send(200, WOLFRAM_BODY)
        self._send(404, {"error": "not found"})


@pytest.fixture(scope="module")
def api():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_brave_search_client(api, monkeypatch):
    monkeypatch.setenv("BRAVE_SEARCH_API_KEY", BRAVE_KEY)
    t = builtin_tool("brave_search", base_url=api + "/res/v1/web/search", top_k=3)
    out = json.loads(t({"query": "llama"}))
    path, q, headers = FakeAPI.seen[-1]
    assert q["q"] == "llama" and headers["Accept"] == "application/json"
    assert out["query"] == "llama" and len(out["top_k"]) == 3
    assert out["top_k"][0] == {
        "title": "Result 0",
        "url": "https://example.com/0",
        "description": "About llamas, part 0",
        "extra_snippets": ["a", "b", "c"],
    }
    with pytest.raises(ToolError, match="rate limited"):
        t({"query": "ratelimit"})
    with pytest.raises(ToolError, match="refused"):
        BraveSearch(api_key="wrong", base_url=api + "/res/v1/web/search")("llama")
    with pytest.raises(ToolError, match="invalid arguments"):
        t({"q": "llama"})


def test_wolfram_alpha_client(api, monkeypatch):
    monkeypatch.setenv("WOLFRAM_ALPHA_API_KEY", WOLFRAM_KEY)
    monkeypatch.setenv("WOLFRAM_ALPHA_BASE_URL", api + "/v2/query")
    t = builtin_tool("wolfram_alpha")
    out = json.loads(t({"query": "integrate x^2"}))
    _, q, _ = FakeAPI.seen[-1]
    assert q == {"input": "integrate x^2", "appid": WOLFRAM_KEY, "format": "plaintext", "output": "json"}
    assert out == {
        "success": True,
        "pods": [
            {"title": "Input interpretation", "results": ["integral x^2 dx"]},
            {"title": "Indefinite integral", "results": ["x^3/3 + constant"]},
        ],
    }
    assert json.loads(t({"query": "gibberish"})) == {"success": False, "message": "Check your spelling"}
    with pytest.raises(ToolError, match="Invalid appid"):
        WolframAlpha(api_key="bad", base_url=api + "/v2/query")("2+2")


def test_missing_keys_and_unreachable_servers_are_clear_errors(monkeypatch):
    monkeypatch.delenv("BRAVE_SEARCH_API_KEY", raising=False)
    monkeypatch.delenv("WOLFRAM_ALPHA_API_KEY", raising=False)
    with pytest.raises(ToolError, match="BRAVE_SEARCH_API_KEY"):
        builtin_tool("brave_search")
    with pytest.raises(ToolError, match="WOLFRAM_ALPHA_API_KEY"):
        builtin_tool("wolfram_alpha")
    with pytest.raises(ToolError, match="failed"):
        BraveSearch(api_key="k", base_url="http://127.0.0.1:9/none", timeout=2)("x")
    with pytest.raises(ToolError, match="unknown built-in"):
        builtin_tool("file_search")


def test_code_interpreter_tool():
    needs.binary("bwrap", "bubblewrap")
    t = builtin_tool("code_interpreter")
    assert t.builtin and t.spec() == {"type": "code_interpreter"}
    assert t({"code": "print(sum(range(101)))"}) == "completed\n[stdout]\n5050\n[/stdout]"
    out = t({"code": "import sys\nprint('partial')\nsys.exit('boom')"})
    assert out.startswith("error (exit code 1)") and "[stdout]\npartial" in out and "boom" in out
    out = builtin_tool("code_interpreter", limits=sandbox.SandboxLimits(cpu_seconds=1))({"code": "while True: pass"})
    assert out.startswith("killed (cpu_time)")


def test_custom_tool_registration():
    @tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: list[int] | None = None):
        """Current weather for a city."""
        return {"city": city, "unit": unit, "temp": 21}

    assert isinstance(get_weather, Tool) and not get_weather.builtin
    assert get_weather.spec() == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"enum": ["celsius", "fahrenheit"], "default": "celsius"},
                    "days": {"type": "array", "items": {"type": "integer"}, "default": None},
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    assert json.loads(get_weather({"city": "Paris"})) == {"city": "Paris", "unit": "celsius", "temp": 21}
    with pytest.raises(ToolError, match="invalid arguments"):
        get_weather({"city": "Paris", "unit": "kelvin"})
    with pytest.raises(ToolError, match="invalid arguments"):
        get_weather({})

    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    search = tool(lambda q: f"found {q}", name="file_search", description="Search my files", parameters=schema)
    assert search({"q": "x"}) == "found x" and search.spec()["function"]["parameters"] == schema
    assert as_tool(search) is search and as_tool(len).name == "len"
    with pytest.raises(ToolError, match="valid JSON schema"):
        tool(lambda: 1, name="bad", parameters={"type": "nonsense"})
    with pytest.raises(ToolError, match="not a tool"):
        as_tool(42)


def test_package_exports_are_lazy():
    import subprocess
    import sys

    code = (
        "import sys; from lhama.tools import run_python, SandboxLimits; assert 'torch' not in sys.modules; "
        "from lhama.tools import Agent, tool, builtin_tool, Transcript, ToolCallStreamParser; print('ok')"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "ok", p.stderr
    import lhama.tools

    with pytest.raises(AttributeError):
        lhama.tools.not_a_tool
