"""Events ready for the wire: each one encoded as Server-Sent Events bytes once per process.

A follower hands the same :class:`Frame` to every local reader of a run: the hub builds
one per notification, the shared reads one per event of a page, so the bytes of an event
are built once however many readers it has.
"""

from __future__ import annotations

from dataclasses import dataclass

from runstream.models import Event
from runstream.streams.eventlog import decode_notification


@dataclass(frozen=True, slots=True)
class Frame:
    """An event and its SSE encoding (``id``, ``event`` and ``data`` lines)."""

    event: Event
    sse: bytes
    terminal: bool

    @property
    def seq(self) -> int:
        return self.event.seq


def to_frame(event: Event) -> Frame:
    """Encode ``event`` for an EventSource; its id is the ``seq`` a client resumes from."""
    data = event.data
    # The JSON of an event is one line (orjson never writes a raw line break), but a
    # line break would end an SSE field, so one is split over several data lines.
    if b"\n" in data or b"\r" in data:
        data = b"\ndata: ".join(data.splitlines())
    sse = b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), data)
    return Frame(event=event, sse=sse, terminal=event.is_terminal)


def notification_frame(payload: bytes) -> Frame:
    """The frame of the event an append notification announces (the hub's decoder)."""
    return to_frame(decode_notification(payload))
