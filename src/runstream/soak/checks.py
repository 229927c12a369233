"""What a client must see of one run: seq 1..N once each, in order, then one terminal event.

A :class:`RunCheck` is fed every event a virtual client receives for its run, across
every connection it opened (resumes included), and tells apart the two kinds of bad
outcome the verdict keeps apart:

- *losses*: a ``gap`` event, a missing or repeated ``seq``, an event after the terminal
  one, no terminal event at all; the delivery guarantees were broken.
- *errors*: anything else that was not what the scenario expects (a wrong final status,
  missing ticks behind contiguous seqs, an unexpected HTTP answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runstream.client.events import StreamEvent


@dataclass
class RunCheck:
    """The events received for one run and what was wrong with them."""

    run_id: str
    cursor: int = 0
    """The last ``seq`` received: where a resume continues (``Last-Event-ID``)."""
    events: int = 0
    ticks: list[int] = field(default_factory=list)
    """The ``n`` of each ``tick`` event (``scripted``), or 1, 2, 3... per ``token`` (echo)."""
    terminal: StreamEvent | None = None
    losses: list[str] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)

    def accept(self, event: StreamEvent) -> None:
        """Account for one received event."""
        self.events += 1
        if self.terminal is not None:
            self.losses.append(f"event seq {event.seq} ({event.type}) after the terminal event")
            return
        if event.type == "gap":
            first, last = event.data.get("from"), event.data.get("to")
            self.gaps.append((_int(first, event.seq), _int(last, event.seq)))
            self.losses.append(f"gap event: seqs {first}..{last} exist nowhere any more")
            self.cursor = max(self.cursor, event.seq)
            return
        if event.seq <= self.cursor:
            self.losses.append(f"duplicate seq {event.seq} (already had up to {self.cursor})")
            return
        if event.seq > self.cursor + 1:
            missing = f"{self.cursor + 1}..{event.seq - 1}"
            self.losses.append(f"missing seqs {missing} (next came {event.seq})")
        self.cursor = event.seq
        if event.type == "tick":
            self.ticks.append(_int(event.data.get("n"), -1))
        elif event.type == "token":
            self.ticks.append(len(self.ticks) + 1)
        if event.is_terminal:
            self.terminal = event

    @property
    def status(self) -> str | None:
        """The final status the terminal event announced, if it came."""
        return None if self.terminal is None else str(self.terminal.data.get("status"))

    @property
    def error_message(self) -> str:
        """The terminal event's error message (empty when it has none)."""
        if self.terminal is None:
            return ""
        return str(self.terminal.data.get("error") or "")


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) else default
