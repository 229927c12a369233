"""PostgreSQL for tests: a fresh database per test when a server is reachable (skipped
with the reason otherwise), and a TCP proxy that can cut it off like an outage.

PostgreSQL is found at ``RUNSTREAM_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); that database is only used to create
and drop the per-test databases, so tests never see each other's rows or tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from sqlalchemy import make_url

POSTGRES_URL = os.environ.get(
    "RUNSTREAM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@dataclass
class TestDatabase:
    """A database for one test: its SQLAlchemy URL, and for PostgreSQL an admin connection."""

    __test__ = False  # not a test class, whatever its name

    backend: str
    url: str
    admin: Any = None  # asyncpg.Connection to the server's maintenance database
    name: str = ""

    async def server_connections(self) -> int:
        """Connections the PostgreSQL server holds open to this test's database."""
        assert self.admin is not None
        count: int = await self.admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", self.name
        )
        return count


def postgres_url(database: str | None = None, *, port: int | None = None) -> str:
    """The PostgreSQL URL for SQLAlchemy (asyncpg driver), with another database or port."""
    url = make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg")
    if database is not None:
        url = url.set(database=database)
    if port is not None:
        url = url.set(host="127.0.0.1", port=port)
    return url.render_as_string(hide_password=False)


async def connect_admin() -> Any:
    """An asyncpg connection to the PostgreSQL maintenance database, or skip the test."""
    dsn = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(False)
    try:
        return await asyncpg.connect(dsn, timeout=2)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {error!r}")


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[TestDatabase]:
    """A brand-new, empty PostgreSQL database, dropped (connections and all) afterwards."""
    admin = await connect_admin()
    name = f"runstream_test_{uuid.uuid4().hex[:12]}"
    try:
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.PostgresError as error:
            pytest.skip(f"cannot create a test database on {POSTGRES_URL}: {error!r}")
        try:
            yield TestDatabase("postgresql", postgres_url(name), admin, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class TcpProxy:
    """Forwards a local port to PostgreSQL; ``cut()`` drops every connection like an outage.

    Every connection it handles is tracked and closed, and its handler tasks awaited, so
    the proxy itself leaves nothing behind.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (again, on the same port after a ``cut()``)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and abort every forwarded connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            self._writers.add(upstream_writer)
            async with asyncio.TaskGroup() as group:
                group.create_task(_pipe(reader, upstream_writer))
                group.create_task(_pipe(upstream_reader, writer))
        except OSError:
            pass
        finally:
            for each in (writer, upstream_writer):
                if each is not None:
                    self._writers.discard(each)
                    each.transport.abort()
            self._handlers.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        # One direction ending ends the connection: PostgreSQL has no half-open use.
        writer.transport.abort()
