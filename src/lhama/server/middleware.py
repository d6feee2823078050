"""Pure ASGI middleware (Starlette's BaseHTTPMiddleware would buffer streams and hide client
disconnects): request metrics, the body-size limit, API-key auth, and broken UTF-8 in JSON
bodies made nameable."""

from __future__ import annotations

import hmac
import json
import re

from lhama.server.errors import error_body


async def _send_error(send, status: int, message: str, code: str, headers: dict | None = None) -> None:
    body = json.dumps(error_body(status, message, None, code)).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Counts every HTTP request by route template (not raw path: ids would explode the label
    set), method and status."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_progress.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "other")
            self.metrics.requests.labels(label, scope["method"], str(status["code"])).inc()


class BodyLimitMiddleware:
    """413 for bodies over the limit, whether announced by Content-Length or streamed chunked."""

    def __init__(self, app, max_bytes: int, max_file_bytes: int):
        self.app, self.max_bytes, self.max_file_bytes = app, max_bytes, max_file_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_file_bytes if scope["path"] == "/v1/files" else self.max_bytes
        msg = f"the request body is larger than this server accepts ({limit} bytes)"
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                return await _send_error(send, 413, msg, "request_too_large")
        seen = {"bytes": 0, "started": False, "refused": False}

        async def receive_wrapper():
            message = await receive()
            if message["type"] == "http.request" and not seen["refused"]:
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > limit and not seen["started"]:
                    # Answer now and tell the app the client left, so it stops reading; whatever
                    # it then tries to send is dropped below.
                    seen["refused"] = seen["started"] = True
                    await _send_error(send, 413, msg, "request_too_large")
                    return {"type": "http.disconnect"}
            return message

        async def send_wrapper(message):
            if seen["refused"]:
                return
            if message["type"] == "http.response.start":
                seen["started"] = True
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)


class APIKeyMiddleware:
    """``Authorization: Bearer <key>`` on every /v1 route. The page, /health and /metrics are
    open: the page asks for the key itself, probes and scrapers need none."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1") or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        auth = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return await _send_error(
                send,
                401,
                "Missing API key: send 'Authorization: Bearer <key>'.",
                "missing_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(token.strip(), self.key):
            return await _send_error(
                send, 401, "Incorrect API key provided.", "invalid_api_key", {"WWW-Authenticate": "Bearer"}
            )
        return await self.app(scope, receive, send)


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def escape_invalid_utf8(body: bytes) -> bytes:
    """``body`` with every byte that is not UTF-8 written as the JSON escape of a lone surrogate
    (``\\udcXX``, Python's surrogateescape): the body still parses, and the request models,
    which refuse lone surrogates in any field, then name the field that held the broken bytes."""
    try:
        body.decode("utf-8")
        return body
    except UnicodeDecodeError:
        text = body.decode("utf-8", "surrogateescape")
        return _ESCAPED_BYTE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8")


class Utf8JsonMiddleware:
    """Broken UTF-8 in a JSON body is a 400 naming its field (``messages[0].content``), not
    "There was an error parsing the body". Only JSON bodies are touched; they are already
    capped by ``BodyLimitMiddleware``, which runs outside this one."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        ctype = dict(scope.get("headers", [])).get(b"content-type", b"")
        if not ctype.split(b";")[0].strip().lower().endswith(b"json"):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before the body was whole
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = escape_invalid_utf8(b"".join(chunks))
        return await self.app(
            scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send
        )


def _replay(messages: list[dict], receive):
    """A ``receive`` that hands out ``messages`` first, then defers to the real one (disconnects)."""
    pending = list(messages)

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
