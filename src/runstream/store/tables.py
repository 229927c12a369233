"""The SQL schema, the only one: run records and the archived events of finished runs.

Rows here are storage details; the rest of runstream sees :class:`runstream.models.Run`
and :class:`runstream.models.Event`, built by the repository.
"""

from __future__ import annotations

# Needed at runtime: SQLAlchemy resolves the Mapped[...] annotations when mapping.
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runstream.models import RunStatus

_STATUSES = ", ".join(f"'{status.value}'" for status in RunStatus)


class Base(DeclarativeBase):
    """Declarative base whose ``metadata`` holds every runstream table."""


class RunRow(Base):
    """One run record (table ``runs``)."""

    __tablename__ = "runs"
    __table_args__ = (
        # Idempotency-Key is per principal; NULL keys never collide (SQL NULLs are distinct).
        UniqueConstraint("principal", "idempotency_key", name="uq_runs_principal_idempotency_key"),
        # Serves GET /runs: one principal, newest first, keyset-paginated on (created_at, id).
        Index("ix_runs_principal_created_at_id", "principal", "created_at", "id"),
        # Serves the sweeper looking for runs stuck in one status.
        Index("ix_runs_status_created_at", "status", "created_at"),
        CheckConstraint(f"status IN ({_STATUSES})", name="ck_runs_status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    principal: Mapped[str] = mapped_column(String)
    agent: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    thread_id: Mapped[str | None] = mapped_column(String, nullable=True)
    # ``metadata`` is reserved on declarative classes, hence the attribute name ``meta``.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class EventRow(Base):
    """One archived event of a run (table ``run_events``)."""

    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String)
    # The event JSON exactly as the worker encoded it, so a replay from the database is
    # byte-for-byte what live readers got from Redis.
    data: Mapped[bytes] = mapped_column(LargeBinary)


metadata = Base.metadata
