"""``GET /healthz``: can this process deliver events right now?"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from runstream.api.deps import Authenticated, State
from runstream.observability import health

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    responses={503: {"description": "Redis, live delivery or the database is down"}},
)
async def healthz(state: State, authenticated: Authenticated) -> JSONResponse:
    """200 when Redis commands, live delivery (pub/sub) and the database all work, else 503.

    Each check reads ``ok`` or ``down``; why it is down (which may name an address) is
    added for authenticated callers only, and always logged."""
    healthy, checks = await health(state.resources, detailed=authenticated)
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
    )
