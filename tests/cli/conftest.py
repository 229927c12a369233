"""Fixtures for the CLI tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (no persistence, free loopback port)."""
    server = RedisServer(tmp_path / "redis-data")
    server.workdir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()
