"""PostgreSQL for the throughput phase: a fresh database per system, dropped afterwards.

Uses asyncpg (runstream's own PostgreSQL driver, so it is in the venv when PostgreSQL
is usable at all); the database URL given to both systems is ``postgresql+asyncpg://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def _plain(url: str) -> str:
    """``postgresql://...`` for asyncpg itself."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _execute(url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(_plain(url), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def reachable(url: str) -> str | None:
    """None when PostgreSQL at ``url`` answers, else why not (one line)."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed in this venv"
    try:
        asyncio.run(_execute(url, "SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """Create ``bench_<hex>`` on the server of ``url``, yield its URL, drop it on exit."""
    name = f"bench_{secrets.token_hex(4)}"
    asyncio.run(_execute(url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(url, name)
    finally:
        asyncio.run(_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
