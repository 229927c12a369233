"""The run records (the original's ``agent_runs`` table), in SQLite or PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = sa.MetaData()
agent_runs = sa.Table(
    "agent_runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("agent", sa.String(100), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.Column("responses", sa.Text),
)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """The few queries the API and the worker make."""

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(url)

    async def create_schema(self) -> None:
        """Create the table if it is missing."""
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def close(self) -> None:
        """Dispose of the engine's pool."""
        await self.engine.dispose()

    async def ping(self) -> None:
        """One round trip."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def insert(self, run_id: str, agent: str, input: dict[str, Any]) -> dict[str, Any]:
        """A new run, ``running`` from the start as the original recorded it."""
        row = {
            "id": run_id,
            "agent": agent,
            "status": "running",
            "input": orjson.dumps(input).decode(),
            "created_at": datetime.now(UTC),
        }
        async with self.engine.begin() as conn:
            await conn.execute(agent_runs.insert().values(**row))
        return self._public({**row, "completed_at": None, "error": None})

    async def get(self, run_id: str) -> dict[str, Any] | None:
        """The run, or None."""
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.select(*self._columns()).where(agent_runs.c.id == run_id)
            )
            row = result.mappings().first()
        return None if row is None else self._public(dict(row))

    async def list_runs(self, status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """Runs newest first, optionally of one status."""
        query = sa.select(*self._columns()).order_by(agent_runs.c.created_at.desc())
        if status:
            query = query.where(agent_runs.c.status == status)
        async with self.engine.connect() as conn:
            result = await conn.execute(query.limit(limit).offset(offset))
            return [self._public(dict(row)) for row in result.mappings()]

    async def finish(
        self, run_id: str, status: str, error: str | None, responses: list[Any]
    ) -> None:
        """Final status, error and every response, as ``update_agent_run_status`` did."""
        values = {
            "status": status,
            "error": error,
            "completed_at": datetime.now(UTC),
            "responses": orjson.dumps(responses).decode(),
        }
        async with self.engine.begin() as conn:
            await conn.execute(agent_runs.update().where(agent_runs.c.id == run_id).values(values))

    @staticmethod
    def _columns() -> list[sa.Column[Any]]:
        c = agent_runs.c
        return [c.id, c.agent, c.status, c.created_at, c.completed_at, c.error]

    @staticmethod
    def _public(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "agent": row["agent"],
            "status": row["status"],
            "created_at": _iso(row["created_at"]),
            "completed_at": _iso(row.get("completed_at")),
            "error": row.get("error"),
        }
