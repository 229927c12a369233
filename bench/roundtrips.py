"""Redis round trips per appended event at 200 events/s per run, both implementations.

R runs of ``scripted`` (400 events at 5 ms) on one worker process, created at once and
followed until all are final. runstream: the worker's own counters, read from its
``/metrics`` (``RUNSTREAM_METRICS_PORT``) before and after: one pipelined append is one
round trip (``runstream_append_round_trips_total``) for the events it carries
(``runstream_events_appended_total``). The pattern awaits every command on its own, so
its round trips are its RPUSH and PUBLISH calls, read from Redis's ``INFO commandstats``
(its events are its RPUSH calls).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.phases import Options, _count_final, _phase_dir
from bench.procs import LOOPBACK, free_port
from bench.systems import Running, Spec, running_system

EVENTS_PER_RUN = 400
INTERVAL_MS = 5.0  # 200 events/s per run


def roundtrips_phase(spec: Spec, database: str, runs: int, opts: Options) -> dict[str, Any]:
    """Round trips per event for ``runs`` runs at once at 200 events/s each."""
    where = _phase_dir(opts, "roundtrips", spec, runs, database)
    port = free_port()
    if spec.kind == "runstream":
        spec = Spec(spec.kind, {**spec.extra_env, "RUNSTREAM_METRICS_PORT": str(port)})
    with running_system(
        spec, database, where, pg_url=opts.pg_url, maxclients=10_000, with_worker=True
    ) as system:
        return asyncio.run(_measure(system, database, runs, port))


async def _measure(system: Running, database: str, runs: int, port: int) -> dict[str, Any]:
    await asyncio.sleep(1.0)  # the worker's start is not part of the measure
    before = await _counts(system, port)
    body = {"agent": "scripted", "input": {"count": EVENTS_PER_RUN, "interval_ms": INTERVAL_MS}}
    async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as client:
        created = await asyncio.gather(*(client.post("/runs", json=body) for _ in range(runs)))
        ok = sum(response.status_code in (200, 201) for response in created)
        deadline = time.monotonic() + 60 + 5 * EVENTS_PER_RUN * INTERVAL_MS / 1000
        while time.monotonic() < deadline:  # polled over HTTP, as a client would
            if await _count_final(client) >= ok:
                break
            await asyncio.sleep(0.25)
    after = await _counts(system, port)
    events = after["events"] - before["events"]
    trips = after["round_trips"] - before["round_trips"]
    return {
        "implementation": system.spec.kind,
        "database": database,
        "runs": runs,
        "created": ok,
        "events": events,
        "round_trips": trips,
        "round_trips_per_event": trips / events if events else None,
    }


async def _counts(system: Running, port: int) -> dict[str, float]:
    if system.spec.kind == "runstream":
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(100):  # the worker opens its port once its resources are up
                try:
                    text = (await client.get(f"http://{LOOPBACK}:{port}/metrics")).text
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the runstream worker's /metrics did not answer")
        totals = {"events": 0.0, "round_trips": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "runstream_events_appended_total":
                    totals["events"] += sample.value
                elif sample.name == "runstream_append_round_trips_total":
                    totals["round_trips"] += sample.value
        return totals
    with redis.Redis(host=LOOPBACK, port=system.redis.port) as client:
        stats = client.info("commandstats")
    rpush = stats.get("cmdstat_rpush", {}).get("calls", 0)
    publish = stats.get("cmdstat_publish", {}).get("calls", 0)
    return {"events": float(rpush), "round_trips": float(rpush + publish)}
