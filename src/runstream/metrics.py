"""Prometheus metrics (docs/deployment.md, "Watching it"): what a process holds, read when scraped.

Counters live in one registry per process (``REGISTRY``). Gauges of connections and
subscriptions are not kept up to date by hand: ``api.metrics`` reads the pools and the
hub at scrape time, so they cannot drift from the truth.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)

TOO_MANY_CONNECTIONS = Counter(
    "runstream_too_many_connections_total",
    "Times a connection budget (pool or server maxclients) refused this process.",
    ["role", "instance"],
    registry=REGISTRY,
)
EVENTS_DELIVERED = Counter(
    "runstream_events_delivered_total",
    "Events sent to stream readers.",
    ["role", "instance"],
    registry=REGISTRY,
)
EVENTS_APPENDED = Counter(
    "runstream_events_appended_total",
    "Events appended to run logs.",
    ["role", "instance"],
    registry=REGISTRY,
)
RUN_OUTCOMES = Counter(
    "runstream_runs_finished_total",
    "Runs ended by this process, by final status.",
    ["role", "instance", "status"],
    registry=REGISTRY,
)
ACTIVE_STREAMS = Gauge(
    "runstream_active_streams",
    "Streams open on this process.",
    ["role", "instance"],
    registry=REGISTRY,
)
SWEEPS = Counter(
    "runstream_sweeps_total",
    "Rounds of the worker's sweeper over running and old queued runs (failed ones included).",
    ["role", "instance"],
    registry=REGISTRY,
)
APPEND_ROUND_TRIPS = Counter(
    "runstream_append_round_trips_total",
    "Append calls to Redis (one round trip each, however many events they carry).",
    ["role", "instance"],
    registry=REGISTRY,
)
