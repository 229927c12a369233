"""The cluster phase: runstream under the same load on one Redis node and on a Redis
Cluster of three masters, in the same invocation, one after the other.

Both get a fresh SQLite database, the same S streams on S/fanout runs (opened before the
worker starts, as in the streams phase) and the same load generator. What matters is the
ratio of delivered events per second, and that connections per process stay within the
budget on every node: every node shares the machine's cores, so three masters cannot be
three times faster here. No replicas: they would only take CPU from the masters.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.phases import Options, _maxclients, _phase_dir, _streams
from bench.procs import RedisServer, free_port, redis_server
from bench.systems import Spec, running_system

MASTERS = 3


@contextlib.contextmanager
def redis_cluster(log_dir: Path, maxclients: int) -> Iterator[list[RedisServer]]:
    """Three redis-servers in cluster mode, joined with ``redis-cli --cluster create``."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is not on PATH (apt-get install redis-tools)")
    with contextlib.ExitStack() as stack:
        nodes = []
        for index in range(MASTERS):
            args = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(free_port()),  # the default (port + 10000) overflows for high ports
                "--cluster-config-file",
                str(log_dir / f"nodes-{index}.conf"),
            ]
            node = redis_server(f"cluster-node-{index}", log_dir, maxclients, args)
            nodes.append(stack.enter_context(node))
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True, timeout=60)
        _wait_formed(cli, nodes)
        yield nodes


def _wait_formed(cli: str, nodes: list[RedisServer], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = [
            subprocess.run(
                [cli, "-p", str(node.port), "cluster", "info"], capture_output=True, text=True
            ).stdout
            for node in nodes
        ]
        if all("cluster_state:ok" in state for state in states):
            return
        time.sleep(0.1)
    raise RuntimeError("the bench's Redis Cluster did not form")


def cluster_phase(spec: Spec, streams: int, opts: Options) -> dict[str, Any]:
    """The same load on one node and on three masters; the cluster's ratio to one node."""
    rows = []
    for topology in ("1 node", f"{MASTERS} masters"):
        rows.append(_one(spec, topology, streams, opts))
    single, cluster = rows
    rate = [_get_rate(row) for row in rows]
    return {
        "streams": streams,
        "topologies": rows,
        "events_per_s_ratio": rate[1] / rate[0] if rate[0] and rate[1] else None,
        "note": "all nodes share the same cores: a ratio, not a capacity",
        "single": single.get("topology"),
        "cluster": cluster.get("topology"),
    }


def _one(spec: Spec, topology: str, streams: int, opts: Options) -> dict[str, Any]:
    runs = max(1, streams // opts.fanout)
    log_dir = _phase_dir(opts, "cluster", spec, streams, topology.replace(" ", ""))
    maxclients = _maxclients(streams)
    with contextlib.ExitStack() as stack:
        if topology == "1 node":
            nodes = [stack.enter_context(redis_server("single-node", log_dir, maxclients))]
            run_spec = spec
        else:
            nodes = stack.enter_context(redis_cluster(log_dir, maxclients))
            run_spec = replace(spec, extra_env={**spec.extra_env, "RUNSTREAM_REDIS_CLUSTER": "1"})
        system = stack.enter_context(
            running_system(
                run_spec,
                "sqlite",
                log_dir,
                pg_url=opts.pg_url,
                maxclients=maxclients,
                with_worker=False,
                redis=nodes[0],
            )
        )
        result = asyncio.run(_streams(system, streams, runs, opts, nodes[1:]))
    return {"topology": topology, **result}


def _get_rate(row: dict[str, Any]) -> float | None:
    load = row.get("load")
    value = load.get("events_per_s") if isinstance(load, dict) else None
    return float(value) if isinstance(value, int | float) else None
