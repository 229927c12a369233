"""``runstream top``: every runstream process seen from Redis, live, against its budget.

What it reads, through one named connection of role ``cli`` (``runstream:cli:<instance>:top``)
per node:

- ``CLIENT LIST`` (of every node, masters and replicas, on a cluster): each process (role
  and instance, from its connections' names) with its connections by purpose, flagged
  when over the budget on any node (command pool over ``RUNSTREAM_REDIS_MAX_CONNECTIONS``,
  more than one pub/sub connection, the queue over its bound), and connections whose
  name is not runstream's;
- the run locks and the per-principal leases: runs running, and runs active (queued plus
  running);
- with ``--metrics URL`` (an API's base URL, or a worker's metrics port), each process's
  open streams and events delivered per second, from its ``/metrics``.

``--once --json`` prints one snapshot for scripts instead of the live view.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

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
    connections: dict[str, int]  # by purpose, summed over nodes
    over_budget: list[str]
    streams: float | None = None
    events_per_s: float | None = None
    per_node: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> by purpose

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
    nodes: dict[str, str] = field(default_factory=dict)  # node -> "master" or "replica"

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
                    "nodes": p.per_node,
                    "streams": p.streams,
                    "events_per_s": p.events_per_s,
                }
                for p in self.processes
            ],
            "nodes": self.nodes,
            "unnamed_connections": self.unnamed,
            "runs": {"active": self.active_runs, "running": self.running_runs},
        }


def budget_of(settings: Settings) -> dict[str, int]:
    """Connections a process may hold on each node, by purpose."""
    return {"cmd": settings.redis_max_connections, "pubsub": 1, "queue": QUEUE_CONNECTIONS}


class Nodes:
    """One ``cli`` connection to each node: the configured one, and on a cluster every
    node ``CLUSTER NODES`` names (opened when first seen, closed with this object)."""

    def __init__(self, settings: Settings, errors: RedisErrors) -> None:
        self._settings = settings
        self._errors = errors
        self._clients: dict[str, Redis] = {}
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Nodes:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def roles(self) -> dict[str, tuple[Redis, str]]:
        """Every node's client and role (``master`` or ``replica``), by ``host:port``."""
        seed_url = self._settings.redis_url
        seed = await self._client(_address(seed_url), seed_url)
        if not self._settings.redis_cluster:
            return {_address(seed_url): (seed, "master")}
        with self._errors:
            text: str = await seed.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
        found = {}
        for address, role in _cluster_nodes(text):
            client = await self._client(address, _node_url(seed_url, address))
            found[address] = (client, role)
        return found

    async def _client(self, address: str, url: str) -> Redis:
        if address not in self._clients:
            opened = open_redis(
                url, role="cli", instance=self._settings.instance, purpose="top", max_connections=1
            )
            self._clients[address] = await self._stack.enter_async_context(opened)
        return self._clients[address]


async def take_snapshot(
    nodes: Nodes,
    errors: RedisErrors,
    budget: dict[str, int],
    metrics_urls: list[str],
    previous: Snapshot | None = None,
) -> Snapshot:
    """Read every node (and the given ``/metrics``) once."""
    per_node: dict[str, list[dict[str, Any]]] = {}
    running = active = 0
    roles = await nodes.roles()
    with errors:
        for address, (redis, role) in roles.items():
            per_node[address] = await redis.client_list()
            if role == "master":  # a replica holds the same keys again
                running += await _count_locks(redis)
                active += await _count_active(redis)
    by_process: defaultdict[tuple[str, str], dict[str, Counter[str]]] = defaultdict(dict)
    unnamed = 0
    for address, clients in per_node.items():
        for client in clients:
            if _is_replication_link(client):
                continue  # Redis's own master-replica link, not a client of anyone's
            parsed = keys.parse_client_name(str(client.get("name") or ""))
            if parsed is None:
                unnamed += 1
                continue
            role, instance, purpose = parsed
            by_process[(role, instance)].setdefault(address, Counter())[purpose] += 1
    streams, delivered = await _scrape(metrics_urls)
    taken_at = datetime.now(UTC)
    elapsed = (taken_at - previous.taken_at).total_seconds() if previous else 0.0
    rows = []
    for (role, instance), on_nodes in sorted(by_process.items()):
        total: Counter[str] = sum(on_nodes.values(), Counter())
        over = sorted({p for c in on_nodes.values() for p, n in c.items() if n > budget.get(p, n)})
        rate = None
        if previous and elapsed > 0 and instance in delivered and instance in previous.delivered:
            rate = (delivered[instance] - previous.delivered[instance]) / elapsed
        nodes_view = {address: dict(counts) for address, counts in sorted(on_nodes.items())}
        row = ProcessRow(role, instance, dict(total), over, streams.get(instance), rate, nodes_view)
        rows.append(row)
    node_roles = {address: role for address, (_, role) in sorted(roles.items())}
    return Snapshot(taken_at, rows, unnamed, running, active, budget, delivered, node_roles)


def _is_replication_link(client: dict[str, Any]) -> bool:
    flags = str(client.get("flags") or "")
    return "S" in flags or "M" in flags


async def _count_locks(redis: Redis) -> int:
    running = 0
    async for _ in redis.scan_iter(match=keys.RUN_LOCKS, count=SCAN_COUNT):
        running += 1
    return running


async def _count_active(redis: Redis) -> int:
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros // 1000
    active = 0
    async for key in redis.scan_iter(match=keys.PRINCIPAL_RUNS, count=SCAN_COUNT):
        active += await redis.zcount(key, now_ms, "+inf")
    return active


def _cluster_nodes(text: str | bytes) -> list[tuple[str, str]]:
    """``(host:port, master|replica)`` of each live node in ``CLUSTER NODES``' answer."""
    if isinstance(text, bytes):
        text = text.decode()
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or "fail" in fields[2] or "noaddr" in fields[2]:
            continue
        address = fields[1].split("@", 1)[0]
        found.append((address, "master" if "master" in fields[2] else "replica"))
    return found


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


def _node_url(seed_url: str, address: str) -> str:
    """``seed_url`` (credentials and options kept) pointed at another node."""
    parts = urlsplit(seed_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{address}" if credentials else address
    return urlunsplit(parts._replace(netloc=netloc))


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
    where = (
        f" on {len(snapshot.nodes)} nodes (busiest node shown)" if len(snapshot.nodes) > 1 else ""
    )
    table = Table(title=f"runstream processes at {snapshot.taken_at:%H:%M:%S} UTC{where}")
    for column in ("role", "instance", "cmd", "pubsub", "queue", "other", "total"):
        table.add_column(column, justify="right" if column not in ("role", "instance") else "left")
    table.add_column("streams", justify="right")
    table.add_column("events/s", justify="right")
    for row in snapshot.processes:
        style = "bold red" if row.over_budget else ""
        counts = row.connections
        other = sum(n for p, n in counts.items() if p not in budget)
        # The budget is per node: on a cluster, show the busiest node's count against it.
        busiest = {
            p: max((c.get(p, 0) for c in row.per_node.values()), default=counts.get(p, 0))
            for p in ("cmd", "pubsub", "queue")
        }
        cells = [
            row.role,
            row.instance,
            *(f"{busiest[p]}/{budget[p]}" for p in ("cmd", "pubsub", "queue")),
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
    async with Nodes(settings, errors) as nodes:
        snapshot = await take_snapshot(nodes, errors, budget, metrics_urls)
        show(snapshot)
        while not once:
            await asyncio.sleep(interval_s)
            snapshot = await take_snapshot(nodes, errors, budget, metrics_urls, snapshot)
            show(snapshot)
    return snapshot
