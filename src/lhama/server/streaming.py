"""Response plumbing shared by the generation routes: server-sent events, the ticket a
streaming response holds until it really ends, and cancelling work when a non-streaming client
goes away. The bodies themselves are ``lhama.openai.responses``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lhama.server.errors import APIError, error_body
from lhama.server.generation import engine_error

log = logging.getLogger("lhama.server")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLIENT_CLOSED = 499  # nginx's "client closed request": only ever seen in metrics


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


async def sse_guard(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Once a stream has started its status is 200; a later failure becomes an error event."""
    try:
        async for chunk in events:
            yield chunk
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as e:
        err = e if isinstance(e, APIError) else engine_error(e)
        if err.status >= 500:
            log.exception("stream failed")
        yield sse(error_body(err.status, err.message, err.param, err.code))
        yield SSE_DONE


class TicketedStream(StreamingResponse):
    """A streaming response that releases its queue ticket however it ends - also when the
    client left before the first byte, when the body generator never even started."""

    def __init__(self, events: AsyncIterator[bytes], ticket):
        super().__init__(sse_guard(events), media_type="text/event-stream", headers=SSE_HEADERS)
        self.ticket = ticket

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.ticket.release()


async def until_disconnect(request: Request, work: Awaitable, ticket) -> object:
    """Await ``work`` (a coroutine building a JSON body), cancelling it - and so aborting its
    engine requests - when the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                try:
                    return task.result()
                except APIError:
                    raise
                except Exception as e:
                    err = engine_error(e)
                    if err.status >= 500:
                        log.error("generation failed: %r", e)
                    raise err from e
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return Response(status_code=CLIENT_CLOSED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        ticket.release()


def json_response(body) -> Response:
    return body if isinstance(body, Response) else JSONResponse(body)
