"""``runstream api`` as a process: serves, and on SIGTERM closes open streams and exits 0."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.cli import background, cli_env, free_port, wait_healthy
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)

GRACE_S = 30
"""Long on purpose: the API must close its streams at once, not wait this out."""


def test_api_closes_streams_and_exits_on_sigterm(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = cli_env(
        RUNSTREAM_REDIS_URL=private_redis.url,
        RUNSTREAM_DATABASE_URL=f"sqlite:///{tmp_path / 'runstream.db'}",
        RUNSTREAM_SHUTDOWN_GRACE_S=str(GRACE_S),
        RUNSTREAM_INSTANCE="a1",
    )
    with background("api", "--port", str(port), env=env, workdir=tmp_path) as api:
        wait_healthy(url, api)
        # No worker runs: the run stays queued and its stream stays open, waiting.
        run = httpx.post(f"{url}/runs", json={"agent": "echo", "input": {"text": "x"}}).json()
        with httpx.stream("GET", f"{url}/runs/{run['id']}/stream", timeout=GRACE_S) as stream:
            assert stream.status_code == 200
            started = time.monotonic()
            api.process.send_signal(signal.SIGTERM)
            # The server ends the response (sse-starlette cuts it short, so the chunked
            # body may end abruptly): either way the client resumes elsewhere.
            with contextlib.suppress(httpx.RemoteProtocolError):
                for _ in stream.iter_bytes():
                    pass
        assert api.process.wait(GRACE_S) == 0, api.stderr
        assert time.monotonic() - started < GRACE_S / 3, "the stream held the shutdown"
    assert private_redis.client_names("runstream:") == []
    assert "Traceback" not in api.stderr
