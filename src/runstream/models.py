"""Pure data: runs, their statuses and their events. No I/O here."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from runstream.errors import AgentError


class RunStatus(enum.StrEnum):
    """Where a run is in its life; the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED})


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, as every time in the API and the stream is written."""
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite hands naive datetimes back; they were stored as UTC.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Run:
    """A run record as the store keeps it."""

    id: str
    principal: str
    agent: str
    status: RunStatus
    input: dict[str, Any]
    thread_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    last_seq: int = 0

    def to_public(self, last_seq: int | None = None, *, with_input: bool = True) -> dict[str, Any]:
        """The run object of the HTTP API. A list leaves ``input`` out (``with_input``):
        inputs may be up to RUNSTREAM_MAX_INPUT_BYTES each, too much for a page of 100."""
        public: dict[str, Any] = {
            "id": self.id,
            "agent": self.agent,
            "status": self.status.value,
            "thread_id": self.thread_id,
            "metadata": self.metadata,
            "created_at": isoformat(self.created_at),
            "started_at": isoformat(self.started_at),
            "completed_at": isoformat(self.completed_at),
            "error": self.error,
            "last_seq": self.last_seq if last_seq is None else max(last_seq, self.last_seq),
        }
        if with_input:
            public["input"] = self.input
        return public


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a run's log: its ``seq``, its ``type`` and its JSON text (seq and ts inside)."""

    seq: int
    type: str
    data: bytes

    @property
    def is_terminal(self) -> bool:
        """True for the final ``status`` event of a run."""
        if self.type != "status":
            return False
        status = orjson.loads(self.data).get("status")
        return status in {s.value for s in _FINAL}

    def to_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.data)
        return value


PAGE_BYTES = 1024 * 1024
"""What one page of a log or archive read holds at most, plus one event: a reader's
memory is bounded by bytes, not only by a count of events of any size."""


def is_last_page(events: Sequence[Event], limit: int) -> bool:
    """Whether a page of at most ``limit`` events reached the end of what there was (a
    page cut by the count or by :data:`PAGE_BYTES` did not)."""
    return len(events) < limit and sum(len(event.data) for event in events) < PAGE_BYTES


RESERVED_TYPES = frozenset({"status", "gap"})
"""Event types only the system writes: an agent that yields one fails its run, so a
reader can trust a ``status`` event to come from the run's writer."""


def build_event(raw: object, seq: int, moment: datetime, max_bytes: int) -> Event:
    """Check what an agent yielded and turn it into the ``seq``-th event of its run.

    Raises AgentError when ``raw`` is not a JSON object with a string ``type``, has a
    reserved type, or is larger than ``max_bytes`` once encoded.
    """
    if not isinstance(raw, dict):
        raise AgentError(f"agent yielded {type(raw).__name__}, expected a JSON object (dict)")
    kind = raw.get("type")
    if not isinstance(kind, str) or not kind:
        raise AgentError("agent yielded an event without a non-empty string 'type'")
    if "\n" in kind or "\r" in kind:
        raise AgentError("an event 'type' cannot contain a line break")
    if kind in RESERVED_TYPES:
        raise AgentError(f"agent yielded a {kind!r} event: 'status' and 'gap' are the system's own")
    return _encode({**raw, "type": kind}, seq, moment, max_bytes)


def _encode(raw: dict[Any, Any], seq: int, moment: datetime, max_bytes: int) -> Event:
    kind = raw["type"]
    body = {**raw, "seq": seq, "ts": isoformat(moment)}
    try:
        data = orjson.dumps(body)
    except TypeError as exc:
        raise AgentError(f"agent yielded an event that is not JSON: {exc}") from None
    if len(data) > max_bytes:
        raise AgentError(
            f"agent yielded an event of {len(data)} bytes, over the limit of {max_bytes}"
        )
    return Event(seq=seq, type=kind, data=data)


def status_event(status: RunStatus, seq: int, moment: datetime, error: str | None = None) -> Event:
    """The system's own ``status`` event; ``error`` only for failed or stopped runs."""
    body: dict[str, Any] = {"type": "status", "status": status.value}
    if error is not None:
        body["error"] = error
    return _encode(body, seq, moment, max_bytes=1 << 30)


def gap_event(first_missing: int, last_missing: int) -> Event:
    """The message a reader gets when events ``first..last`` exist nowhere any more."""
    body = {"type": "gap", "from": first_missing, "to": last_missing}
    return Event(seq=last_missing, type="gap", data=orjson.dumps(body))
