"""``GET /metrics``: Prometheus text for this API process."""

from __future__ import annotations

import contextlib
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
    """Reads the pools and pub/sub hubs of every API app open in this process when
    Prometheus scrapes (one collector for all: a process may serve several apps)."""

    def __init__(self) -> None:
        self._open: list[Resources] = []

    @contextlib.contextmanager
    def watching(self, resources: Resources) -> Iterator[None]:
        """Report ``resources`` for the block (an app's lifespan)."""
        self._open.append(resources)
        try:
            yield
        finally:
            self._open.remove(resources)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(name, doc, labels=["role", "instance"])
            for name, doc in _GAUGES.items()
        }
        for res in list(self._open):
            labels = [res.role, res.settings.instance]
            pool = pool_stats(res.redis.connection_pool)
            hub = res.hub.stats()
            values = {
                "runstream_redis_pool_in_use": pool.in_use,
                "runstream_redis_pool_idle": pool.idle,
                "runstream_redis_pool_max": pool.max,
                "runstream_pubsub_connected": int(hub.connected),
                "runstream_pubsub_channels": hub.channels,
                "runstream_pubsub_subscribers": hub.subscribers,
                "runstream_pubsub_reconnects": hub.reconnects,
                "runstream_stream_leases": res.quotas.open_streams,
            }
            for name, value in values.items():
                families[name].add_metric(labels, value)
        yield from families.values()


_GAUGES = {
    "runstream_redis_pool_in_use": "Command connections lent out.",
    "runstream_redis_pool_idle": "Command connections idle in the pool.",
    "runstream_redis_pool_max": "The command pool's bound.",
    "runstream_pubsub_connected": "1 while live delivery works.",
    "runstream_pubsub_channels": "Channels subscribed on the shared connection.",
    "runstream_pubsub_subscribers": "Local subscribers of those channels.",
    "runstream_pubsub_reconnects": "Connections of the shared pub/sub made so far.",
    "runstream_stream_leases": "Per-principal stream leases this process holds.",
}

RESOURCES = ResourcesCollector()
REGISTRY.register(RESOURCES)
