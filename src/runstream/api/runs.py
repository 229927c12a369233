"""``/runs``: start, read, list and stop runs: HTTP in and out, the rest is ``service``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from runstream.api.auth import issue_ticket
from runstream.api.deps import Principal, RunId, State
from runstream.api.errors import ApiError
from runstream.api.hygiene import check_json_value, check_metadata, check_text
from runstream.api.schemas import RunOut, RunPage, TicketOut, errors, ok
from runstream.api.signing import sign, signing_key, unsign
from runstream.config import Settings
from runstream.errors import AgentError, IdempotencyMismatch
from runstream.models import Run, RunStatus, isoformat

router = APIRouter(prefix="/runs", tags=["runs"])


class RunRequest(BaseModel):
    """Body of ``POST /runs``."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=200)
    input: dict[str, Any]
    thread_id: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, Any] | None = None


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=None,
    responses={
        201: {"model": RunOut, "description": "queued"},
        200: {"model": RunOut, "description": "the run this Idempotency-Key already made"},
        **errors(401, 413, 422, 429, 503),
    },
)
async def create_run(
    body: RunRequest,
    state: State,
    principal: Principal,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> dict[str, Any]:
    """Queue a run of ``agent``; the same ``Idempotency-Key`` returns the same run (200)."""
    settings = state.resources.settings
    check_json_value(body.input, "input")
    check_metadata(body.metadata or {}, settings.max_metadata_bytes)
    check_text(body.thread_id, "thread_id")
    check_text(idempotency_key, "Idempotency-Key")
    try:
        run, created = await state.runs.create(
            principal=principal,
            agent=body.agent,
            input=body.input,
            thread_id=body.thread_id,
            metadata=body.metadata or {},
            idempotency_key=idempotency_key,
        )
    except AgentError as exc:
        code = "unknown_agent" if body.agent not in state.resources.agents else "invalid_input"
        raise ApiError(422, code, str(exc)) from None
    except IdempotencyMismatch:
        raise ApiError(
            422,
            "idempotency_mismatch",
            "this Idempotency-Key was used for a run with another body; use a new key",
        ) from None
    # root_path: the prefix of an application that mounts this one.
    response.headers["Location"] = f"{request.scope.get('root_path', '')}/runs/{run.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return run.to_public()


@router.get("/{run_id}", response_model=None, responses=ok(RunOut) | errors(401, 404, 503))
async def get_run(run_id: RunId, state: State, principal: Principal) -> dict[str, Any]:
    """The run, with ``last_seq`` read live from its log while it is going on."""
    run = await state.runs.get(run_id, principal)
    return run.to_public(await state.runs.live_last_seq(run))


@router.get("", response_model=None, responses=ok(RunPage) | errors(401, 422, 503))
async def list_runs(
    state: State,
    principal: Principal,
    status_filter: Annotated[RunStatus | None, Query(alias="status")] = None,
    thread_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    """The caller's runs, newest first; ``next`` is the cursor of the following page."""
    settings = state.resources.settings
    runs = await state.runs.list(
        principal,
        status=status_filter,
        thread_id=thread_id,
        limit=limit + 1,
        before=decode_cursor(settings, cursor) if cursor else None,
    )
    page, more = runs[:limit], len(runs) > limit
    live = await state.runs.live_last_seqs(page)
    return {
        "runs": [run.to_public(live.get(run.id), with_input=False) for run in page],
        "next": encode_cursor(settings, page[-1]) if more else None,
    }


@router.post(
    "/{run_id}/stop",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=None,
    responses=ok(RunOut, 202) | errors(401, 404, 409, 503),
)
async def stop_run(run_id: RunId, state: State, principal: Principal) -> dict[str, Any]:
    """Stop the run: at once when still queued, else through its worker (202)."""
    run = await state.runs.stop(run_id, principal)
    return run.to_public(await state.runs.live_last_seq(run))


@router.post(
    "/{run_id}/ticket", response_model=None, responses=ok(TicketOut) | errors(401, 404, 503)
)
async def create_ticket(run_id: RunId, state: State, principal: Principal) -> dict[str, Any]:
    """A short-lived ticket for this run's stream only (``?ticket=``), so a browser never
    puts a long-lived key in a URL. A resume after it expired needs a new one."""
    await state.runs.check_readable(run_id, principal)
    ticket = issue_ticket(state.resources.settings, principal, run_id)
    return {"ticket": ticket.ticket, "expires_at": isoformat(ticket.expires_at)}


_CURSOR = "cursor"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(settings: Settings, run: Run) -> str:
    """An opaque, signed cursor pointing just after ``run`` in newest-first order."""
    created_at = run.created_at if run.created_at.tzinfo else run.created_at.replace(tzinfo=UTC)
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)  # exact, unlike a float
    return sign(signing_key(settings, _CURSOR), [micros, run.id])


def decode_cursor(settings: Settings, cursor: str) -> tuple[datetime, str]:
    """Read a cursor made by :func:`encode_cursor`; anything else is a 422."""
    try:
        micros, run_id = unsign(signing_key(settings, _CURSOR), cursor)
        if not isinstance(micros, int) or not isinstance(run_id, str):
            raise TypeError("not a cursor")
        return _EPOCH + timedelta(microseconds=micros), str(uuid.UUID(run_id))
    except (ValueError, TypeError, OverflowError):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API returned") from None
