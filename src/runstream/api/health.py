"""``/healthz``: can this process deliver events right now?"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter
from starlette.responses import JSONResponse

from runstream.api.deps import Authenticated, State
from runstream.errors import BackendUnavailable

log = structlog.get_logger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(state: State, authenticated: Authenticated) -> JSONResponse:
    """200 when Redis commands, live delivery (pub/sub) and the database all work, else 503.

    Each check reads ``ok`` or ``down``; why it is down (which may name an address) is
    added for authenticated callers only, and always logged."""
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
    if not healthy:
        log.warning("unhealthy", **checks)
    if not authenticated:
        checks = {name: value.partition(":")[0] for name, value in checks.items()}
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
    )
