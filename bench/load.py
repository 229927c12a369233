"""The load generator: one asyncio process, S SSE streams on R runs, measured.

``python -m bench.load --url http://127.0.0.1:PORT --streams S --runs R ...`` creates R
runs of the ``scripted`` agent, opens S streams (stream i follows run i mod R) with at
most ``--open-concurrency`` connection setups at once, and reports each stream's outcome.
It prints one JSON line per phase on stdout (``created``, ``opened``, ``done``) so the
bench can act between phases (start the worker, read RSS, stop a hanging run), and
writes its full result to ``--out``.

Measured: streams that ended with their terminal event, and why the others did not
(HTTP status and body, connection errors, ``idle`` after ``--idle-timeout`` seconds
without a byte, ``deadline``); events received; latency from each event's ``ts`` to its
receipt; events delivered per second between the first and the last event received;
gaps and duplicates in ``seq``; and the loop lag of this process (a ticker's oversleep),
so a saturated load generator shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import resource
import sys
import time
from array import array
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.procs import raise_fd_limit
from bench.sse import SSEProtocol, StreamState, request_bytes
from bench.stats import summary

FINAL = frozenset({"completed", "failed", "stopped"})
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def emit(phase: str, **data: Any) -> None:
    """One progress line for the bench (stdout)."""
    sys.stdout.write(json.dumps({"phase": phase, **data}) + "\n")
    sys.stdout.flush()


class Recorder:
    """Every event's latency and the delivery window."""

    def __init__(self) -> None:
        self.latencies = array("d")
        self.first: float | None = None
        self.last: float | None = None
        self.events = 0
        self._ts_cache: dict[str, float] = {}

    def on_data(self, state: StreamState, data: bytes, now: float) -> bool:
        """Record one event; True when it is the run's terminal status."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        state.events += 1
        self.events += 1
        if self.first is None:
            self.first = now
        self.last = now
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq <= state.last_seq:
                state.duplicates += 1
            elif state.last_seq and seq != state.last_seq + 1:
                state.gaps += 1
            state.last_seq = max(state.last_seq, seq)
        ts = event.get("ts")
        if isinstance(ts, str):
            sent = self._ts_cache.get(ts)
            if sent is None:
                if len(self._ts_cache) > 200_000:
                    self._ts_cache.clear()
                sent = datetime.fromisoformat(ts).timestamp()
                self._ts_cache[ts] = sent
            self.latencies.append(now - sent)
        return event.get("type") == "status" and event.get("status") in FINAL


class LagTicker:
    """Measures how late a ``sleep(interval)`` wakes up: this loop's lag."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.lags = array("d")

    async def run(self) -> None:
        """Tick until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval_s)
            self.lags.append(max(0.0, loop.time() - start - self.interval_s))


async def create_runs(url: str, count: int, input: dict[str, Any], concurrency: int) -> Any:
    """POST ``count`` runs; return (ids, errors by reason)."""
    ids: list[str] = []
    errors: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one() -> None:
            async with gate:
                try:
                    response = await client.post(
                        "/runs", json={"agent": "scripted", "input": input}
                    )
                except httpx.HTTPError as exc:
                    errors[f"create: {type(exc).__name__}"] += 1
                    return
                if response.status_code in (200, 201):
                    ids.append(response.json()["id"])
                else:
                    errors[f"create: HTTP {response.status_code}: {response.text[:120]}"] += 1

        await asyncio.gather(*(one() for _ in range(count)))
    return ids, errors


class Streams:
    """S streams, opened with bounded concurrency, watched for idleness and a deadline."""

    def __init__(self, host: str, port: int, recorder: Recorder) -> None:
        self.host, self.port, self.recorder = host, port, recorder
        self.protocols: list[SSEProtocol] = []
        self.states: list[StreamState] = []

    async def open_all(
        self,
        run_ids: list[str],
        streams: int,
        concurrency: int,
        open_timeout_s: float,
        open_deadline_s: float,
    ) -> float:
        """Open every stream (those not open by ``open_deadline_s`` fail); return the seconds."""
        gate = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()
        start = time.monotonic()

        async def open_one(index: int) -> None:
            run_id = run_ids[index % len(run_ids)]
            state = StreamState(index, run_id, last_activity=time.monotonic())
            self.states.append(state)
            request = request_bytes(self.host, self.port, f"/runs/{run_id}/stream")
            protocol = SSEProtocol(request, state, self.recorder.on_data)
            async with gate:
                t0 = time.monotonic()
                if t0 - start > open_deadline_s:
                    state.error = f"open deadline {open_deadline_s:g}s"
                    state.closed = True
                    return
                try:
                    async with asyncio.timeout(open_timeout_s):
                        await loop.create_connection(lambda: protocol, self.host, self.port)
                        self.protocols.append(protocol)
                        await asyncio.shield(protocol.headers_done)
                except TimeoutError:
                    protocol.abort(f"open timeout {open_timeout_s:g}s")
                    state.closed = True
                except OSError as exc:
                    state.error = f"connect: {type(exc).__name__}: {exc.strerror or exc}"
                    state.closed = True
                state.opened_s = time.monotonic() - t0

        await asyncio.gather(*(open_one(i) for i in range(streams)))
        return time.monotonic() - start

    async def wait(self, idle_timeout_s: float, deadline_s: float) -> None:
        """Until every stream is closed; idle ones and the rest at the deadline are aborted."""
        end = time.monotonic() + deadline_s
        # Idleness counts from here: while the opens went on, no run was producing yet.
        start = time.monotonic()
        for state in self.states:
            state.last_activity = max(state.last_activity, start)
        while True:
            open_ = [p for p in self.protocols if not p.state.closed]
            if not open_:
                return
            now = time.monotonic()
            if now >= end:
                for protocol in open_:
                    protocol.abort(f"deadline {deadline_s:g}s")
                await asyncio.sleep(0.2)
                return
            if idle_timeout_s > 0:
                for protocol in open_:
                    if now - protocol.state.last_activity > idle_timeout_s:
                        protocol.abort(f"idle {idle_timeout_s:g}s")
            await asyncio.sleep(0.25)

    def close_all(self) -> None:
        """Abort whatever is still open."""
        for protocol in self.protocols:
            if not protocol.state.closed and protocol.transport is not None:
                protocol.transport.abort()


def reason(error: str) -> str:
    """Group errors: run ids and numbers in bodies do not make a new reason."""
    return _UUID.sub("<id>", error)[:160]


def summarise(states: list[StreamState], recorder: Recorder, lag: LagTicker) -> dict[str, Any]:
    """The aggregate the bench reports."""
    failed = [s for s in states if not s.terminal]
    window = (recorder.last or 0) - (recorder.first or 0)
    opened = [s.opened_s for s in states if s.opened_s is not None and s.status == 200]
    return {
        "streams": len(states),
        "completed": len(states) - len(failed),
        "without_terminal": len(failed),
        "reasons": dict(Counter(reason(s.error or "no terminal event") for s in failed)),
        "events": recorder.events,
        "window_s": window,
        "events_per_s": recorder.events / window if window > 0 else None,
        "latency_ms": summary(recorder.latencies, 1000),
        "loop_lag_ms": summary(lag.lags, 1000),
        "open_latency_ms": summary(opened, 1000),
        "gaps": sum(s.gaps for s in states),
        "duplicates": sum(s.duplicates for s in states),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole load: create, open, follow, summarise."""
    url = args.url.rstrip("/")
    host, port = httpx.URL(url).host, httpx.URL(url).port or 80
    lag = LagTicker()
    ticker = asyncio.create_task(lag.run())
    recorder = Recorder()
    streams = Streams(host, port, recorder)
    result: dict[str, Any] = {"args": vars(args)}
    try:
        agent_input: dict[str, Any] = {"count": args.count, "interval_ms": args.interval_ms}
        if args.payload_bytes:
            agent_input["payload_bytes"] = args.payload_bytes
        if args.hang:
            agent_input["hang"] = True
        t0 = time.monotonic()
        ids, create_errors = await create_runs(url, args.runs, agent_input, args.create_concurrency)
        result["create_s"] = time.monotonic() - t0
        result["create_errors"] = dict(create_errors)
        emit("created", runs=ids, errors=dict(create_errors))
        if not ids:
            result["summary"] = summarise([], recorder, lag)
            return result
        open_s = await streams.open_all(
            ids, args.streams, args.open_concurrency, args.open_timeout, args.open_deadline
        )
        result["open_s"] = open_s
        ok = sum(1 for s in streams.states if s.status == 200 and s.error is None)
        emit("opened", ok=ok, failed=len(streams.states) - ok, open_s=open_s)
        await streams.wait(args.idle_timeout, args.deadline)
    finally:
        streams.close_all()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    result["summary"] = summarise(streams.states, recorder, lag)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["summary"]["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["per_stream"] = [
        [s.index, s.status, s.events, int(s.terminal), s.error] for s in streams.states
    ]
    return result


def parser() -> argparse.ArgumentParser:
    """The load generator's options."""
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    p.add_argument("--url", required=True, help="API base URL (loopback)")
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--count", type=int, default=50, help="events per run (K)")
    p.add_argument("--interval-ms", type=float, default=20)
    p.add_argument("--payload-bytes", type=int, default=0)
    p.add_argument("--hang", action="store_true", help="runs hang after their ticks")
    p.add_argument("--open-concurrency", type=int, default=100)
    p.add_argument("--create-concurrency", type=int, default=20)
    p.add_argument("--open-timeout", type=float, default=30)
    p.add_argument("--idle-timeout", type=float, default=30, help="0: never idle")
    p.add_argument("--open-deadline", type=float, default=600, help="bound of the open phase")
    p.add_argument("--deadline", type=float, default=300, help="seconds after the opens")
    p.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.load``."""
    args = parser().parse_args(argv)
    raise_fd_limit(args.streams + 1024)
    result = asyncio.run(run(args))
    args.out.write_bytes(orjson.dumps(result, default=str))
    emit("done", summary=result.get("summary"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
