"""``GET /runs/{id}/stream``: a run's events as Server-Sent Events.

Served ahead of FastAPI's router (:class:`StreamRoute`, a pure ASGI middleware, the
innermost one): an API process holds its open streams by the thousand, and every layer
of framework under a stream is a suspended frame, a request object and an exit stack
held for as long as the stream is open. Here a stream holds the request's task, one
disconnect watcher and the follower (``api/sse.py``); the host check, CORS and the
error middlewares around it still apply, and errors keep the one error shape (the
app's own handlers answer them, :func:`~runstream.api.errors.answer_for`). The
operation is described for ``/openapi.json`` by :data:`OPERATION`.

The route checks the caller and the cursor and takes the principal's stream lease (its
one Redis round trip); from then on the response owns the lease and releases it however
it ends (``on_close``). The subscription is taken when the response first reads the
follower, after the headers are sent, and the follower runs under ``aclosing``: a
disconnect, a send timeout or a server shutdown releases it at once (``api/sse.py``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from runstream.api.auth import bearer_token, principal_for, principal_for_ticket
from runstream.api.deps import ApiState, parse_run_id, state_in
from runstream.api.errors import ApiError, answer_for, send_error
from runstream.api.sse import EventStream
from runstream.errors import BackendUnavailable
from runstream.resources import Resources
from runstream.streams.follow import follow_batches

log = structlog.get_logger(__name__)

PATH: Final = "/runs/{run_id}/stream"
_PATH = re.compile(r"/runs/([^/]+)/stream/?")  # FastAPI redirected the slash
MAX_CURSOR = 2**63 - 1
"""The largest ``seq`` a cursor may name (a Redis stream id's first part is 64-bit)."""
AFTER_PATTERN = r"^(now|[0-9]{1,19})$"
_AFTER = re.compile(AFTER_PATTERN)
MAX_TAIL = 10_000
MAX_LAST_EVENT_ID = 40
MAX_TICKET = 1000
RETRY_MS = 1000
"""The reconnection delay every stream starts with (``retry:``), for EventSource."""
OUTAGE_RETRY_MS = 3000
"""The delay a stream answered during an outage asks for before the client comes back."""


class StreamRoute:
    """Serve ``/runs/{run_id}/stream`` before the request reaches FastAPI's router."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.fullmatch(route_path(scope)) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "GET":
            allow = [(b"allow", b"GET")]
            await send_error(send, 405, "method_not_allowed", "method not allowed", extra=allow)
            return
        # Served here, not in a function of its own: this frame is held by every stream.
        try:
            request = StreamRequest.read(scope, match.group(1))
            response = await open_stream(state_in(scope), request)
        except Exception as exc:
            answer = await answer_for(Request(scope), exc)
            if answer is None:
                raise  # unexpected: InternalErrors, around this route, answers a JSON 500
            response = answer
        await response(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The path below the app's mount point (``root_path``), as Starlette routes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What a stream request asks for, read from the ASGI scope."""

    run_id: str
    query: dict[str, str]
    authorization: str | None
    last_event_id: str | None

    @classmethod
    def read(cls, scope: Scope, run_id: str) -> StreamRequest:
        """The request's parts (the first of a repeated header, the last of a repeated
        query parameter, as FastAPI reads them); 404 for a run id that is no UUID."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        authorization, last_event_id = headers.get(b"authorization"), headers.get(b"last-event-id")
        return cls(
            run_id=parse_run_id(run_id),
            query=query,
            authorization=authorization.decode("latin-1") if authorization is not None else None,
            last_event_id=last_event_id.decode("latin-1") if last_event_id is not None else None,
        )

    def principal(self, res: Resources) -> str:
        """Who asks: a ticket for this run, else a bearer token or ``?token=``; 401 else."""
        settings, ticket = res.settings, self.query.get("ticket")
        if ticket is not None and len(ticket) > MAX_TICKET:
            raise _invalid(f"ticket: at most {MAX_TICKET} characters")
        if ticket is not None and settings.auth_enabled:
            return principal_for_ticket(settings, ticket, self.run_id)
        return principal_for(settings, bearer_token(self.authorization) or self.query.get("token"))

    def start(self) -> Start:
        """The cursor the request names (:func:`parse_start`); 422 when it is malformed."""
        after, tail = self.query.get("after"), self.query.get("tail")
        if after is not None and not _AFTER.fullmatch(after):
            raise _invalid(f"after: `now` or an integer from 0 to {MAX_CURSOR}")
        if tail is not None and not _is_tail(tail):
            raise _invalid(f"tail: an integer from 1 to {MAX_TAIL}")
        if self.last_event_id is not None and len(self.last_event_id) > MAX_LAST_EVENT_ID:
            raise _cursor_error()
        return parse_start(self.last_event_id, after, int(tail) if tail is not None else None)


async def open_stream(state: ApiState, request: StreamRequest) -> EventStream | Response:
    """Replay the run's events after the cursor, then follow it live until it ends.

    The cursor is ``Last-Event-ID`` (a reconnecting EventSource sends it), else
    ``?after=SEQ``, ``?after=now`` or ``?tail=N``, else the start."""
    res, run_id = state.resources, request.run_id
    principal = request.principal(res)  # 401
    start = request.start()  # 422
    try:
        await state.runs.check_readable(run_id, principal)  # RunNotFound: 404
        cursor = await resolve_start(res, run_id, start)
        if cursor and await _already_ended(res, run_id, cursor):
            return Response(status_code=204)  # EventSource stops reconnecting on a 204
        # A pub/sub reconnect in progress is waited for (as long as a subscription may
        # take to confirm), not answered 503: EventSource would never come back.
        if not res.hub.healthy and not await res.hub.wait_connected(res.hub.confirm_timeout):
            raise BackendUnavailable("live delivery is down", dependency="live delivery")
        # The open's one Redis round trip: a Redis that does not answer now gets a
        # come-back-later stream, not one that opens and then fails.
        lease = await res.quotas.take_stream(principal)  # QuotaExceeded: 429
    except BackendUnavailable as exc:
        log.warning("stream answered with a retry hint", run_id=run_id, error=str(exc))
        return _come_back_later(state)
    poll_s = res.settings.heartbeat_s
    # Taken last: from here the response owns the lease and releases it however it ends.
    return EventStream(
        follow_batches(run_id, cursor, res.sources(), poll_s=poll_s, idle=True),
        prelude=b"retry: %d\n\n" % RETRY_MS,
        streams=state.streams,
        labels=(res.role, res.settings.instance),
        send_timeout_s=max(2 * poll_s, 5.0),
        max_s=res.settings.stream_max_s or None,
        on_close=functools.partial(res.quotas.release_stream, principal, lease),
        run_id=run_id,
    )


@dataclass(frozen=True, slots=True)
class Start:
    """Where a reader starts: after ``seq``, or relative to the log's end."""

    seq: int = 0
    now: bool = False
    tail: int | None = None


def parse_start(last_event_id: str | None, after: str | None, tail: int | None) -> Start:
    """``Last-Event-ID`` (what a reconnecting EventSource sends) wins over ``?after=`` and
    ``?tail=``; an empty one means no cursor, as an EventSource that saw no id sends it."""
    if last_event_id is not None and last_event_id.strip():
        return Start(seq=_cursor(last_event_id))
    if after == "now":
        return Start(now=True)
    if after is not None:
        return Start(seq=_bounded(int(after), "after"))
    return Start(tail=tail) if tail is not None else Start()


def _is_tail(text: str) -> bool:
    # The length first: int() refuses a string of more than 4,300 digits with a ValueError.
    return (
        len(text) <= len(str(MAX_TAIL))
        and text.isascii()
        and text.isdigit()
        and (1 <= int(text) <= MAX_TAIL)
    )


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


def _cursor_error() -> ApiError:
    return _invalid(f"Last-Event-ID must be an integer from 0 to {MAX_CURSOR}")


def _cursor(last_event_id: str) -> int:
    text = last_event_id.strip()
    if not (text.isascii() and text.isdigit()):
        raise _cursor_error()
    return _bounded(int(text), "Last-Event-ID")


def _bounded(seq: int, what: str) -> int:
    if seq > MAX_CURSOR:
        raise _invalid(f"{what} must be an integer from 0 to {MAX_CURSOR}")
    return seq


async def resolve_start(res: Resources, run_id: str, start: Start) -> int:
    """The ``seq`` to read after: ``start.seq``, or the log's end for ``now`` and ``tail``
    (one more Redis round trip; the record's ``last_seq`` once the log is gone)."""
    if not start.now and start.tail is None:
        return start.seq
    last = await res.log.last_seq(run_id)
    if last is None:
        run = await res.reads.record(run_id)
        last = run.last_seq if run is not None else 0
    return last if start.now else max(0, last - (start.tail or 0))


async def _already_ended(res: Resources, run_id: str, cursor: int) -> bool:
    """Whether a resume at ``cursor`` comes at or after the run's terminal event."""
    run = await res.reads.record(run_id)
    return run is not None and run.status.is_final and cursor >= run.last_seq


def _come_back_later(state: ApiState) -> EventStream:
    """A 200 stream that only asks the client to reconnect a little later: during an
    outage, a browser's EventSource then comes back by itself (a 503 would end it)."""
    res = state.resources
    return EventStream(
        None,
        prelude=b"retry: %d\n: unavailable, reconnect later\n\n" % OUTAGE_RETRY_MS,
        streams=state.streams,
        labels=(res.role, res.settings.instance),
        send_timeout_s=5.0,
    )


def _parameter(name: str, where: str, schema: dict[str, Any], about: str = "") -> dict[str, Any]:
    described = {"description": about} if about else {}
    return {"name": name, "in": where, "required": False, "schema": schema, **described}


OPERATION: Final[dict[str, Any]] = {
    "tags": ["stream"],
    "summary": "Stream Run",
    "description": (
        "Replay the run's events after the cursor, then follow it live until it ends.\n\n"
        "The cursor is ``Last-Event-ID`` (a reconnecting EventSource sends it), else "
        "``?after=SEQ``, ``?after=now`` or ``?tail=N``, else the start."
    ),
    "operationId": "stream_run_runs__run_id__stream_get",
    "parameters": [
        {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}},
        _parameter(
            "after",
            "query",
            {"type": "string", "pattern": AFTER_PATTERN},
            "a seq, or `now`: only what comes next",
        ),
        _parameter(
            "tail",
            "query",
            {"type": "integer", "minimum": 1, "maximum": MAX_TAIL},
            "start with the last N",
        ),
        _parameter(
            "token", "query", {"type": "string"}, "for EventSource, which cannot set headers"
        ),
        _parameter(
            "ticket",
            "query",
            {"type": "string", "maxLength": MAX_TICKET},
            "from POST /runs/{id}/ticket: this run only",
        ),
        _parameter("last-event-id", "header", {"type": "string", "maxLength": MAX_LAST_EVENT_ID}),
        _parameter("authorization", "header", {"type": "string"}),
    ],
    "responses": {
        "200": {
            "description": "the run's events as Server-Sent Events (docs/protocol.md)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        "204": {"description": "resumed at or after the run's terminal event"},
        **{status: {} for status in ("401", "404", "422", "429")},
    },
}
"""The operation in ``/openapi.json`` (FastAPI documents only the routes it serves)."""
