"""The API's one error shape, ``{"error": {"code", "message"}}``, for every status.

Handlers cover runstream's exceptions and the framework's own 404, 405, 413 and 422, so a
client never sees another shape.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from runstream.errors import BackendUnavailable, RunFinished, RunNotFound, TooManyConnections

log = structlog.get_logger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


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


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return error_response(422, "invalid_request", message)


async def _backend_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BackendUnavailable)
    code = "too_many_connections" if isinstance(exc, TooManyConnections) else "unavailable"
    log.warning("backend unavailable", code=code, error=str(exc))
    return error_response(503, code, str(exc), {"Retry-After": "1"})


async def _run_not_found(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunNotFound)
    return error_response(404, "not_found", "run not found")


async def _run_finished(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunFinished)
    return error_response(409, "run_finished", str(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the API can raise to the one error shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RunNotFound, _run_not_found)
    app.add_exception_handler(RunFinished, _run_finished)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(BackendUnavailable, _backend_error)
