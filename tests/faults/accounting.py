"""Leak accounting: what a runstream system holds, compared before and after a fault.

A snapshot counts (a) the connections named ``runstream:*`` in CLIENT LIST, by name,
(b) the command connections each process's pool has lent out, (c) the tasks of the
event loop, and (d) the channels subscribed on the server with their subscriber counts.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import ConnectionPool

from runstream.resources import Resources
from runstream.streams.connection import pool_stats
from tests.redis_server import RedisServer


@dataclass(frozen=True)
class Snapshot:
    connections: Counter[str]
    pool_in_use: dict[str, int]
    tasks: Counter[str]
    channels: dict[str, int]
    hub_subscribers: dict[str, int] = field(default_factory=dict)

    def diff(self, other: Snapshot) -> list[str]:
        """What differs between two snapshots, in words; empty when they are equal."""
        out = []
        if self.connections != other.connections:
            out.append(f"connections {dict(self.connections)} -> {dict(other.connections)}")
        if self.pool_in_use != other.pool_in_use:
            out.append(f"pool in use {self.pool_in_use} -> {other.pool_in_use}")
        if self.tasks != other.tasks:
            more, fewer = other.tasks - self.tasks, self.tasks - other.tasks
            out.append(f"tasks +{dict(more)} -{dict(fewer)}")
        if self.channels != other.channels:
            out.append(f"server channels {self.channels} -> {other.channels}")
        if self.hub_subscribers != other.hub_subscribers:
            out.append(f"hub subscribers {self.hub_subscribers} -> {other.hub_subscribers}")
        return out


# Modules of the harness itself (TCP proxies that inject faults), whose tasks are not
# runstream's. Everything else is counted, the leaky variants of tests/faults/leaky.py
# included: a listener task that a variant leaves behind is a leak to report.
HARNESS_MODULES = ("/tests/faults/inject.py", "/tests/postgres.py")


def _is_harness(task: asyncio.Task[object]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and code.co_filename.endswith(HARNESS_MODULES)


def _task_label(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", type(coro).__name__)
    return str(name)


class Accountant:
    """Takes snapshots of one server and the processes (Resources) living in this loop."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.processes: dict[str, Resources] = {}
        # Pools made by code under test other than the processes' own (leaky variants).
        self.extra_pools: list[ConnectionPool] = []

    def track(self, label: str, resources: Resources) -> None:
        self.processes[label] = resources

    def snapshot(self) -> Snapshot:
        current = asyncio.current_task()
        with self.server.admin() as admin:
            clients = admin.client_list()
            channels = [c.decode() for c in admin.pubsub_channels()]
            numsub = dict(admin.pubsub_numsub(*channels)) if channels else {}
        return Snapshot(
            connections=Counter(
                str(c["name"]) for c in clients if str(c.get("name", "")).startswith("runstream:")
            ),
            pool_in_use={
                **{k: r.pool_in_use() for k, r in self.processes.items()},
                "other pools": sum(pool_stats(p).in_use for p in self.extra_pools),
            },
            tasks=Counter(
                _task_label(t)
                for t in asyncio.all_tasks()
                if t is not current and not _is_harness(t)
            ),
            channels={
                (k.decode() if isinstance(k, bytes) else k): int(v) for k, v in numsub.items()
            },
            hub_subscribers={k: r.hub.stats().subscribers for k, r in self.processes.items()},
        )

    async def settle(self, timeout: float = 10.0, quiet_s: float = 1.2) -> Snapshot:
        """A snapshot taken once the system is at rest (for a baseline): every pool
        trimmed back to its one warm connection and nothing changing for ``quiet_s``."""
        previous = self.snapshot()
        quiet_since = time.monotonic()
        deadline = quiet_since + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            current = self.snapshot()
            if current.diff(previous) or not self._pools_at_rest():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return current
            previous = current
        return previous

    def _pools_at_rest(self) -> bool:
        return all(pool_stats(r.redis.connection_pool).idle <= 1 for r in self.processes.values())

    async def assert_back_to(self, baseline: Snapshot, timeout: float = 15.0) -> None:
        """Wait until the system holds exactly its baseline again; else fail with the diff."""
        deadline = time.monotonic() + timeout
        while True:
            differences = baseline.diff(self.snapshot())
            if not differences:
                return
            if time.monotonic() > deadline:
                raise AssertionError("not back to baseline: " + "; ".join(differences))
            await asyncio.sleep(0.05)
