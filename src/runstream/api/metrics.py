"""``GET /metrics``: Prometheus text for this API process."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.responses import Response

from runstream.metrics import REGISTRY
from runstream.resources import Resources
from runstream.streams.connection import pool_stats

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    """Connections held, subscriptions, streams, events and run outcomes of this process."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class ResourcesCollector(Collector):
    """Reads one process's pools and pub/sub hub when Prometheus scrapes."""

    def __init__(self, resources: Resources) -> None:
        self._res = resources

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["role", "instance"]
        values = [self._res.role, self._res.settings.instance]
        pool = pool_stats(self._res.redis.connection_pool)
        hub = self._res.hub.stats()
        for name, doc, value in (
            ("runstream_redis_pool_in_use", "Command connections lent out.", pool.in_use),
            ("runstream_redis_pool_idle", "Command connections idle in the pool.", pool.idle),
            ("runstream_redis_pool_max", "The command pool's bound.", pool.max),
            ("runstream_pubsub_connected", "1 while live delivery works.", int(hub.connected)),
            (
                "runstream_pubsub_channels",
                "Channels subscribed on the shared connection.",
                hub.channels,
            ),
            (
                "runstream_pubsub_subscribers",
                "Local subscribers of those channels.",
                hub.subscribers,
            ),
            (
                "runstream_pubsub_reconnects",
                "Connections of the shared pub/sub made so far.",
                hub.reconnects,
            ),
        ):
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            yield family
