"""``runstream api`` as a process: serves, and on SIGTERM closes open streams and exits 0."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.cli import background, cli_env, free_port, wait_for, wait_healthy
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)

GRACE_S = 30
"""Long on purpose: the API must close its streams at once, not wait this out."""


def api_env(server: RedisServer, tmp_path: Path, instance: str, **more: str) -> dict[str, str]:
    """The environment of an API (and its worker) on ``server`` and a SQLite file."""
    return cli_env(
        RUNSTREAM_REDIS_URL=server.url,
        RUNSTREAM_DATABASE_URL=f"sqlite:///{tmp_path / 'runstream.db'}",
        RUNSTREAM_INSTANCE=instance,
        **more,
    )


def test_api_closes_streams_and_exits_on_sigterm(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = api_env(private_redis, tmp_path, "a1", RUNSTREAM_SHUTDOWN_GRACE_S=str(GRACE_S))
    with background("api", "--port", str(port), env=env, workdir=tmp_path) as api:
        wait_healthy(url, api)
        # No worker runs: the run stays queued and its stream stays open, waiting.
        run = httpx.post(f"{url}/runs", json={"agent": "echo", "input": {"text": "x"}}).json()
        with httpx.stream("GET", f"{url}/runs/{run['id']}/stream", timeout=GRACE_S) as stream:
            assert stream.status_code == 200
            started = time.monotonic()
            api.process.send_signal(signal.SIGTERM)
            # The server ends the response (the chunked body may end abruptly):
            # either way the client resumes elsewhere.
            with contextlib.suppress(httpx.RemoteProtocolError):
                for _ in stream.iter_bytes():
                    pass
        assert api.process.wait(GRACE_S) == 0, api.stderr
        assert time.monotonic() - started < GRACE_S / 3, "the stream held the shutdown"
    assert private_redis.client_names("runstream:") == []
    assert "Traceback" not in api.stderr


def delivered_by_instance(url: str, tries: int = 40) -> dict[str, float]:
    """Events delivered per API process, from /metrics read over fresh connections (each
    process reports only itself; the kernel hands each connection to one of them)."""
    seen: dict[str, float] = {}
    for _ in range(tries):
        text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}).text
        for line in text.splitlines():
            if line.startswith("runstream_events_delivered_total{"):
                instance = line.split('instance="', 1)[1].split('"', 1)[0]
                seen[instance] = float(line.rsplit(" ", 1)[1])
    return seen


def test_api_workers_serve_one_port_from_several_processes_and_streams_resume_across_them(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = api_env(private_redis, tmp_path, "multi")
    with (
        background("api", "--port", str(port), "--workers", "2", env=env, workdir=tmp_path) as api,
        background("worker", env={**env, "RUNSTREAM_INSTANCE": "wk"}, workdir=tmp_path),
    ):
        wait_healthy(url, api)
        wait_for(
            lambda: (
                {"runstream:api:multi-1:pubsub", "runstream:api:multi-2:pubsub"}
                <= set(private_redis.client_names("runstream:"))
            ),
            timeout=20,
            what="both API processes connected",
        )
        input = {"count": 60, "interval_ms": 20}
        run = httpx.post(f"{url}/runs", json={"agent": "scripted", "input": input}).json()
        seqs: list[int] = []
        final = None
        while final is None:  # a new connection for every few events: any process serves it
            headers = {"Connection": "close", "Last-Event-ID": str(seqs[-1] if seqs else 0)}
            with httpx.stream("GET", f"{url}/runs/{run['id']}/stream", headers=headers) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("id: "):
                        seqs.append(int(line[4:]))
                    elif line.startswith("data: ") and '"status":"completed"' in line:
                        final = line
                    if final is not None or (len(seqs) % 5 == 0 and line.startswith("data: ")):
                        break
        assert seqs == list(range(1, len(seqs) + 1))
        delivered = delivered_by_instance(url)
        assert set(delivered) == {"multi-1", "multi-2"}
        assert sum(delivered.values()) == len(seqs)
        api.process.send_signal(signal.SIGTERM)
        assert api.process.wait(30) == 0, api.stderr
    assert [n for n in private_redis.client_names("runstream:") if ":api:" in n] == []


def test_http_max_connections_caps_connections_with_503(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = api_env(private_redis, tmp_path, "cap", RUNSTREAM_HTTP_MAX_CONNECTIONS="3")
    with background("api", "--port", str(port), env=env, workdir=tmp_path) as api:
        wait_healthy(url, api)
        # No worker: the run stays queued, so its streams stay open.
        run = httpx.post(f"{url}/runs", json={"agent": "echo", "input": {"text": "x"}}).json()
        with contextlib.ExitStack() as held:
            statuses = []
            for _ in range(6):
                client = held.enter_context(httpx.Client(base_url=url, timeout=10))
                stream = held.enter_context(client.stream("GET", f"/runs/{run['id']}/stream"))
                statuses.append(stream.status_code)
                if stream.status_code == 503:
                    break
        # Up to 3 connections at once (the earlier requests' may not be closed yet): the
        # one after them is refused by the server itself.
        assert statuses[-1] == 503 and 1 <= statuses.count(200) <= 3, statuses

        # The streams are gone: there is room again.
        def served() -> bool:
            return httpx.get(f"{url}/runs/{run['id']}", timeout=10).status_code == 200

        wait_for(served, 10, "a request served once the streams closed")
