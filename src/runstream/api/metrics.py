"""``GET /metrics``: Prometheus text for this process (``runstream.observability``)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from runstream.observability import METRICS_CONTENT_TYPE, metrics_text

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    """Connections held, subscriptions, streams, events and run outcomes of this process."""
    return Response(metrics_text(), media_type=METRICS_CONTENT_TYPE)
