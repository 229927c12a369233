"""``/healthz``: can this process deliver events right now?"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import JSONResponse

from runstream.api.deps import State
from runstream.errors import BackendUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(state: State) -> JSONResponse:
    """200 when Redis commands, live delivery (pub/sub) and the database all work, else 503."""
    res = state.resources
    checks: dict[str, Any] = {}
    try:
        await res.ping_redis()
        checks["redis"] = "ok"
    except BackendUnavailable as exc:
        checks["redis"] = f"down: {exc}"
    hub = res.hub.stats()
    checks["pubsub"] = "ok" if hub.connected else "down: reconnecting or watchdog unanswered"
    try:
        await res.store.ping()
        checks["database"] = "ok"
    except BackendUnavailable as exc:
        checks["database"] = f"down: {exc}"
    healthy = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
    )
