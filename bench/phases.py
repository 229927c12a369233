"""The measurements, one function per phase; each starts its own system and stops it.

* :func:`streams_phase`: S streams on S/fanout runs; runs are created and streams
  opened while no worker runs, then the worker is started, so every event is delivered
  live to streams that are all open (not replayed to late openers).
* :func:`idle_phase`: API RSS at start, then N streams on one hanging run: RSS per stream.
* :func:`throughput_phase`: R runs on one worker, time until all are final.
* :func:`physical_phase`: redis-benchmark PUBLISH and XADD rates on a private Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.logscan import server_reasons
from bench.procs import LOOPBACK, RedisServer, redis_server
from bench.procstat import rss_bytes
from bench.redisraw import RawRedis
from bench.sampler import Sampler, by_role
from bench.systems import REPO_ROOT, Running, Spec, running_system

MiB = 2**20
FINAL = ("completed", "failed", "stopped")


@dataclass(frozen=True)
class Options:
    """What every phase needs to know."""

    out_dir: Path
    log_dir: Path
    count: int = 50
    interval_ms: float = 20
    fanout: int = 20
    open_concurrency: int = 100
    idle_timeout_s: float = 30
    pg_url: str = ""
    settle_s: float = 3.0
    sample_s: float = 0.5


def _phase_dir(opts: Options, phase: str, spec: Spec, size: int, database: str = "") -> Path:
    """Where one phase's logs and raw results go."""
    name = "-".join(part for part in (phase, spec.kind, database, str(size)) if part)
    path = opts.log_dir / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _open_deadline(streams: int) -> float:
    """The bound of the open phase: a minute plus 50 ms per stream."""
    return 60 + streams / 20


def _maxclients(streams: int) -> int:
    # The pattern holds about three connections per stream (two PubSubs, one command).
    return max(10_000, 4 * streams + 2_000)


def _load_argv(system: Running, opts: Options, out: Path, **kw: Any) -> list[str]:
    argv = [sys.executable, "-m", "bench.load", "--url", system.api_url, "--out", str(out)]
    argv += ["--open-concurrency", str(opts.open_concurrency)]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


async def _drive_load(
    system: Running,
    sampler: Sampler,
    argv: list[str],
    timeout_s: float,
    on_phase: Callable[[str, dict[str, Any]], Awaitable[None]],
) -> None:
    """Run the load generator, calling ``on_phase`` for each line it prints."""
    with (system.api.log.parent / "load.log").open("ab") as errors:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=errors, cwd=REPO_ROOT, limit=1 << 24
        )
    sampler.watch("load generator", proc.pid)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while line := await proc.stdout.readline():
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    await on_phase(message.get("phase", ""), message)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _watch_system(sampler: Sampler, system: Running) -> None:
    sampler.watch("api", system.api.pid)
    sampler.watch("redis-server", system.redis.proc.pid)
    if system.worker is not None:
        sampler.watch("worker", system.worker.pid)


def _read_load(out: Path) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        return {"summary": None, "error": f"no load result: {exc}"}
    return result


def _get_cpu(load: dict[str, Any]) -> float | None:
    summary = load.get("summary")
    value = summary.get("cpu_s") if isinstance(summary, dict) else None
    return float(value) if isinstance(value, int | float) else None


def streams_phase(spec: Spec, streams: int, opts: Options) -> dict[str, Any]:
    """S streams on S/fanout runs, all open before the first event: see the module doc."""
    runs = max(1, streams // opts.fanout)
    with running_system(
        spec,
        "sqlite",
        _phase_dir(opts, "streams", spec, streams),
        pg_url=opts.pg_url,
        maxclients=_maxclients(streams),
        with_worker=False,
    ) as system:
        return asyncio.run(_streams(system, streams, runs, opts))


async def _streams(
    system: Running,
    streams: int,
    runs: int,
    opts: Options,
    other_nodes: Sequence[RedisServer] = (),
) -> dict[str, Any]:
    """The streams phase on a started system; ``other_nodes`` (a cluster's other nodes)
    are sampled too, and the result then says the peak per node."""
    out = system.api.log.parent / "load.json"
    rss_start = rss_bytes(system.api.pid) or 0
    sampler = Sampler(system.redis.port, opts.sample_s)
    others = [Sampler(node.port, opts.sample_s) for node in other_nodes]
    run_s = opts.count * opts.interval_ms / 1000
    # Bounded: opens, then every wave of runs (at worker concurrency 100), then slack.
    deadline = 120 + 3 * run_s * max(1, runs / 100)
    argv = _load_argv(
        system,
        opts,
        out,
        streams=streams,
        runs=runs,
        count=opts.count,
        interval_ms=opts.interval_ms,
        idle_timeout=opts.idle_timeout_s,
        open_deadline=_open_deadline(streams),
        deadline=deadline,
    )
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    async def on_phase(phase: str, message: dict[str, Any]) -> None:
        timings[phase] = time.monotonic() - t0
        if phase == "opened":
            sampler.watch("worker", system.start_worker().pid)

    async with contextlib.AsyncExitStack() as stack:
        for each in (sampler, *others):
            await stack.enter_async_context(each.running())
        _watch_system(sampler, system)
        for index, node in enumerate(other_nodes, start=2):
            sampler.watch(f"redis-server {index}", node.proc.pid)
        bound = _open_deadline(streams) + deadline + 120
        await _drive_load(system, sampler, argv, bound, on_phase)
        at_rest = await sampler.at_rest(opts.settle_s)
        cpu = sampler.cpu()
        by_node = {str(system.redis.port): sampler.peak}
        by_node.update(
            {str(node.port): s.peak for node, s in zip(other_nodes, others, strict=True)}
        )
        rest_by_node = {
            str(node.port): await s.connections()
            for node, s in zip(other_nodes, others, strict=True)
        }
    load = _read_load(out)
    own_cpu = _get_cpu(load)
    if own_cpu is not None and "load generator" in cpu:
        cpu["load generator"]["cpu_s"] = own_cpu  # its own getrusage: exact, not sampled
    return {
        "implementation": system.spec.kind,
        "streams": streams,
        "runs": runs,
        "api_rss_start_mib": rss_start / MiB,
        "api_ready_s": system.api_ready_s,
        "load": load.get("summary"),
        "create_errors": load.get("create_errors"),
        "open_s": load.get("open_s"),
        "timings_s": timings,
        "server_reasons": server_reasons(system.api.log),
        "connections_peak": sampler.peak,
        "connections_at_rest": at_rest,
        "connections_series": sampler.series,
        "connections_peak_by_node": by_node,
        "connections_at_rest_by_node": {str(system.redis.port): at_rest, **rest_by_node},
        "cpu": cpu,
        "sampler_errors": sampler.errors,
    }


def idle_phase(spec: Spec, streams: int, opts: Options) -> dict[str, Any]:
    """API RSS at start and per idle stream (N streams on one run that hangs)."""
    with running_system(
        spec,
        "sqlite",
        _phase_dir(opts, "idle", spec, streams),
        pg_url=opts.pg_url,
        maxclients=_maxclients(streams),
        with_worker=True,
    ) as system:
        return asyncio.run(_idle(system, streams, opts))


async def _idle(system: Running, streams: int, opts: Options) -> dict[str, Any]:
    out = system.api.log.parent / "load.json"
    await asyncio.sleep(1.0)
    rss_start = rss_bytes(system.api.pid) or 0
    sampler = Sampler(system.redis.port, opts.sample_s)
    argv = _load_argv(
        system,
        opts,
        out,
        streams=streams,
        runs=1,
        count=0,
        hang=True,
        idle_timeout=0,
        open_deadline=_open_deadline(streams),
        deadline=60,
    )
    held: dict[str, Any] = {}

    async def on_phase(phase: str, message: dict[str, Any]) -> None:
        if phase == "created":
            held["run_ids"] = message.get("runs") or []
        elif phase == "opened":
            await asyncio.sleep(3.0)  # let every stream subscribe and settle
            held["rss"] = rss_bytes(system.api.pid) or 0
            held["open"] = message.get("ok", 0)
            held["connections"] = await sampler.connections()
            async with httpx.AsyncClient(base_url=system.api_url, timeout=30) as client:
                for run_id in held["run_ids"]:
                    await client.post(f"/runs/{run_id}/stop")

    async with sampler.running():
        _watch_system(sampler, system)
        await _drive_load(system, sampler, argv, _open_deadline(streams) + 180, on_phase)
    load = _read_load(out)
    opened = int(held.get("open", 0))
    rss_held = int(held.get("rss", 0))
    per_stream = (rss_held - rss_start) / opened / 1024 if opened else None
    return {
        "implementation": system.spec.kind,
        "streams": streams,
        "opened": opened,
        "open_s": load.get("open_s"),
        "api_rss_start_mib": rss_start / MiB,
        "api_rss_held_mib": rss_held / MiB,
        "rss_per_stream_kib": per_stream,
        "connections_held": held.get("connections"),
        "server_reasons": server_reasons(system.api.log),
        "load": load.get("summary"),
    }


def throughput_phase(spec: Spec, database: str, runs: int, opts: Options) -> dict[str, Any]:
    """R runs of K events on one worker: seconds from the first POST until all are final."""
    where = _phase_dir(opts, "throughput", spec, runs, database)
    with running_system(
        spec, database, where, pg_url=opts.pg_url, maxclients=10_000, with_worker=True
    ) as system:
        return asyncio.run(_throughput(system, database, runs, opts))


async def _count_final(client: httpx.AsyncClient) -> int:
    total = 0
    for status in FINAL:
        cursor: str | None = None
        for _ in range(1000):
            params: dict[str, Any] = {"status": status, "limit": 100}
            if cursor:
                params["cursor"] = cursor
            response = await client.get("/runs", params=params)
            response.raise_for_status()
            page = response.json()
            total += len(page["runs"])
            cursor = page.get("next")
            if not cursor:
                break
    return total


async def _worker_consuming(system: Running, timeout_s: float = 60.0) -> float:
    """Seconds until the worker's queue connection shows in ``CLIENT LIST``: the measure
    starts once the worker consumes, not while it imports (runstream's worker takes 1.2-2
    s to start, the pattern's less, and a fixed wait counted the difference as its runs')."""
    t0 = time.monotonic()
    async with RawRedis(LOOPBACK, system.redis.port, "bench:ready") as raw:
        while time.monotonic() - t0 < timeout_s:
            if by_role(await raw.client_names()).get("worker:queue", 0) > 0:
                return time.monotonic() - t0
            await asyncio.sleep(0.05)
    raise TimeoutError(f"the worker took no queue connection within {timeout_s:.0f} s")


async def _throughput(system: Running, database: str, runs: int, opts: Options) -> dict[str, Any]:
    ready_s = await _worker_consuming(system)  # the worker's start is not part of the measure
    sampler = Sampler(system.redis.port, opts.sample_s)
    body = {"agent": "scripted", "input": {"count": opts.count, "interval_ms": opts.interval_ms}}
    run_s = opts.count * opts.interval_ms / 1000
    timeout_s = 60 + 5 * run_s * max(1, runs / 100)
    errors = 0
    done = 0
    async with sampler.running(), httpx.AsyncClient(base_url=system.api_url, timeout=30) as client:
        _watch_system(sampler, system)
        gate = asyncio.Semaphore(20)

        async def create() -> None:
            nonlocal errors
            async with gate:
                try:
                    response = await client.post("/runs", json=body)
                    errors += response.status_code not in (200, 201)
                except httpx.HTTPError:
                    errors += 1

        t0 = time.monotonic()
        await asyncio.gather(*(create() for _ in range(runs)))
        created_s = time.monotonic() - t0
        expected = runs - errors
        done_s: float | None = None
        while time.monotonic() - t0 < timeout_s:
            with contextlib.suppress(httpx.HTTPError):
                done = await _count_final(client)
            if done >= expected:
                done_s = time.monotonic() - t0
                break
            await asyncio.sleep(0.25)
        cpu = sampler.cpu()
    return {
        "implementation": system.spec.kind,
        "database": database,
        "runs": runs,
        "worker_ready_s": ready_s,
        "create_errors": errors,
        "created_s": created_s,
        "final": done,
        "done_after_s": done_s,
        "timeout_s": timeout_s,
        "connections_peak": sampler.peak,
        "cpu": cpu,
    }


_RATE = re.compile(r"([\d.]+) requests per second")


def physical_phase(opts: Options, requests: int = 100_000) -> dict[str, Any]:
    """``redis-benchmark`` PUBLISH and XADD rates (50 clients, no pipelining)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "redis-benchmark is not on PATH"}
    commands = {
        "publish": ["PUBLISH", "bench:channel", "x" * 64],
        "xadd": ["XADD", "bench:stream", "*", "data", "x" * 64],
    }
    result: dict[str, Any] = {"requests": requests, "clients": 50}
    with redis_server("physical-redis", opts.log_dir, 1000) as redis:
        for name, command in commands.items():
            argv = [binary, "-h", LOOPBACK, "-p", str(redis.port), "-n", str(requests), "-q"]
            done = subprocess.run(
                argv + command, capture_output=True, text=True, timeout=120, check=False
            )
            rates = _RATE.findall(done.stdout)
            result[f"{name}_per_s"] = float(rates[-1]) if rates else None
            result[f"{name}_output"] = done.stdout.strip().splitlines()[-1:] or done.stderr[-200:]
    return result
