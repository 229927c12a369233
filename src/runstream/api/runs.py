"""``/runs``: start, read, list and stop runs: HTTP in and out, the rest is ``service``."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from runstream.api.deps import Principal, RunId, State
from runstream.api.errors import ApiError
from runstream.errors import AgentError
from runstream.models import Run, RunStatus

router = APIRouter(prefix="/runs", tags=["runs"])


class RunRequest(BaseModel):
    """Body of ``POST /runs``."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=200)
    input: dict[str, Any]
    thread_id: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, Any] | None = None


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_run(
    body: RunRequest,
    state: State,
    principal: Principal,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> dict[str, Any]:
    """Queue a run of ``agent``; the same ``Idempotency-Key`` returns the same run (200)."""
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
    response.headers["Location"] = f"/runs/{run.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return run.to_public()


@router.get("/{run_id}")
async def get_run(run_id: RunId, state: State, principal: Principal) -> dict[str, Any]:
    """The run, with ``last_seq`` read live from its log while it is going on."""
    run = await state.runs.get(run_id, principal)
    return run.to_public(await state.runs.live_last_seq(run))


@router.get("")
async def list_runs(
    state: State,
    principal: Principal,
    status_filter: Annotated[RunStatus | None, Query(alias="status")] = None,
    thread_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    """The caller's runs, newest first; ``next`` is the cursor of the following page."""
    runs = await state.runs.list(
        principal,
        status=status_filter,
        thread_id=thread_id,
        limit=limit + 1,
        before=decode_cursor(cursor) if cursor else None,
    )
    page, more = runs[:limit], len(runs) > limit
    return {
        "runs": [run.to_public() for run in page],
        "next": encode_cursor(page[-1]) if more else None,
    }


@router.post("/{run_id}/stop", status_code=status.HTTP_202_ACCEPTED)
async def stop_run(run_id: RunId, state: State, principal: Principal) -> dict[str, Any]:
    """Stop the run: at once when still queued, else through its worker (202)."""
    run = await state.runs.stop(run_id, principal)
    return run.to_public()


def encode_cursor(run: Run) -> str:
    """An opaque cursor pointing just after ``run`` in newest-first order."""
    raw = orjson.dumps([run.created_at.isoformat(), run.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Read a cursor made by :func:`encode_cursor`; anything else is a 422."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, run_id = orjson.loads(raw)
        return datetime.fromisoformat(created_at), str(uuid.UUID(run_id))
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API returned") from None
