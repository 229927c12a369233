"""Real databases for the store tests: a SQLite file per test, and a fresh PostgreSQL
database per test when a server is reachable (skipped with the reason otherwise)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from sqlalchemy import make_url

from runstream.store import RunStore, open_store
from tests.postgres import TcpProxy, TestDatabase, fresh_postgres_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TestDatabase]:
    """An empty database of each backend."""
    if request.param == "sqlite":
        yield TestDatabase("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'runstream.db'}")
        return
    async with fresh_postgres_database() as database:
        yield database


@pytest.fixture
async def store(database: TestDatabase) -> AsyncIterator[RunStore]:
    """A RunStore opened on ``database``, closed after the test."""
    async with open_store(database.url) as store:
        yield store


@pytest.fixture
async def postgres() -> AsyncIterator[TestDatabase]:
    """A fresh PostgreSQL database alone, for tests about PostgreSQL's network paths."""
    async with fresh_postgres_database() as database:
        yield database


@pytest.fixture
async def proxy(postgres: TestDatabase) -> AsyncIterator[TcpProxy]:
    """A TcpProxy in front of the PostgreSQL server of ``postgres``."""
    url = make_url(postgres.url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()
