"""Commands that must refuse to start, each with one clear line and the right exit code."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.cli import cli_env, free_port, run_cli

pytestmark = pytest.mark.timeout(60)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("runstream: ")
    return lines[0]


def test_help_lists_every_command() -> None:
    result = run_cli("--help", env=cli_env())
    assert result.returncode == 0
    for command in ("dev", "api", "worker", "run"):
        assert f" {command} " in result.stdout


@pytest.mark.parametrize("command", [["worker"], ["api"], ["dev"]])
def test_bad_configuration_fails_with_one_line(command: list[str]) -> None:
    result = run_cli(*command, env=cli_env(RUNSTREAM_REDIS_MAX_CONNECTIONS="abc"))
    assert result.returncode == 2
    assert "RUNSTREAM_REDIS_MAX_CONNECTIONS" in one_line(result.stderr)


def test_api_refuses_public_bind_without_auth() -> None:
    # The address is refused before any socket is opened: nothing binds 0.0.0.0.
    result = run_cli("api", "--host", "0.0.0.0", env=cli_env())
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "refusing to bind 0.0.0.0 with authentication off" in line
    assert "RUNSTREAM_API_KEYS" in line


def test_dev_refuses_public_bind_without_auth() -> None:
    result = run_cli("dev", "--host", "::", env=cli_env())
    assert result.returncode == 2
    assert "refusing to bind ::" in one_line(result.stderr)


def test_dev_without_redis_server_says_how_to_fix(tmp_path: Path) -> None:
    result = run_cli("dev", env=cli_env(PATH=str(tmp_path)))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "redis-server not found on PATH" in line
    assert "RUNSTREAM_REDIS_URL" in line


def test_run_rejects_input_that_is_not_json() -> None:
    result = run_cli("run", "echo", "--input", "{text: hi}", env=cli_env())
    assert result.returncode == 2
    assert "--input is not valid JSON" in one_line(result.stderr)


def test_run_rejects_input_that_is_not_an_object() -> None:
    result = run_cli("run", "echo", "--input", "[1, 2]", env=cli_env())
    assert result.returncode == 2
    assert "--input must be a JSON object" in one_line(result.stderr)


def test_run_says_when_the_api_is_not_reachable() -> None:
    api = f"http://127.0.0.1:{free_port()}"
    result = run_cli("run", "echo", "--input", '{"text": "hi"}', "--api", api, env=cli_env())
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert f"not reachable at {api}" in line
    assert "runstream dev" in line


def test_run_takes_the_api_url_from_the_environment() -> None:
    api = f"http://127.0.0.1:{free_port()}"
    result = run_cli("run", "echo", "--input", "{}", env=cli_env(RUNSTREAM_API_URL=api))
    assert result.returncode == 1
    assert f"not reachable at {api}" in one_line(result.stderr)


def test_bad_log_settings_fail_with_one_line() -> None:
    result = run_cli("worker", env=cli_env(RUNSTREAM_LOG_JSON="maybe"))
    assert result.returncode == 2
    assert "RUNSTREAM_LOG_JSON" in one_line(result.stderr)
    result = run_cli("--log-level", "loud", "worker", env=cli_env())
    assert result.returncode == 2
    assert "unknown log level 'loud'" in one_line(result.stderr)


def test_dev_reports_a_redis_server_that_does_not_start(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    result = run_cli("dev", "--port", str(free_port()), env=cli_env(PATH=str(tmp_path)))
    assert result.returncode == 1
    assert "the embedded redis-server did not start" in one_line(result.stderr)


def test_dev_reports_a_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = cli_env(RUNSTREAM_DATABASE_URL=f"sqlite:///{tmp_path / 'runstream.db'}")
        result = run_cli("dev", "--port", str(port), env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"runstream: the API could not start on 127.0.0.1:{port} (see the log above)"
    assert "address already in use" in result.stderr
