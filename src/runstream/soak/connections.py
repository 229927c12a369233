"""The soak's view of Redis: its one admin connection, CLIENT LIST samples, pub/sub kills.

Connections named ``runstream:<role>:<instance>:<purpose>`` are grouped by
``role:instance`` (one key per process) with the per-purpose detail kept; anything else
is counted apart as "other" and flagged in the report. The soak's own connection is
named ``runstream:cli:<instance>:soak`` and left out of every count.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from runstream.client.errors import EXIT_USAGE, ClientError
from runstream.config import redact_url
from runstream.streams.keys import PREFIX, client_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ADMIN_TIMEOUT_S: Final = 5.0
"""Longest wait for CLIENT LIST or CLIENT KILL before the attempt counts as failed."""

UNNAMED: Final = "(unnamed)"


def process_key(name: str) -> tuple[str, str] | None:
    """``("role:instance", purpose)`` of a runstream connection name; None for others."""
    parts = name.split(":", 3)
    if len(parts) != 4 or parts[0] != PREFIX or not all(parts[1:]):
        return None
    _, role, instance, purpose = parts
    return f"{role}:{instance}", purpose


@dataclass(frozen=True, slots=True)
class Sample:
    """One CLIENT LIST, taken ``t`` seconds after the soak started, during ``phase``."""

    t: float
    phase: str
    processes: dict[str, dict[str, int]]
    """``role:instance`` -> purpose -> connections."""
    other: dict[str, int] = field(default_factory=dict)
    """Connections not named ``runstream:*``, by name (``(unnamed)`` when they have none)."""

    @property
    def totals(self) -> dict[str, int]:
        """Connections per ``role:instance``."""
        return {key: sum(purposes.values()) for key, purposes in self.processes.items()}

    def to_json(self) -> dict[str, Any]:
        """The sample as it appears in ``report.json``."""
        return {
            "t": round(self.t, 3),
            "phase": self.phase,
            "totals": self.totals,
            "purposes": self.processes,
            "other": sum(self.other.values()),
        }


def make_sample(entries: list[dict[str, Any]], *, t: float, phase: str, exclude: str) -> Sample:
    """Group CLIENT LIST ``entries`` into a :class:`Sample`, leaving out ``exclude``."""
    processes: dict[str, Counter[str]] = {}
    other: Counter[str] = Counter()
    for entry in entries:
        name = str(entry.get("name") or "")
        if name == exclude:
            continue
        key = process_key(name)
        if key is None:
            other[name or UNNAMED] += 1
        else:
            processes.setdefault(key[0], Counter())[key[1]] += 1
    return Sample(
        t=t,
        phase=phase,
        processes={k: dict(sorted(v.items())) for k, v in sorted(processes.items())},
        other=dict(sorted(other.items())),
    )


class Admin:
    """The soak's single Redis connection: samples CLIENT LIST and kills pub/sub clients.

    One redis-py client in single-connection mode: the sampler and the pub/sub killers
    share that connection (redis-py serialises their commands with a lock), so the soak
    adds exactly one connection to what it measures, and leaves it out of the counts.
    """

    def __init__(self, client: Redis, name: str) -> None:
        self._client = client
        self.name = name
        """This connection's CLIENT SETNAME, left out of every sample."""

    async def client_list(self) -> list[dict[str, Any]]:
        """CLIENT LIST, every connection of the server."""
        async with asyncio.timeout(ADMIN_TIMEOUT_S):
            entries = await self._client.client_list()
        return cast("list[dict[str, Any]]", entries)

    async def kill_pubsub(self) -> int:
        """``CLIENT KILL TYPE pubsub``: cut every pub/sub connection; how many were cut."""
        async with asyncio.timeout(ADMIN_TIMEOUT_S):
            killed = await self._client.client_kill_filter(_type="pubsub")
        return int(killed)


@asynccontextmanager
async def open_admin(redis_url: str) -> AsyncIterator[Admin]:
    """Connect the soak's admin connection to ``redis_url``; closed when the block exits.

    ClientError when the URL is malformed (exit 2) or the server does not answer (exit 1).
    """
    name = client_name("cli", secrets.token_hex(4), "soak")
    try:
        client = Redis.from_url(
            redis_url,
            client_name=name,
            single_connection_client=True,
            decode_responses=True,
            socket_timeout=ADMIN_TIMEOUT_S,
            socket_connect_timeout=ADMIN_TIMEOUT_S,
        )
    except ValueError as exc:
        raise ClientError(f"--redis-url: {exc}", EXIT_USAGE) from None
    async with AsyncExitStack() as stack:
        # Owned from here, whether connecting works or not: the client's pool is closed.
        stack.push_async_callback(client.aclose)
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT_S):
                await client.initialize()  # takes the single connection and names it
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise ClientError(
                f"cannot reach Redis at {redact_url(redis_url)}: {exc or type(exc).__name__} "
                "(pass --redis-url or set RUNSTREAM_REDIS_URL)"
            ) from None
        yield Admin(client, name)


class Sampler:
    """Samples CLIENT LIST every ``interval`` seconds for the whole soak.

    Run :meth:`run` as a task of the soak's TaskGroup; it ends when cancelled. The phase
    written into each sample is whatever :attr:`phase` says when the sample is taken.
    """

    def __init__(self, admin: Admin, *, interval: float, started: float) -> None:
        self._admin = admin
        self._interval = interval
        self._started = started
        # Replaced at every sample: waiting on it means "until the next sample". (Plain
        # Events rather than a Condition, whose cancelled waiters must re-take its lock.)
        self._next = asyncio.Event()
        self.phase = "baseline"
        self.samples: list[Sample] = []
        self.failures = 0
        """Samples that could not be taken (Redis did not answer in time)."""
        self.last_failure: str | None = None

    @property
    def latest(self) -> Sample | None:
        """The most recent sample, if any."""
        return self.samples[-1] if self.samples else None

    async def run(self) -> None:
        """Sample at a steady rate until cancelled (stop it with ``cancel_and_wait``: a
        cancellation landing inside a redis-py command can be lost on Python 3.11)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self.take()
            # A fixed schedule rather than sleep(interval): a slow CLIENT LIST must not
            # stretch the time series.
            due = max(due + self._interval, loop.time())
            await asyncio.sleep(due - loop.time())

    async def take(self) -> Sample | None:
        """Take one sample now and wake whoever waits for it; None when it failed."""
        loop = asyncio.get_running_loop()
        try:
            entries = await self._admin.client_list()
        except (RedisError, OSError, TimeoutError) as exc:
            # One missed point in the series is not a reason to abandon the soak; the
            # report says how many there were.
            self.failures += 1
            self.last_failure = str(exc) or type(exc).__name__
            return None
        sample = make_sample(
            entries,
            t=loop.time() - self._started,
            phase=self.phase,
            exclude=self._admin.name,
        )
        self.samples.append(sample)
        taken, self._next = self._next, asyncio.Event()
        taken.set()
        return sample

    async def next_sample(self) -> Sample:
        """Wait for the next sample taken from now on."""
        count = len(self.samples)
        while len(self.samples) <= count:
            await self._next.wait()
        return self.samples[-1]
