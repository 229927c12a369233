"""Cluster settings that cannot work stop the process at start with one line."""

from __future__ import annotations

import asyncio

import pytest

from runstream.errors import ConfigError
from runstream.worker.process import run_worker
from tests.cli import cli_env, run_cli
from tests.redis_server import RedisServer
from tests.system import make_settings


async def test_cluster_mode_against_a_standalone_redis_stops_the_worker(
    redis_url: str, sqlite_url: str
) -> None:
    settings = make_settings(redis_url, sqlite_url, instance="wk-conf", redis_cluster=True)
    with pytest.raises(ConfigError, match=r"RUNSTREAM_REDIS_CLUSTER is set but .* not a cluster"):
        await run_worker(settings, asyncio.Event())


def test_cluster_mode_against_a_standalone_redis_is_one_line_from_the_cli(
    redis_server: RedisServer, sqlite_url: str
) -> None:
    env = cli_env(
        RUNSTREAM_REDIS_URL=redis_server.url,
        RUNSTREAM_REDIS_CLUSTER="1",
        RUNSTREAM_DATABASE_URL=sqlite_url,
    )
    result = run_cli("worker", env=env, timeout=30)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not a cluster node" in lines[0], result.stderr


def test_a_unix_socket_cannot_name_a_cluster() -> None:
    with pytest.raises(ConfigError, match="RUNSTREAM_REDIS_CLUSTER needs"):
        make_settings("unix:///tmp/redis.sock", "sqlite:///x.db", redis_cluster=True)


def test_dev_in_cluster_mode_needs_a_cluster_url() -> None:
    result = run_cli("dev", env=cli_env(RUNSTREAM_REDIS_CLUSTER="1"), timeout=30)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs RUNSTREAM_REDIS_URL" in lines[0], result.stderr
