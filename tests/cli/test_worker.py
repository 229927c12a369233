"""``runstream worker`` as a process: starts, logs JSON, stops on SIGTERM with exit 0."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING

import pytest

from tests.cli import background, cli_env, free_port, wait_for
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)


def test_worker_exits_on_sigterm(private_redis: RedisServer, tmp_path: Path) -> None:
    env = cli_env(
        RUNSTREAM_REDIS_URL=private_redis.url,
        RUNSTREAM_DATABASE_URL=f"sqlite:///{tmp_path / 'runstream.db'}",
        RUNSTREAM_INSTANCE="w1",
        RUNSTREAM_LOG_JSON="1",
    )
    with background("worker", env=env, workdir=tmp_path) as worker:
        wait_for(lambda: "worker started" in worker.stderr, 20, "the worker to start")
        names = private_redis.client_names("runstream:worker:w1:")
        assert "runstream:worker:w1:pubsub" in names
        assert worker.signal_and_wait(signal.SIGTERM, timeout=15) == 0, worker.stderr

    # Every connection it held is gone, and its log is JSON lines with our fields.
    assert private_redis.client_names("runstream:") == []
    records = [json.loads(line) for line in worker.stderr.splitlines()]
    stopped = [r for r in records if r["event"] == "worker stopped"]
    assert stopped and stopped[0]["instance"] == "w1"
    assert {"timestamp", "level", "logger"} <= stopped[0].keys()
    assert stopped[0]["timestamp"].endswith("Z")
    assert not any(r["logger"].startswith("streaq") and r["level"] == "info" for r in records)


def test_worker_without_redis_still_stops_on_sigterm(tmp_path: Path) -> None:
    env = cli_env(
        RUNSTREAM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        RUNSTREAM_DATABASE_URL=f"sqlite:///{tmp_path / 'runstream.db'}",
    )
    with background("worker", env=env, workdir=tmp_path) as worker:
        # It waits for Redis to come back rather than exit...
        wait_for(lambda: "restarting" in worker.stderr, 20, "the queue to retry")
        # ...and a stop signal still ends it cleanly.
        assert worker.signal_and_wait(signal.SIGTERM, timeout=15) == 0, worker.stderr
    assert "Traceback" not in worker.stderr
