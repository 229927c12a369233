"""The workload's own ceiling at S streams: what no implementation can beat.

The streams phase's S/fanout runs of K events at ``interval_ms``, queued with no worker
and no stream, then runstream's worker started, exactly as the streams phase does it
but with nobody reading. The run records say when each run started and ended. Every
stream can receive its run's events no faster than the run makes them, so delivered
events/s at S streams is at most S x (events per run) / (first start to last end): a
load generator that got every event the moment it was made would measure that.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import datetime
from typing import Any

import httpx

from bench.phases import FINAL, Options, _phase_dir
from bench.systems import Running, Spec, running_system


def ceiling_phase(spec: Spec, streams: int, opts: Options) -> dict[str, Any]:
    """The window the streams phase's runs take alone, and the events/s it allows."""
    runs = max(1, streams // opts.fanout)
    where = _phase_dir(opts, "ceiling", spec, streams)
    with running_system(
        spec, "sqlite", where, pg_url=opts.pg_url, maxclients=1000, with_worker=False
    ) as system:
        return asyncio.run(_ceiling(system, streams, runs, opts))


async def _ceiling(system: Running, streams: int, runs: int, opts: Options) -> dict[str, Any]:
    body = {"agent": "scripted", "input": {"count": opts.count, "interval_ms": opts.interval_ms}}
    run_s = opts.count * opts.interval_ms / 1000
    timeout_s = 60 + 5 * run_s * max(1, runs / 100)
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as client:
        gate = asyncio.Semaphore(20)

        async def create() -> None:
            async with gate:
                (await client.post("/runs", json=body)).raise_for_status()

        await asyncio.gather(*(create() for _ in range(runs)))
        system.start_worker()
        t0 = time.monotonic()
        records: list[dict[str, Any]] = []
        while time.monotonic() - t0 < timeout_s:
            records = await _all_runs(client)
            if len(records) >= runs and all(r["status"] in FINAL for r in records):
                break
            await asyncio.sleep(0.25)
        else:
            raise TimeoutError(f"{runs} runs not all final within {timeout_s:.0f} s")
        ticks = [await _tick_times(client, r["id"]) for r in records]
    return _summary(streams, records, ticks)


async def _all_runs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10_000):
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/runs", params=params)
        response.raise_for_status()
        page = response.json()
        found += page["runs"]
        cursor = page.get("next")
        if not cursor:
            break
    return found


async def _tick_times(client: httpx.AsyncClient, run_id: str) -> list[float]:
    """When the run's agent made each of its events (their ``ts``), status events aside."""
    response = await client.get(f"/runs/{run_id}/events", params={"limit": 500})
    response.raise_for_status()
    events = response.json()["events"]
    return [_at(e["ts"]) for e in events if e["type"] != "status"]


def _summary(
    streams: int, records: list[dict[str, Any]], ticks: list[list[float]]
) -> dict[str, Any]:
    starts = [_at(r["started_at"]) for r in records]
    ends = [_at(r["completed_at"]) for r in records]
    durations = [end - start for start, end in zip(starts, ends, strict=True)]
    # Where a run's time goes: before its first event, between events, after its last.
    leads = [t[0] - start for t, start in zip(ticks, starts, strict=True) if t]
    gaps = [(t[-1] - t[0]) / (len(t) - 1) for t in ticks if len(t) > 1]
    tails = [end - t[-1] for t, end in zip(ticks, ends, strict=True) if t]
    events = statistics.median(r["last_seq"] for r in records)
    window = max(ends) - min(starts)
    return {
        "implementation": "runstream",
        "streams": streams,
        "runs": len(records),
        "completed": sum(r["status"] == "completed" for r in records),
        "events_per_run": events,
        "run_s": {
            "min": min(durations),
            "p50": statistics.median(durations),
            "max": max(durations),
        },
        "start_spread_s": max(starts) - min(starts),
        "first_event_after_start_s": _spread(leads),
        "between_events_s": _spread(gaps),
        "last_event_to_end_s": _spread(tails),
        "window_s": window,
        "ceiling_events_per_s": streams * events / window if window > 0 else None,
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "p50": statistics.median(values), "max": max(values)}


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
