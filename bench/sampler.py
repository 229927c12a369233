"""Sampling while a phase runs: Redis connections by role (``CLIENT LIST`` every ~0.5 s),
and CPU seconds and peak RSS per process (from /proc).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from bench.procs import LOOPBACK
from bench.procstat import CpuMeter
from bench.redisraw import RawRedis

SAMPLER_NAME = "bench:sampler"


def role_of(name: str) -> str:
    """``runstream:api:<inst>:cmd`` and ``pattern:api:<inst>:cmd`` -> ``api:cmd``."""
    parts = name.split(":")
    if len(parts) >= 4 and parts[0] in ("runstream", "pattern"):
        return f"{parts[1]}:{parts[3]}"
    if not name:
        return "unnamed"
    return name


def by_role(names: Counter[str]) -> dict[str, int]:
    """Connection counts per role, plus ``total``."""
    roles: Counter[str] = Counter()
    for name, count in names.items():
        if name.startswith("bench:"):
            continue
        roles[role_of(name)] += count
    out = dict(sorted(roles.items()))
    out["total"] = sum(roles.values())
    return out


class Sampler:
    """Samples until stopped; keeps the peak per role and a time series of totals."""

    def __init__(self, redis_port: int, interval_s: float = 0.5) -> None:
        self.redis_port, self.interval_s = redis_port, interval_s
        self.meters: dict[str, CpuMeter] = {}
        self.peak: dict[str, int] = {}
        self.series: list[tuple[float, int]] = []
        self.errors = 0
        self._t0 = time.monotonic()
        self._raw: RawRedis | None = None

    def watch(self, name: str, pid: int) -> None:
        """Measure the CPU and RSS of ``pid`` from now on."""
        meter = CpuMeter(pid)
        meter.start()
        self.meters[name] = meter

    async def connections(self) -> dict[str, int]:
        """One ``CLIENT LIST``, grouped by role."""
        assert self._raw is not None
        return by_role(await self._raw.client_names())

    async def _loop(self) -> None:
        while True:
            try:
                roles = await self.connections()
            except (OSError, RuntimeError, asyncio.IncompleteReadError):
                self.errors += 1
            else:
                for role, count in roles.items():
                    self.peak[role] = max(self.peak.get(role, 0), count)
                self.series.append((round(time.monotonic() - self._t0, 2), roles["total"]))
            for meter in self.meters.values():
                meter.sample()
            await asyncio.sleep(self.interval_s)

    def cpu(self) -> dict[str, dict[str, Any]]:
        """CPU seconds and peak RSS (MiB) per watched process."""
        for meter in self.meters.values():
            meter.stop()
        return {
            name: {"cpu_s": m.seconds, "peak_rss_mib": m.peak_rss / 2**20}
            for name, m in self.meters.items()
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Sampler]:
        """Sample in a task for the duration of the block."""
        async with RawRedis(LOOPBACK, self.redis_port, SAMPLER_NAME) as raw:
            self._raw = raw
            task = asyncio.create_task(self._loop())
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self._raw = None

    async def at_rest(self, settle_s: float, max_s: float = 30.0) -> dict[str, int]:
        """Connections by role once the load is gone: after ``settle_s``, then until the
        total is unchanged for 3 s (a backlogged server is still releasing), at most
        ``max_s``. The seconds it took are in the result as ``settled_s``.
        """
        start = time.monotonic()
        await asyncio.sleep(settle_s)
        roles = await self.connections()
        stable_since = time.monotonic()
        while time.monotonic() - start < max_s and time.monotonic() - stable_since < 3.0:
            await asyncio.sleep(1.0)
            now = await self.connections()
            if now["total"] != roles["total"]:
                stable_since = time.monotonic()
            roles = now
        return {**roles, "settled_s": round(time.monotonic() - start)}
