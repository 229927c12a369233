"""``runstream top``: every runstream process seen from Redis, live, against its budget.

What it reads, through one named connection of role ``cli`` (``runstream:cli:<instance>:top``):

- ``CLIENT LIST``: each process (role and instance, from its connections' names) with its
  connections by purpose, flagged when over the budget (command pool over
  ``RUNSTREAM_REDIS_MAX_CONNECTIONS``, more than one pub/sub connection, the queue over its
  bound), and connections whose name is not runstream's;
- the run locks and the per-principal leases: runs running, and runs active (queued plus
  running);
- with ``--metrics URL`` (an API's base URL, or a worker's metrics port), each process's
  open streams and events delivered per second, from its ``/metrics``.

``--once --json`` prints one snapshot for scripts instead of the live view.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx
from redis.asyncio import Redis
from rich.console import Group
from rich.table import Table
from rich.text import Text

from runstream.config import Settings
from runstream.queue import QUEUE_CONNECTIONS
from runstream.streams import keys
from runstream.streams.connection import RedisErrors, open_redis

SCAN_COUNT: Final = 1000


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """One process as Redis sees it."""

    role: str
    instance: str
    connections: dict[str, int]
    over_budget: list[str]
    streams: float | None = None
    events_per_s: float | None = None

    @property
    def total(self) -> int:
        return sum(self.connections.values())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What ``runstream top`` shows at one moment."""

    taken_at: datetime
    processes: list[ProcessRow]
    unnamed: int
    running_runs: int
    active_runs: int
    budget: dict[str, int]
    delivered: dict[str, float] = field(default_factory=dict)  # instance -> total so far

    def to_json(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at.isoformat().replace("+00:00", "Z"),
            "budget": self.budget,
            "processes": [
                {
                    "role": p.role,
                    "instance": p.instance,
                    "connections": p.connections,
                    "total": p.total,
                    "over_budget": p.over_budget,
                    "streams": p.streams,
                    "events_per_s": p.events_per_s,
                }
                for p in self.processes
            ],
            "unnamed_connections": self.unnamed,
            "runs": {"active": self.active_runs, "running": self.running_runs},
        }


def budget_of(settings: Settings) -> dict[str, int]:
    """Connections a process may hold, by purpose."""
    return {"cmd": settings.redis_max_connections, "pubsub": 1, "queue": QUEUE_CONNECTIONS}


async def take_snapshot(
    redis: Redis,
    errors: RedisErrors,
    budget: dict[str, int],
    metrics_urls: list[str],
    previous: Snapshot | None = None,
) -> Snapshot:
    """Read Redis (and the given ``/metrics``) once."""
    with errors:
        clients: list[dict[str, Any]] = await redis.client_list()
        running = 0
        async for _ in redis.scan_iter(match=keys.RUN_LOCKS, count=SCAN_COUNT):
            running += 1
        seconds, micros = await redis.time()
        now_ms = seconds * 1000 + micros // 1000
        active = 0
        async for key in redis.scan_iter(match=keys.PRINCIPAL_RUNS, count=SCAN_COUNT):
            active += await redis.zcount(key, now_ms, "+inf")
    by_process: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    unnamed = 0
    for client in clients:
        parsed = keys.parse_client_name(str(client.get("name") or ""))
        if parsed is None:
            unnamed += 1
            continue
        role, instance, purpose = parsed
        by_process[(role, instance)][purpose] += 1
    streams, delivered = await _scrape(metrics_urls)
    taken_at = datetime.now(UTC)
    elapsed = (taken_at - previous.taken_at).total_seconds() if previous else 0.0
    rows = []
    for (role, instance), purposes in sorted(by_process.items()):
        over = [p for p, n in sorted(purposes.items()) if n > budget.get(p, n)]
        rate = None
        if previous and elapsed > 0 and instance in delivered and instance in previous.delivered:
            rate = (delivered[instance] - previous.delivered[instance]) / elapsed
        row = ProcessRow(role, instance, dict(purposes), over, streams.get(instance), rate)
        rows.append(row)
    return Snapshot(taken_at, rows, unnamed, running, active, budget, delivered)


async def _scrape(urls: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Open streams and events delivered so far, by instance, from each ``/metrics``."""
    streams: dict[str, float] = {}
    delivered: dict[str, float] = {}
    if not urls:
        return streams, delivered
    async with httpx.AsyncClient(timeout=2.0) as client:
        pages = await asyncio.gather(
            *(client.get(f"{url.rstrip('/')}/metrics") for url in urls), return_exceptions=True
        )
    for page in pages:
        if isinstance(page, httpx.Response) and page.status_code == 200:
            for name, labels, value in _samples(page.text):
                instance = labels.get("instance", "")
                if name == "runstream_active_streams":
                    streams[instance] = streams.get(instance, 0) + value
                elif name == "runstream_events_delivered_total":
                    delivered[instance] = delivered.get(instance, 0) + value
    return streams, delivered


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` of the Prometheus text lines that matter here."""
    found = []
    for line in text.splitlines():
        if not line.startswith("runstream_") or "{" not in line:
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if "=" in pair)
        found.append((name, {k: v.strip('"') for k, v in labels.items()}, float(value)))
    return found


def render(snapshot: Snapshot) -> Group:
    """The live view: one row per process, then the runs."""
    budget = snapshot.budget
    table = Table(title=f"runstream processes at {snapshot.taken_at:%H:%M:%S} UTC")
    for column in ("role", "instance", "cmd", "pubsub", "queue", "other", "total"):
        table.add_column(column, justify="right" if column not in ("role", "instance") else "left")
    table.add_column("streams", justify="right")
    table.add_column("events/s", justify="right")
    for row in snapshot.processes:
        style = "bold red" if row.over_budget else ""
        counts = row.connections
        other = sum(n for p, n in counts.items() if p not in budget)
        cells = [
            row.role,
            row.instance,
            *(f"{counts.get(p, 0)}/{budget[p]}" for p in ("cmd", "pubsub", "queue")),
            str(other),
            str(row.total),
            "" if row.streams is None else f"{row.streams:g}",
            "" if row.events_per_s is None else f"{row.events_per_s:.0f}",
        ]
        table.add_row(*cells, style=style)
    lines: list[Table | Text] = [
        table,
        Text(
            f"runs: {snapshot.active_runs} active (queued or running), "
            f"{snapshot.running_runs} running"
        ),
    ]
    if snapshot.unnamed:
        lines.append(
            Text(
                f"{snapshot.unnamed} connection(s) not named runstream:* (CLIENT LIST)",
                style="bold yellow",
            )
        )
    over = [
        f"{p.role}:{p.instance} ({', '.join(p.over_budget)})"
        for p in snapshot.processes
        if p.over_budget
    ]
    if over:
        lines.append(Text("over budget: " + "; ".join(over), style="bold red"))
    return Group(*lines)


async def watch(
    settings: Settings,
    metrics_urls: list[str],
    *,
    once: bool,
    interval_s: float,
    show: Any,
) -> Snapshot:
    """Take snapshots every ``interval_s`` (just one with ``once``), handing each to
    ``show``; returns the last. One named connection of role ``cli``, purpose ``top``."""
    errors = RedisErrors(role="cli", instance=settings.instance)
    budget = budget_of(settings)
    async with open_redis(
        settings.redis_url, role="cli", instance=settings.instance, purpose="top", max_connections=1
    ) as redis:
        snapshot = await take_snapshot(redis, errors, budget, metrics_urls)
        show(snapshot)
        while not once:
            await asyncio.sleep(interval_s)
            snapshot = await take_snapshot(redis, errors, budget, metrics_urls, snapshot)
            show(snapshot)
    return snapshot
