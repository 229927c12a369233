"""``python -m bench``: runstream and the per-stream pattern, side by side, at each size.

Phases, in order: the physical reference (redis-benchmark), the streams phase at each S
(both implementations), the workload's own ceiling at each S (its runs on runstream's
worker with no stream open: the events/s no implementation can beat), the idle-stream
memory phase, the worker throughput phase at each
R and database, Redis round trips per event at 200 events/s per run, and runstream on
one node against a cluster. Results go to ``<out>/<timestamp>/``: ``summary.json``,
``table.md``, ``chart.png`` and ``raw/`` (process logs and per-stream load results).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from bench import machine, pg, report
from bench.ceiling import ceiling_phase
from bench.cluster import MASTERS, cluster_phase
from bench.phases import Options, idle_phase, physical_phase, streams_phase, throughput_phase
from bench.procs import raise_fd_limit
from bench.roundtrips import roundtrips_phase
from bench.systems import IMPLEMENTATIONS, Spec

PHASES = ("physical", "streams", "ceiling", "idle", "throughput", "roundtrips", "cluster")
QUICK = {
    "streams": "100,1000",
    "runs": "10,100",
    "databases": "sqlite",
    "idle_streams": "100",
    "cluster_streams": "1000",
}


def _ints(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def _words(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def parser() -> argparse.ArgumentParser:
    """The command's options."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="100 and 1000 streams, 10 and 100 runs, SQLite, 100 idle streams",
    )
    p.add_argument("--streams", default="100,1000,5000", help="S values (comma-separated)")
    p.add_argument("--runs", default="10,100,500", help="R values for one worker")
    p.add_argument("--databases", default="sqlite,postgresql")
    p.add_argument(
        "--roundtrip-runs", default="1,20,100", help="runs at once for round trips per event"
    )
    p.add_argument("--idle-streams", default="1000", help="N values for RSS per idle stream")
    p.add_argument(
        "--cluster-streams", default="1000", help="S values for runstream on 1 node vs 3 masters"
    )
    p.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--count", type=int, default=50, help="events per run (K)")
    p.add_argument("--interval-ms", type=float, default=20)
    p.add_argument("--fanout", type=int, default=20, help="streams per run (R = S / fanout)")
    p.add_argument(
        "--open-concurrency", type=int, default=100, help="stream opens in flight at once"
    )
    p.add_argument(
        "--idle-timeout", type=float, default=30, help="a stream silent this long (s) is failed"
    )
    p.add_argument("--pg-url", default=pg.DEFAULT_URL)
    p.add_argument("--runstream-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--pattern-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    return p


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _attempt(what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one phase; an exception is recorded (and logged), not fatal to the others."""
    _log(what)
    start = time.monotonic()
    try:
        result = fn()
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    result["phase_s"] = time.monotonic() - start
    _log(f"  done in {result['phase_s']:.1f} s")
    return result


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C: every child is stopped


def _port_notes(streams: list[int]) -> list[str]:
    """Warn when the pattern's connections to one Redis port exceed the ephemeral range."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return []
    available, needed = high - low + 1, 3 * max(streams, default=0)
    if needed <= available:
        return []
    return [
        f"the pattern needs about {needed:,} connections to one Redis port at "
        f"S={max(streams):,} but the ephemeral port range has {available:,} ports: "
        "expect EADDRNOTAVAIL on its side (net.ipv4.ip_local_port_range)"
    ]


def main(argv: list[str] | None = None) -> int:
    """Run every selected phase and write the results."""
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    streams, runs, idle = _ints(args.streams), _ints(args.runs), _ints(args.idle_streams)
    impls, phases, databases = (
        _words(args.implementations),
        _words(args.phases),
        _words(args.databases),
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.out / stamp
    log_dir = out_dir / "raw"
    log_dir.mkdir(parents=True, exist_ok=True)
    fd_limit = raise_fd_limit(max([*streams, *idle, 1000]) * 4 + 4096)
    opts = Options(
        out_dir=out_dir.resolve(),
        log_dir=log_dir.resolve(),
        count=args.count,
        interval_ms=args.interval_ms,
        fanout=args.fanout,
        open_concurrency=args.open_concurrency,
        idle_timeout_s=args.idle_timeout,
        pg_url=args.pg_url,
    )
    specs = {
        "runstream": Spec("runstream", _env_pairs(args.runstream_env)),
        "pattern": Spec("pattern", _env_pairs(args.pattern_env)),
    }
    results: dict[str, Any] = {
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "started_at": stamp,
        "machine": machine.describe(),
        "fd_limit": fd_limit,
        "settings": {
            "count": args.count,
            "interval_ms": args.interval_ms,
            "fanout": args.fanout,
            "open_concurrency": args.open_concurrency,
            "idle_timeout_s": args.idle_timeout,
        },
        "notes": _port_notes(streams) if "pattern" in impls else [],
        "streams": [],
        "ceiling": [],
        "idle": [],
        "throughput": [],
        "roundtrips": [],
        "cluster": [],
        "skipped": [],
    }
    t0 = time.monotonic()
    try:
        if "physical" in phases:
            results["physical"] = _attempt(
                "physical: redis-benchmark", partial(physical_phase, opts)
            )
        for size in streams if "streams" in phases else []:
            for impl in impls:
                what = f"streams: {impl} S={size}"
                r = _attempt(what, partial(streams_phase, specs[impl], size, opts))
                results["streams"].append({"implementation": impl, "streams": size, **r})
        for size in streams if "ceiling" in phases and "runstream" in impls else []:
            what = f"ceiling: runstream's worker alone, S={size}"
            r = _attempt(what, partial(ceiling_phase, specs["runstream"], size, opts))
            results["ceiling"].append({"implementation": "runstream", "streams": size, **r})
        for size in idle if "idle" in phases else []:
            for impl in impls:
                r = _attempt(f"idle: {impl} N={size}", partial(idle_phase, specs[impl], size, opts))
                results["idle"].append({"implementation": impl, "streams": size, **r})
        for database in databases if "throughput" in phases else []:
            if database == "postgresql" and (why := pg.reachable(args.pg_url)):
                results["skipped"].append(f"PostgreSQL ({args.pg_url}): {why}")
                _log(f"skipping PostgreSQL: {why}")
                continue
            for count in runs:
                for impl in impls:
                    what = f"throughput: {impl} {database} R={count}"
                    phase = partial(throughput_phase, specs[impl], database, count, opts)
                    r = _attempt(what, phase)
                    row = {"implementation": impl, "database": database, "runs": count}
                    results["throughput"].append({**row, **r})
        for count in _ints(args.roundtrip_runs) if "roundtrips" in phases else []:
            for impl in impls:
                what = f"round trips: {impl} R={count}"
                phase = partial(roundtrips_phase, specs[impl], "sqlite", count, opts)
                r = _attempt(what, phase)
                results["roundtrips"].append({"implementation": impl, "runs": count, **r})
        for size in _ints(args.cluster_streams) if "cluster" in phases else []:
            what = f"cluster: runstream S={size} on 1 node, then on {MASTERS} masters"
            r = _attempt(what, partial(cluster_phase, specs["runstream"], size, opts))
            results["cluster"].append({"streams": size, **r})
    except KeyboardInterrupt:
        results["interrupted"] = True
        _log("interrupted: writing what was measured")
    results["total_s"] = time.monotonic() - t0
    (out_dir / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    table = report.markdown(results)
    (out_dir / "table.md").write_text(table)
    chart = report.chart(results, out_dir / "chart.png")
    print(table)
    print(f"results: {out_dir}/summary.json" + (f", chart: {chart}" if chart else ""))
    return 130 if results.get("interrupted") else 0
