"""The API's one error shape, ``{"error": {"code", "message"}}``, for every status.

Handlers cover runstream's exceptions and the framework's own 404, 405, 413 and 422, so a
client never sees another shape.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runstream.errors import (
    BackendUnavailable,
    QuotaExceeded,
    RunFinished,
    RunNotFound,
    TooManyConnections,
)

log = structlog.get_logger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    429: "rate_limited",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


RETRY_AFTER_S = 5
"""What a 429 asks a client to wait: leases end when runs and streams do, within seconds."""


class ApiError(Exception):
    """An error to answer with ``status`` and a machine-readable ``code``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def not_found(what: str = "run") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


# FastAPI's words for a body its JSON parser gave up on (nested too deeply for it).
_UNPARSED_BODY = "There was an error parsing the body"


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _UNPARSED_BODY:
        return error_response(422, "invalid_request", "body: not JSON this API can read")
    code = _CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_request", describe_invalid(exc.errors()))


def describe_invalid(errors: Sequence[Any]) -> str:
    """One line for the first of FastAPI's validation errors, in the client's terms."""
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        problem = (first.get("ctx") or {}).get("error", "not JSON")
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        return f"body: not valid JSON ({problem}{at})"
    if loc == ("body",) and first.get("type") in {"model_attributes_type", "dict_type"}:
        return "body: send a JSON object, with Content-Type: application/json"
    where = ".".join(str(part) for part in loc if part != "body")
    return f"{where}: {first['msg']}" if where else str(first["msg"])


async def _backend_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BackendUnavailable)
    code = "too_many_connections" if isinstance(exc, TooManyConnections) else "unavailable"
    log.warning("backend unavailable", code=code, error=str(exc))
    # The dependency, never its message: that may name a host, a port or a user.
    message = (
        "Too many connections; retry shortly"
        if isinstance(exc, TooManyConnections)
        else f"{exc.dependency} is unavailable; retry shortly"
    )
    return error_response(503, code, message, {"Retry-After": "1"})


async def _quota_exceeded(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QuotaExceeded)
    code = "too_many_streams" if "STREAMS" in exc.setting else "too_many_runs"
    return error_response(429, code, str(exc), {"Retry-After": str(RETRY_AFTER_S)})


async def _run_not_found(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunNotFound)
    return error_response(404, "not_found", "run not found")


async def _run_finished(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunFinished)
    return error_response(409, "run_finished", str(exc))


class TrackedSend:
    """Wraps an ASGI ``send`` and remembers whether the response has started, so a
    middleware knows whether it may still answer with an error of its own."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    close: bool = False,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with the error shape straight from an ASGI middleware (no request object);
    ``close`` when the rest of the request will not be read; ``extra`` headers."""
    body = orjson.dumps(error_body(code, message))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += extra
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class InternalErrors:
    """Answer anything unexpected with a JSON 500 whose id is also in the log line.

    Innermost of the middlewares but for the stream route, so the framework's text/plain
    500 is never reached; an error after a response started (a stream) can only be
    logged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error", error_id=error_id, path=scope.get("path"))
            if not tracked.started:
                message = f"internal error (id {error_id}); it is logged"
                await send_error(send, 500, "internal_error", message)


Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]
_HANDLERS: tuple[tuple[type[Exception], Handler], ...] = (
    (ApiError, _api_error),
    (RunNotFound, _run_not_found),
    (RunFinished, _run_finished),
    (StarletteHTTPException, _http_error),
    (RequestValidationError, _validation_error),
    (BackendUnavailable, _backend_error),
    (QuotaExceeded, _quota_exceeded),
)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the API can raise to the one error shape."""
    for exc_type, handler in _HANDLERS:
        app.add_exception_handler(exc_type, handler)


async def answer_for(request: Request, exc: Exception) -> Response | None:
    """The answer the app's exception handlers give ``exc`` (the most specific class
    first, as Starlette looks them up), for a route served outside FastAPI's routing
    (the event stream); None when no handler takes it."""
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            answer = handler(request, exc)
            response: Response = await answer if inspect.isawaitable(answer) else answer
            return response
    return None
