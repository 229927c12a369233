"""Request-scoped dependencies: the process's resources, the caller, the run id.

Every dependency is ``async def`` although none awaits: FastAPI runs a plain ``def``
dependency on a worker thread, a thread hop per dependency per request (py-spy showed
a third of the API's samples under anyio's worker threads while runs were created).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.types import Scope

from runstream.api.auth import authenticated, bearer_token, principal_for
from runstream.api.errors import ApiError, not_found
from runstream.api.sse import OpenStreams
from runstream.resources import Resources
from runstream.service import RunService


@dataclass(frozen=True, slots=True)
class ApiState:
    """What the lifespan opened for the API process, and the run service over it."""

    resources: Resources
    runs: RunService
    streams: OpenStreams


async def get_state(request: Request) -> ApiState:
    """The API's state (:func:`state_in`)."""
    return state_in(request.scope)


def state_in(scope: Scope) -> ApiState:
    """The API's state: from the lifespan's state, or from the app itself when it is
    mounted in another application (whose lifespan entered ``runstream_lifespan``)."""
    state = scope.get("state", {}).get("api") or getattr(scope["app"].state, "api", None)
    if not isinstance(state, ApiState):
        raise ApiError(
            503,
            "not_started",
            "runstream is not started: enter runstream_lifespan(app) in the lifespan of "
            "the application that mounts it (docs/embedding.md)",
        )
    return state


async def get_principal(
    state: Annotated[ApiState, Depends(get_state)],
    authorization: Annotated[str | None, Header()] = None,
) -> str:
    return principal_for(state.resources.settings, bearer_token(authorization))


async def is_authenticated(
    state: Annotated[ApiState, Depends(get_state)],
    authorization: Annotated[str | None, Header()] = None,
) -> bool:
    """Whether the caller proved who it is (never with auth off); never raises."""
    try:
        token = bearer_token(authorization)
    except ApiError:
        return False
    return authenticated(state.resources.settings, token)


def parse_run_id(run_id: str) -> str:
    """The canonical form of a UUID run id; anything else is a 404 before any I/O."""
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        raise not_found() from None


async def run_id_in_path(run_id: str) -> str:
    """The path's run id, canonical (:func:`parse_run_id`)."""
    return parse_run_id(run_id)


State = Annotated[ApiState, Depends(get_state)]
Principal = Annotated[str, Depends(get_principal)]
Authenticated = Annotated[bool, Depends(is_authenticated)]
RunId = Annotated[str, Depends(run_id_in_path)]
