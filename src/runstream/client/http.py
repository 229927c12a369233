"""HTTP calls to the runstream API for the CLI and the tools: one client per command,
errors as one line (:mod:`runstream.client.errors`)."""

from __future__ import annotations

import contextlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import httpx

from runstream.client.errors import ClientError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

STREAM_READ_TIMEOUT_S: Final = 60.0
"""Longest silence on a stream before it counts as dropped: the server sends a keep-alive
every ``HEARTBEAT_S`` (15 s by default), so this is several missed heartbeats."""

REQUEST_TIMEOUT_S: Final = 30.0


class ApiUnreachable(ClientError):
    """The API could not be reached or did not answer: worth trying again later."""


class ApiError(ClientError):
    """The API answered with an error status; ``status`` and ``code`` say which, and the
    subclass says it for the statuses a caller handles (:func:`api_error`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class Unauthorized(ApiError):
    """401: no credentials, or credentials the API does not accept."""


class NotFound(ApiError):
    """404: no such run, or not the caller's."""


class Conflict(ApiError):
    """409: the run has already ended (it cannot be stopped)."""


class InvalidRequest(ApiError):
    """413 or 422: the request was refused as it is (unknown agent, bad input...)."""


class RateLimited(ApiError):
    """429: a per-principal limit; ``retry_after_s`` says when to try again."""

    retry_after_s: float | None = None


class Unavailable(ApiError):
    """5xx: the API or a backend behind it cannot serve the call now; try again
    (after ``retry_after_s`` when the API said so)."""

    retry_after_s: float | None = None


_BY_STATUS: Final[dict[int, type[ApiError]]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
}


@asynccontextmanager
async def open_client(api_url: str, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for the API at ``api_url``, sending ``token`` as a Bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=STREAM_READ_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=timeout) as client:
        yield client


async def create_run(
    client: httpx.AsyncClient, agent: str, input: dict[str, Any], thread_id: str | None
) -> dict[str, Any]:
    """``POST /runs``; the run object, or ClientError with the API's own message."""
    body: dict[str, Any] = {"agent": agent, "input": input}
    if thread_id is not None:
        body["thread_id"] = thread_id
    with transport_errors(client):
        response = await client.post("/runs", json=body)
    return _json_object(response)


async def stop_run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """``POST /runs/{id}/stop``; the run object, or ApiError (409 when already finished)."""
    with transport_errors(client):
        response = await client.post(f"/runs/{run_id}/stop")
    return _json_object(response)


@contextlib.contextmanager
def transport_errors(client: httpx.AsyncClient) -> Iterator[None]:
    """Turn httpx's connection failures into one line that says what to do."""
    url = str(client.base_url).rstrip("/")
    try:
        yield
    except httpx.ConnectError:
        raise ApiUnreachable(
            f"the API is not reachable at {url}: start it with `runstream dev` "
            "(or pass --api / set RUNSTREAM_API_URL)"
        ) from None
    except httpx.TimeoutException:
        raise ApiUnreachable(f"the API at {url} did not answer in time") from None
    except httpx.TransportError as exc:
        raise ApiUnreachable(
            f"talking to the API at {url} failed: {exc or type(exc).__name__}"
        ) from None


def raise_for_error(response: httpx.Response) -> None:
    """Raise ApiError for a 4xx/5xx response (its body must have been read)."""
    if not response.is_success:
        raise api_error(response)


def api_error(response: httpx.Response) -> ApiError:
    """The ApiError (subclass by status) an error response stands for (its body must
    have been read)."""
    code, message = _error_of(response)
    status = response.status_code
    kind = Unavailable if status >= 500 else _BY_STATUS.get(status, ApiError)
    error = kind(status, code, message)
    if isinstance(error, RateLimited | Unavailable):
        with contextlib.suppress(KeyError, ValueError):
            error.retry_after_s = float(response.headers["Retry-After"])
    return error


def _json_object(response: httpx.Response) -> dict[str, Any]:
    raise_for_error(response)
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ClientError(f"the API answered {response.request.url} with something not JSON")
    return data


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """The ``{"error": {"code", "message"}}`` of a response, or a stand-in for other bodies."""
    try:
        error = response.json().get("error", {})
        return str(error["code"]), str(error["message"])
    except (ValueError, AttributeError, KeyError, TypeError):
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        return "http_error", text or response.reason_phrase or "no details"
