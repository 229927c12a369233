"""What any runstream process shows its operator: gauges read at scrape time, and health.

Counters are incremented where things happen (``metrics.py``); the gauges here are read
from the open resources of every API and worker in the process when Prometheus scrapes
(one collector for all: ``runstream dev`` runs both roles in one process, and an
application may embed several APIs). Health is the same three checks everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from runstream.errors import BackendUnavailable
from runstream.metrics import REGISTRY
from runstream.resources import Resources
from runstream.streams.cluster import client_stats

log = structlog.get_logger(__name__)

METRICS_CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

_GAUGES: Final = {
    "runstream_redis_pool_in_use": "Command connections lent out.",
    "runstream_redis_pool_idle": "Command connections idle in the pool.",
    "runstream_redis_pool_max": "The command pool's bound (on a cluster, per node).",
    "runstream_redis_node_connections": "Command connections on the node that holds most.",
    "runstream_pubsub_connected": "1 while live delivery works.",
    "runstream_pubsub_connections": "Pub/sub connections held (a cluster: one per master in use).",
    "runstream_pubsub_channels": "Channels subscribed on the shared connection.",
    "runstream_pubsub_subscribers": "Local subscribers of those channels.",
    "runstream_pubsub_reconnects": "Connections of the shared pub/sub made so far.",
    "runstream_pubsub_ping_age_seconds": "Seconds since the pub/sub watchdog's last answer.",
    "runstream_stream_leases": "Per-principal stream leases this process holds.",
    "runstream_active_runs": "Runs this worker is executing now.",
    "runstream_oldest_run_age_seconds": "How long this worker's longest-running run has run.",
}


@dataclass(frozen=True, slots=True)
class RunGauges:
    """What a worker reports of its runs at scrape time."""

    active: Callable[[], int]
    oldest_age_s: Callable[[], float]


@dataclass(frozen=True, slots=True)
class _Watched:
    resources: Resources
    runs: RunGauges | None


class ProcessCollector(Collector):
    """The gauges of every API and worker open in this process (see the module doc)."""

    def __init__(self) -> None:
        self._open: list[_Watched] = []

    @contextlib.contextmanager
    def watching(self, resources: Resources, *, runs: RunGauges | None = None) -> Iterator[None]:
        """Report ``resources`` (and, for a worker, its running runs) for the block."""
        watched = _Watched(resources, runs)
        self._open.append(watched)
        try:
            yield
        finally:
            self._open.remove(watched)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(name, doc, labels=["role", "instance"])
            for name, doc in _GAUGES.items()
        }
        for watched in list(self._open):
            res = watched.resources
            labels = [res.role, res.settings.instance]
            pool = client_stats(res.redis)
            hub = res.hub.stats()
            values = {
                "runstream_redis_pool_in_use": pool.in_use,
                "runstream_redis_pool_idle": pool.idle,
                "runstream_redis_pool_max": pool.max,
                "runstream_redis_node_connections": pool.on_busiest_node,
                "runstream_pubsub_connected": int(hub.connected),
                "runstream_pubsub_connections": hub.connections,
                "runstream_pubsub_channels": hub.channels,
                "runstream_pubsub_subscribers": hub.subscribers,
                "runstream_pubsub_reconnects": hub.reconnects,
                "runstream_pubsub_ping_age_seconds": res.hub.ping_age_s(),
                "runstream_stream_leases": res.quotas.open_streams,
            }
            if watched.runs is not None:
                values["runstream_active_runs"] = watched.runs.active()
                values["runstream_oldest_run_age_seconds"] = watched.runs.oldest_age_s()
            for name, value in values.items():
                families[name].add_metric(labels, value)
        yield from families.values()


PROCESS: Final = ProcessCollector()
REGISTRY.register(PROCESS)


def metrics_text() -> bytes:
    """Everything this process exposes, in Prometheus's text format."""
    return generate_latest(REGISTRY)


async def health(resources: Resources, *, detailed: bool) -> tuple[bool, dict[str, str]]:
    """Whether the process can deliver events now: Redis commands, live delivery (the
    pub/sub connection and its watchdog) and the database, each ``ok`` or ``down``.
    ``detailed`` adds why a check is down (it may name an address); it is logged anyway."""
    checks: dict[str, str] = {}
    try:
        await resources.ping_redis()
        checks["redis"] = "ok"
    except BackendUnavailable as exc:
        checks["redis"] = f"down: {exc}"
    connected = resources.hub.stats().connected
    checks["pubsub"] = "ok" if connected else "down: reconnecting or watchdog unanswered"
    try:
        await resources.store.ping()
        checks["database"] = "ok"
    except BackendUnavailable as exc:
        checks["database"] = f"down: {exc}"
    healthy = all(value == "ok" for value in checks.values())
    if not healthy:
        log.warning("unhealthy", role=resources.role, **checks)
    if not detailed:
        checks = {name: value.partition(":")[0] for name, value in checks.items()}
    return healthy, checks
