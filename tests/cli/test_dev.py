"""``runstream dev`` end to end, and ``runstream run`` against it: real processes only."""

from __future__ import annotations

import re
import signal
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.cli import (
    Background,
    CuttableProxy,
    accepts_connections,
    background,
    cli_env,
    free_port,
    run_cli,
    wait_for,
    wait_healthy,
)
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)


def dev_env(workdir: Path) -> dict[str, str]:
    """No RUNSTREAM_REDIS_URL (so dev embeds its own), a database in ``workdir``."""
    return cli_env(RUNSTREAM_DATABASE_URL=f"sqlite:///{workdir / 'runstream.db'}")


def embedded_redis_port(dev: Background) -> int:
    dev.wait_output("Redis")
    match = re.search(r"redis://127\.0\.0\.1:(\d+)/0 \(embedded", dev.stdout)
    assert match, f"no embedded Redis URL in the banner:\n{dev.stdout}"
    return int(match.group(1))


@pytest.fixture(scope="module")
def dev_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``runstream dev`` shared by the tests that only start runs; its base URL."""
    workdir = tmp_path_factory.mktemp("dev")
    port = free_port()
    with background("dev", "--port", str(port), env=dev_env(workdir), workdir=workdir) as dev:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, dev)
        yield url
        assert dev.signal_and_wait(signal.SIGTERM, timeout=20) == 0, dev.stderr


def event_lines(stdout: str) -> list[tuple[int, str, str]]:
    """(seq, type, rest) for each event line of ``runstream run``."""
    found = []
    for line in stdout.splitlines():
        seq, kind, rest = [*line.split(None, 2), "", ""][:3]
        found.append((int(seq), kind, rest))
    return found


def test_dev_serves_a_run_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    with background("dev", "--port", str(port), env=dev_env(tmp_path), workdir=tmp_path) as dev:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, dev)
        redis_port = embedded_redis_port(dev)
        assert f"API       {url}" in dev.stdout
        assert "runstream run echo --input" in dev.stdout

        result = run_cli("run", "echo", "--input", '{"text":"a b c"}', "--api", url, env=cli_env())
        assert result.returncode == 0, result.stderr
        events = event_lines(result.stdout)
        assert [(kind, rest) for _, kind, rest in events] == [
            ("status", '{"status":"running"}'),
            ("token", "a"),
            ("token", "b"),
            ("token", "c"),
            ("status", '{"status":"completed"}'),
        ]
        assert [seq for seq, _, _ in events] == [1, 2, 3, 4, 5]
        assert "completed" in result.stderr

        assert accepts_connections(redis_port)
        assert dev.signal_and_wait(signal.SIGINT, timeout=15) == 0, dev.stderr
        # The private redis-server went with it.
        assert not accepts_connections(redis_port)
        assert "Traceback" not in dev.stderr
        assert (tmp_path / "runstream.db").exists()


def test_dev_gives_api_and_worker_distinct_instances(tmp_path: Path) -> None:
    port = free_port()
    env = dev_env(tmp_path) | {"RUNSTREAM_LOG_JSON": "1", "RUNSTREAM_INSTANCE": "laptop"}
    with background("dev", "--port", str(port), env=env, workdir=tmp_path) as dev:
        wait_healthy(f"http://127.0.0.1:{port}", dev)
        wait_for(lambda: "worker started" in dev.stderr, 20, "the worker to start")
        assert '"instance": "laptop-api"' in dev.stderr
        assert '"instance": "laptop-worker"' in dev.stderr
        assert dev.signal_and_wait(signal.SIGTERM, timeout=15) == 0, dev.stderr


def test_run_follows_a_scripted_failure_and_exits_1(dev_api: str) -> None:
    result = run_cli(
        "run", "scripted", "--input", '{"count": 3, "fail_after": 2}', "--api", dev_api,
        env=cli_env(),
    )  # fmt: skip
    assert result.returncode == 1
    kinds = [kind for _, kind, _ in event_lines(result.stdout)]
    assert kinds == ["status", "tick", "tick", "status"]
    assert '"status":"failed"' in result.stdout.splitlines()[-1]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("failed: RuntimeError (details in the worker log)")
    )


def test_run_shows_the_api_error_and_exits_1(dev_api: str) -> None:
    result = run_cli("run", "nope", "--input", "{}", "--api", dev_api, env=cli_env())
    assert result.returncode == 1
    line = result.stderr.strip()
    assert line.startswith("runstream: ") and "\n" not in line
    assert "(unknown_agent, HTTP 422)" in line
    assert result.stdout == ""


def test_run_passes_the_thread_id(dev_api: str) -> None:
    result = run_cli(
        "run", "echo", "--input", '{"text": "x"}', "--thread-id", "t-42", "--api", dev_api,
        env=cli_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = httpx.get(f"{dev_api}/runs", params={"thread_id": "t-42"}, timeout=5).json()["runs"]
    assert [run["agent"] for run in runs] == ["echo"]


def test_ctrl_c_stops_the_run_and_exits_3(dev_api: str, tmp_path: Path) -> None:
    args = ["run", "scripted", "--input", '{"count": 100000, "interval_ms": 20}', "--api", dev_api]
    with background(*args, env=cli_env(), workdir=tmp_path) as run:
        run.wait_output(" tick ")
        code = run.signal_and_wait(signal.SIGINT, timeout=20)
        assert code == 3, run.stderr
    events = event_lines(run.stdout)
    assert events[-1][1:] == ("status", '{"status":"stopped"}')
    # Every seq once, in order: nothing missed or repeated while stopping.
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    assert "stopping the run" in run.stderr


def test_run_resumes_a_dropped_stream_without_gap_or_repeat(dev_api: str, tmp_path: Path) -> None:
    api_port = int(dev_api.rsplit(":", 1)[1])
    count = 60
    args = ["run", "scripted", "--input", f'{{"count": {count}, "interval_ms": 40}}']
    with CuttableProxy(api_port) as proxy:
        api = f"http://127.0.0.1:{proxy.port}"
        with background(*args, "--api", api, env=cli_env(), workdir=tmp_path) as run:
            run.wait_output(" tick ")
            proxy.cut()
            seen = len(run.stdout.splitlines())
            wait_for(lambda: len(run.stdout.splitlines()) > seen + 2, 20, "more events")
            proxy.cut()
            assert run.process.wait(30) == 0, run.stderr
        assert proxy.accepted >= 3  # the first connection, then one per cut

    events = event_lines(run.stdout)
    assert [seq for seq, _, _ in events] == list(range(1, count + 3))
    ticks = [rest for _, kind, rest in events if kind == "tick"]
    assert ticks == [f'{{"n":{n},"payload":""}}' for n in range(1, count + 1)]
    assert run.stderr.count("reconnecting") >= 2


def test_second_ctrl_c_leaves_at_once(dev_api: str, tmp_path: Path) -> None:
    # The agent ignores the stop: the run only ends after STOP_GRACE_S (5 s), so an exit
    # code of 130 rather than 3 shows the second Ctrl-C did not wait for it.
    stubborn = '{"count": 1, "hang": true, "ignore_stop": true}'
    args = ["run", "scripted", "--input", stubborn, "--api", dev_api]
    with background(*args, env=cli_env(), workdir=tmp_path) as run:
        run.wait_output(" tick ")
        run.process.send_signal(signal.SIGINT)
        wait_for(lambda: "stopping the run" in run.stderr, 10, "the stop request")
        assert run.signal_and_wait(signal.SIGINT, timeout=5) == 130
    assert run.stderr.strip().splitlines()[-1].startswith("runstream: left run ")


def test_dev_stops_running_runs_on_shutdown(tmp_path: Path) -> None:
    env = dev_env(tmp_path) | {"RUNSTREAM_SHUTDOWN_GRACE_S": "1", "RUNSTREAM_STOP_GRACE_S": "1"}
    stubborn = {"agent": "scripted", "input": {"count": 1, "hang": True, "ignore_stop": True}}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with background("dev", "--port", str(port), env=env, workdir=tmp_path) as dev:
        wait_healthy(url, dev)
        run_id = httpx.post(f"{url}/runs", json=stubborn, timeout=5).json()["id"]
        wait_for(lambda: run_status(url, run_id) == "running", 20, "the run to start")
        dev.process.send_signal(signal.SIGINT)
        # A second Ctrl-C is acknowledged; the worker still ends the run on its own path.
        wait_for(lambda: "Shutting down" in dev.stderr, 10, "the API to shut down")
        assert dev.signal_and_wait(signal.SIGINT, timeout=15) == 0, dev.stderr
        assert "the worker is ending its runs" in dev.stderr

    # The record is final in the database the next dev (with a new Redis) reads.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with background("dev", "--port", str(port), env=env, workdir=tmp_path) as dev:
        wait_healthy(url, dev)
        run = httpx.get(f"{url}/runs/{run_id}", timeout=5).json()
        assert (run["status"], run["error"]) == ("stopped", "worker shut down")
        assert dev.signal_and_wait(signal.SIGTERM, timeout=15) == 0, dev.stderr


def run_status(url: str, run_id: str) -> str:
    status: str = httpx.get(f"{url}/runs/{run_id}", timeout=5).json()["status"]
    return status


def test_dev_uses_redis_url_when_set(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis-data")
    redis.workdir.mkdir()
    redis.start()
    try:
        env = dev_env(tmp_path) | {"RUNSTREAM_REDIS_URL": redis.url, "RUNSTREAM_INSTANCE": "d1"}
        port = free_port()
        with background("dev", "--port", str(port), env=env, workdir=tmp_path) as dev:
            wait_healthy(f"http://127.0.0.1:{port}", dev)
            dev.wait_output("Redis")
            (line,) = [ln for ln in dev.stdout.splitlines() if " Redis " in ln]
            assert redis.url in line and "embedded" not in line
            # Both halves are on the given server, each under its own instance name.
            names = redis.client_names("runstream:")
            assert "runstream:api:d1-api:pubsub" in names
            assert "runstream:worker:d1-worker:pubsub" in names
            assert dev.signal_and_wait(signal.SIGTERM, timeout=15) == 0, dev.stderr
        assert redis.client_names("runstream:") == []
    finally:
        redis.stop()
