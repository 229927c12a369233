"""The Python client of a runstream API: start, read, list and stop runs, and follow them.

.. code-block:: python

    from runstream.client import Client

    async with Client("http://127.0.0.1:8000", token="...") as client:
        run = await client.create("echo", {"text": "hello world"})
        async for event in client.follow(run.id):
            print(event.seq, event.type, event.data)

:meth:`Client.follow` resumes by itself: after a dropped connection, a 5xx or a 429 it
reconnects with ``Last-Event-ID`` (bounded exponential backoff, counted afresh whenever
an event arrives), so the caller sees every event once, in order, and the iterator ends
after the run's terminal event. A ``gap`` (events that exist nowhere any more) is yielded
as an event like the others. Errors are :class:`~runstream.client.http.ApiError`
subclasses by status, or :class:`~runstream.client.http.ApiUnreachable`.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import httpx
from httpx_sse import SSEError, aconnect_sse
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)
from tenacity.wait import wait_base

from runstream.client.defaults import DEFAULT_API_URL
from runstream.client.events import StreamEvent, parse_event
from runstream.client.http import (
    REQUEST_TIMEOUT_S,
    STREAM_READ_TIMEOUT_S,
    ApiUnreachable,
    RateLimited,
    Unavailable,
    api_error,
    transport_errors,
)

RetryHook = Callable[[str, int, float], None]
"""Told of each reconnection :meth:`Client.follow` waits for: reason, attempt, delay."""

RECONNECTS: Final = 8
"""Reconnections in a row without a new event before :meth:`Client.follow` gives up."""
PAGE_SIZE: Final = 100


@dataclass(frozen=True, slots=True)
class Run:
    """A run as the API shows it (``GET /runs/{id}``)."""

    id: str
    agent: str
    status: str
    input: dict[str, Any] | None  # None in lists, which leave inputs out
    thread_id: str | None
    metadata: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    last_seq: int

    @property
    def is_final(self) -> bool:
        """Whether the run has ended (``completed``, ``failed`` or ``stopped``)."""
        return self.status in {"completed", "failed", "stopped"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        return cls(
            id=str(data["id"]),
            agent=str(data["agent"]),
            status=str(data["status"]),
            input=data.get("input"),
            thread_id=data.get("thread_id"),
            metadata=dict(data.get("metadata") or {}),
            created_at=_moment(data["created_at"]),
            started_at=_maybe_moment(data.get("started_at")),
            completed_at=_maybe_moment(data.get("completed_at")),
            error=data.get("error"),
            last_seq=int(data.get("last_seq") or 0),
        )


class _Dropped(Exception):
    """A stream connection that ended, or failed, before a new event: try again (not
    before ``retry_after_s``, when the API asked for that)."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


MAX_RETRY_AFTER_S: Final = 60.0
"""The longest ``Retry-After`` a follower honours (a wrong header cannot park it)."""


def _backoff_or_retry_after(backoff: wait_base) -> Callable[[RetryCallState], float]:
    """The backoff, or the API's ``Retry-After`` when it is longer."""

    def wait(state: RetryCallState) -> float:
        delay = backoff(state)
        error = state.outcome.exception() if state.outcome is not None else None
        asked = getattr(error, "retry_after_s", None)
        if isinstance(asked, int | float) and asked > 0:
            delay = max(delay, min(float(asked), MAX_RETRY_AFTER_S))
        return delay

    return wait


class Client:
    """An async client of one runstream API; use it as an async context manager.

    ``token`` is an API key or a JWT, sent as ``Authorization: Bearer``. ``transport``
    replaces httpx's own (for tests, proxies, an in-process app).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        *,
        token: str | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        reconnects: int = RECONNECTS,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, read=STREAM_READ_TIMEOUT_S),
            transport=transport,
        )
        self._reconnects = reconnects

    async def __aenter__(self) -> Client:
        await self._http.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._http.__aexit__(*exc_info)

    # -- runs -------------------------------------------------------------------------

    async def create(
        self,
        agent: str,
        input: dict[str, Any],
        *,
        thread_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """Queue a run of ``agent``; the same ``idempotency_key`` returns the same run."""
        body: dict[str, Any] = {"agent": agent, "input": input}
        if thread_id is not None:
            body["thread_id"] = thread_id
        if metadata is not None:
            body["metadata"] = metadata
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Run.from_json(await self._call("POST", "/runs", json=body, headers=headers))

    async def get(self, run_id: str) -> Run:
        """The run; NotFound when it does not exist or is not the caller's."""
        return Run.from_json(await self._call("GET", f"/runs/{run_id}"))

    async def list(
        self, *, status: str | None = None, thread_id: str | None = None
    ) -> AsyncGenerator[Run, None]:
        """Every run of the caller, newest first, page after page."""
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if status is not None:
            params["status"] = status
        if thread_id is not None:
            params["thread_id"] = thread_id
        while True:
            page = await self._call("GET", "/runs", params=params)
            for item in page["runs"]:
                yield Run.from_json(item)
            if not page.get("next"):
                return
            params["cursor"] = page["next"]

    async def stop(self, run_id: str) -> Run:
        """Stop the run; Conflict when it has already ended."""
        return Run.from_json(await self._call("POST", f"/runs/{run_id}/stop"))

    async def agents(self) -> builtins.list[dict[str, Any]]:
        """Every agent the API runs: ``name``, ``description``, ``input_schema``."""
        listed: builtins.list[dict[str, Any]] = (await self._call("GET", "/agents"))["agents"]
        return listed

    async def ticket(self, run_id: str) -> str:
        """A short-lived ticket for the run's stream (``?ticket=``), e.g. for a browser."""
        return str((await self._call("POST", f"/runs/{run_id}/ticket"))["ticket"])

    # -- following --------------------------------------------------------------------

    async def follow(
        self, run_id: str, after: int = 0, *, on_retry: RetryHook | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """The run's events with ``seq > after``, each once and in order, until its
        terminal event; resumes by itself after a dropped connection, a 5xx or a 429.

        ``on_retry(reason, attempt, delay_s)`` is told of each reconnection it waits for."""
        cursor = after
        while True:
            opened = await self._reopen(run_id, cursor, on_retry)
            if opened is None:
                return  # 204: the cursor is at or past the run's terminal event
            stack, messages, first = opened
            async with stack:
                event: StreamEvent | None = first
                while event is not None:
                    if event.seq > cursor:
                        cursor = event.seq
                        yield event
                        if event.is_terminal:
                            return
                    event = await _next_event(messages)
            if on_retry is not None:  # the connection ended before the run: resume now
                on_retry(f"the connection ended after seq {cursor}", 1, 0.0)

    async def _reopen(
        self, run_id: str, cursor: int, on_retry: RetryHook | None
    ) -> tuple[contextlib.AsyncExitStack, AsyncIterator[Any], StreamEvent] | None:
        """A connection that delivered its first new event, retried (with backoff) while
        connections fail or end without one; None when the run is over (204)."""

        def before_sleep(state: RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None and state.next_action:
                reason = str(state.outcome.exception())
                on_retry(reason, state.attempt_number, state.next_action.sleep)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Dropped),
            wait=_backoff_or_retry_after(wait_exponential(multiplier=0.1, max=5.0)),
            stop=stop_after_attempt(self._reconnects),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._connect(run_id, cursor)
        except _Dropped as exc:
            raise ApiUnreachable(
                f"following run {run_id} failed {self._reconnects} times in a row: {exc}"
            ) from None
        raise AssertionError("unreachable")  # tenacity either returns or raises

    async def _connect(
        self, run_id: str, cursor: int
    ) -> tuple[contextlib.AsyncExitStack, AsyncIterator[Any], StreamEvent] | None:
        headers = {"Last-Event-ID": str(cursor)} if cursor else {}
        stack = contextlib.AsyncExitStack()
        try:
            with transport_errors(self._http):
                source = await stack.enter_async_context(
                    aconnect_sse(self._http, "GET", f"/runs/{run_id}/stream", headers=headers)
                )
            response = source.response
            if response.status_code == 204:
                await stack.aclose()
                return None
            if not response.is_success:
                await response.aread()
                error = api_error(response)
                if isinstance(error, RateLimited | Unavailable):
                    raise _Dropped(str(error), error.retry_after_s)
                raise error
            messages = source.aiter_sse()
            first = await _next_event(messages)
            if first is None:
                raise _Dropped("the stream ended before the run did")
        except (ApiUnreachable, httpx.TransportError, SSEError) as exc:
            await stack.aclose()
            raise _Dropped(str(exc) or type(exc).__name__) from None
        except BaseException:
            await stack.aclose()
            raise
        return stack, messages, first

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        with transport_errors(self._http):
            response = await self._http.request(method, path, **kwargs)
        if not response.is_success:
            raise api_error(response)
        data: dict[str, Any] = response.json()
        return data


async def _next_event(messages: AsyncIterator[Any]) -> StreamEvent | None:
    """The next event of a stream (keep-alives skipped); None when it ended. A connection
    that fails mid-stream ends it the same way: the caller reconnects from its cursor."""
    try:
        async for sse in messages:
            if sse.data:
                return parse_event(sse)
    except (httpx.TransportError, SSEError):
        return None
    return None


def _moment(value: object) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _maybe_moment(value: object) -> datetime | None:
    return None if value is None else _moment(value)
