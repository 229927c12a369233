"""Opening and closing the database: one AsyncEngine per process, owned by ``open_store``."""

from __future__ import annotations

import asyncio
import functools
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from runstream.concurrency import finish_shielded
from runstream.errors import BackendUnavailable
from runstream.store.repository import (
    RunStore,
    configure_sqlite_connection,
    create_schema,
    database_errors,
    use_wal,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.engine import URL

CONNECT_TIMEOUT_S = 2.0
"""How long opening one connection may take before the database counts as down."""

POOL_SIZE = 5
POOL_TIMEOUT_S = 10.0
"""How long a caller waits for a free pooled connection before TooManyConnections."""

UNPINGED_RECYCLE_S = 300
"""The age at which the worker's (unpinged) pool replaces a PostgreSQL connection."""

SQLITE_BUSY_TIMEOUT_MS = 5000

DISPOSE_TIMEOUT_S = 10.0
"""The most closing every pooled connection may take at exit."""


@asynccontextmanager
async def open_store(
    database_url: str, *, role: str = "unknown", instance: str = "unknown"
) -> AsyncIterator[RunStore]:
    """Connect to ``database_url``, create missing tables, and yield a RunStore.

    ``database_url`` is ``sqlite+aiosqlite://...`` or ``postgresql+asyncpg://...``. Every
    pooled connection is closed on exit, on success, error and cancellation alike.
    Raises BackendUnavailable when the database cannot be reached. ``role`` and
    ``instance`` name the process in a TooManyConnections.
    """
    # The worker retries every database call (a failed run start is delivered again), so
    # a connection that died with a restarted server costs it a retry, not a ping before
    # every transaction (one round trip more each, on the path of every run).
    engine = build_engine(database_url, pre_ping=role != "worker")
    try:
        with database_errors(role=role, instance=instance):
            if engine.dialect.name == "sqlite":
                _check_sqlite_directory(engine.url)
                await _use_wal(engine)
            async with engine.begin() as connection:
                await create_schema(connection)
        yield RunStore(engine, role=role, instance=instance)
    finally:
        await finish_shielded(engine.dispose(), within_s=DISPOSE_TIMEOUT_S)


def build_engine(database_url: str, *, pre_ping: bool = True) -> AsyncEngine:
    """An AsyncEngine with a small bounded pool, tuned for the URL's backend; with
    ``pre_ping`` a pooled PostgreSQL connection is checked before it is handed out."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend == "postgresql":
        return _postgresql_engine(url, pre_ping=pre_ping)
    raise ValueError(f"unsupported database URL scheme {url.drivername!r}")


def _postgresql_engine(url: URL, *, pre_ping: bool) -> AsyncEngine:
    connect_args: dict[str, Any] = {}
    if "timeout" not in url.query:  # an explicit ?timeout= in the URL wins
        connect_args["timeout"] = CONNECT_TIMEOUT_S
    return create_async_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT_S,
        # Connections that died with a restarted server are replaced, not handed out.
        pool_pre_ping=pre_ping,
        # Without the ping, a connection is replaced before the idle timeouts a pooler or
        # a load balancer commonly applies, rather than found closed by a run.
        pool_recycle=-1 if pre_ping else UNPINGED_RECYCLE_S,
        connect_args=connect_args,
    )


def _sqlite_engine(url: URL) -> AsyncEngine:
    if _is_memory(url):
        # An in-memory database lives in one connection: SQLAlchemy's StaticPool, no sizing.
        engine = create_async_engine(url)
    else:
        engine = create_async_engine(
            url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=POOL_TIMEOUT_S
        )
    busy = functools.partial(configure_sqlite_connection, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)
    event.listen(engine.sync_engine, "connect", busy)
    return engine


def _check_sqlite_directory(url: URL) -> None:
    # Says which directory is missing, which "unable to open database file" does not, and
    # keeps aiosqlite off its failed-connect path, whose worker thread outlives the call
    # (it can then report "Event loop is closed" from a thread: omnilib/aiosqlite#389).
    database = url.database
    if database is None or _is_memory(url) or database.startswith("file:"):  # URI: SQLite's
        return
    directory = Path(database).absolute().parent
    if not directory.is_dir():
        raise BackendUnavailable(
            f"database unavailable: directory {directory} does not exist", dependency="the database"
        )


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:")


async def _use_wal(engine: AsyncEngine) -> None:
    # WAL: readers never block the writer, so API and worker processes share the file.
    # The mode is stored in the file, so switching once per open is enough. Connections
    # racing to switch a fresh file get "database is locked" at once, without the busy
    # timeout applying, hence the retries.
    if _is_memory(engine.url):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            async with engine.connect() as connection:
                await use_wal(connection)
            return
        except OperationalError as error:
            if "locked" not in str(error) or loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)
