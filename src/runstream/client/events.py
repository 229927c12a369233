"""A run's stream as the client sees it: one :class:`StreamEvent` per SSE message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from runstream.client.errors import ClientError

if TYPE_CHECKING:
    from httpx_sse import ServerSentEvent

FINAL_STATUSES: Final = frozenset({"completed", "failed", "stopped"})


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a run's stream: its ``seq`` (the SSE id), ``type`` and JSON body."""

    seq: int
    type: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        """True for the run's last event, the final ``status``."""
        return self.type == "status" and self.data.get("status") in FINAL_STATUSES


def parse_event(sse: ServerSentEvent) -> StreamEvent:
    """A :class:`StreamEvent` from an SSE message, or ClientError if it is not runstream's."""
    try:
        seq = int(sse.id)
        data = orjson.loads(sse.data)
    except (TypeError, ValueError, orjson.JSONDecodeError):
        raise ClientError(f"the API sent an event that is not runstream's: {sse!r}") from None
    if not isinstance(data, dict):
        raise ClientError(f"the API sent an event that is not a JSON object: {sse.data[:200]}")
    return StreamEvent(seq=seq, type=sse.event or str(data.get("type", "message")), data=data)
