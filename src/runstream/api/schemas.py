"""What the API's answers look like, for its OpenAPI document.

The handlers build their answers as plain dicts (no second validation per response);
these models only describe them, and every route lists the error statuses it answers
with the one error shape (:class:`ErrorBody`), so ``/openapi.json`` tells the truth.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

RunStatusName = Literal["queued", "running", "completed", "failed", "stopped"]


class RunOut(BaseModel):
    """A run."""

    id: str = Field(description="a UUID")
    agent: str
    status: RunStatusName
    input: dict[str, Any] | None = Field(
        default=None, description="as the agent's model read it; left out of lists"
    )
    thread_id: str | None
    metadata: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None = Field(description="why it failed or stopped")
    last_seq: int = Field(description="the last event's seq, live while the run goes on")


class RunPage(BaseModel):
    """A page of runs, newest first."""

    runs: list[RunOut]
    next: str | None = Field(description="the cursor of the next page, or null at the end")


class TicketOut(BaseModel):
    """A credential for one run's stream (``?ticket=``)."""

    ticket: str
    expires_at: datetime


class EventsPage(BaseModel):
    """Events of a run's log, as JSON."""

    events: list[dict[str, Any]] = Field(description="each with type, seq and ts")
    next_after: int = Field(description="pass as `after` to read on")
    closed: bool = Field(description="the run's terminal event has been read")


class AgentOut(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]


class AgentList(BaseModel):
    agents: list[AgentOut]


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. unknown_agent, too_many_runs")
    message: str


class ErrorBody(BaseModel):
    """Every error, whatever its status."""

    error: ErrorDetail


_WHY = {
    401: "no credentials, or ones the API does not accept",
    404: "no such run for this caller",
    409: "the run has already ended",
    413: "the body is over RUNSTREAM_MAX_INPUT_BYTES",
    422: "the request was refused as it is; nothing was stored",
    429: "a per-principal limit; see Retry-After",
    503: "a backend cannot serve the call now; see Retry-After",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that answers ``statuses`` with :class:`ErrorBody`."""
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in statuses}


def ok(model: type[BaseModel], status: int = 200) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry of a route's success: documented only, never re-validated
    (the handler's dict goes out as it is)."""
    return {status: {"model": model, "description": model.__doc__ or "OK"}}


_OPEN_PATHS = ("/healthz", "/metrics")
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key or a JWT"},
    "token": {"type": "apiKey", "in": "query", "name": "token", "description": "streams only"},
    "ticket": {
        "type": "apiKey",
        "in": "query",
        "name": "ticket",
        "description": "from POST /runs/{run_id}/ticket; that run's stream only",
    },
}


def finish_document(document: dict[str, Any]) -> dict[str, Any]:
    """Complete FastAPI's OpenAPI document: the security schemes, which routes take which
    credentials, and the API's own error shape wherever FastAPI put its ``detail`` one."""
    components = document.setdefault("components", {})
    components["securitySchemes"] = _SECURITY_SCHEMES
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            if path in _OPEN_PATHS:
                operation["security"] = []
            elif path.endswith("/stream"):
                operation["security"] = [{"bearer": []}, {"token": []}, {"ticket": []}]
            else:
                operation["security"] = [{"bearer": []}]
            for status, response in operation.get("responses", {}).items():
                # Errors are JSON whatever the route's own media type (the stream's).
                if status == "422" or (status[0] in "45" and status != "204"):
                    response["content"] = {"application/json": {"schema": error_ref}}
                    response.setdefault("description", _WHY.get(int(status), "error"))
    return document
