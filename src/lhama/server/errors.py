"""Every error leaves the server in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Typed ``lhama.errors`` map to their one ``http_status``; request-validation failures (bad JSON,
wrong types, out-of-range fields) are 400 naming the parameter, never FastAPI's default 422,
because OpenAI clients only know 400.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lhama.errors import LhamaError
from lhama.openai.requests import validation_problem

log = logging.getLogger("lhama.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


class APIError(Exception):
    """An error raised by a route, with everything the response needs."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def _printable(text: str | None) -> str | None:
    """Text that can be sent as UTF-8: a message may quote the client's own (invalid) input."""
    return text if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {"message": _printable(message), "type": error_type(status), "param": _printable(param), "code": code}
    }


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def from_exception(exc: BaseException) -> APIError:
    """The APIError a request gets for ``exc`` (500 for anything unexpected)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, LhamaError):
        return APIError(exc.http_status, str(exc), param=getattr(exc, "param", None), code=exc.code)
    return APIError(500, "internal server error; see the server log", code="internal_error")


def validation_error(exc: RequestValidationError) -> APIError:
    errs = exc.errors()
    first = errs[0] if errs else {}
    if first.get("type") == "json_invalid":
        return APIError(
            400,
            f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "),
            code="invalid_json",
        )
    param, message, code = validation_problem(list(errs))
    return APIError(400, message, param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(LhamaError)
    async def _lhama(_: Request, exc: LhamaError):
        e = from_exception(exc)
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        e = validation_error(exc)
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, msg, None, code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error; see the server log", None, "internal_error")
