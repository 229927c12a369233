"""Request-scoped dependencies: the process's resources, the caller, the run id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from runstream.api.auth import bearer_token, principal_for
from runstream.api.errors import not_found
from runstream.api.sse import OpenStreams
from runstream.resources import Resources
from runstream.service import RunService


@dataclass(frozen=True, slots=True)
class ApiState:
    """What the lifespan opened for the API process, and the run service over it."""

    resources: Resources
    runs: RunService
    streams: OpenStreams


def get_state(request: Request) -> ApiState:
    state: ApiState = request.state.api
    return state


def get_principal(
    state: Annotated[ApiState, Depends(get_state)],
    authorization: Annotated[str | None, Header()] = None,
) -> str:
    return principal_for(state.resources.settings, bearer_token(authorization))


def get_stream_principal(
    state: Annotated[ApiState, Depends(get_state)],
    authorization: Annotated[str | None, Header()] = None,
    token: Annotated[
        str | None, Query(description="for EventSource, which cannot set headers")
    ] = None,
) -> str:
    return principal_for(state.resources.settings, bearer_token(authorization) or token)


def parse_run_id(run_id: str) -> str:
    """The canonical form of a UUID run id; anything else is a 404 before any I/O."""
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        raise not_found() from None


State = Annotated[ApiState, Depends(get_state)]
Principal = Annotated[str, Depends(get_principal)]
StreamPrincipal = Annotated[str, Depends(get_stream_principal)]
RunId = Annotated[str, Depends(parse_run_id)]
