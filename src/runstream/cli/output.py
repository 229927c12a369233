"""How ``runstream run`` shows a run: one line per event on stdout, notes on stderr.

stdout carries only events, so it can be piped; what the CLI itself has to say (the run
id, reconnections, the outcome) goes to stderr.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from rich.console import Console
from rich.text import Text

from runstream.client.events import StreamEvent

# seq, type and ts are shown (or implied) by the line itself, not repeated in its JSON.
_SHOWN_APART: Final = frozenset({"seq", "type", "ts"})

_STATUS_STYLES: Final = {
    "running": "blue",
    "completed": "bold green",
    "failed": "bold red",
    "stopped": "bold yellow",
}


def consoles() -> tuple[Console, Console]:
    """The stdout and stderr consoles: no markup, no highlighting, no wrapping.

    Agent text is data: Rich must neither interpret ``[brackets]`` in it nor re-wrap a
    long line at the terminal width (each event is exactly one line).
    """
    options: dict[str, Any] = {
        "markup": False,
        "emoji": False,
        "highlight": False,
        "soft_wrap": True,
    }
    return Console(**options), Console(stderr=True, **options)


class EventPrinter:
    """Prints events and the CLI's notes about them."""

    def __init__(self, out: Console, err: Console) -> None:
        self._out = out
        self._err = err

    def event(self, event: StreamEvent) -> None:
        """One line: seq, type, then the token's text, a gap's extent or compact JSON."""
        line = Text(f"{event.seq:>5} ", style="dim")
        line.append(f"{event.type:<8} ", style=_type_style(event))
        line.append_text(_body(event))
        self._out.print(line)

    def note(self, message: str, style: str = "dim") -> None:
        """A line on stderr about the run rather than from it."""
        self._err.print(Text(message, style=style))


def _type_style(event: StreamEvent) -> str:
    if event.type == "status":
        return _STATUS_STYLES.get(str(event.data.get("status")), "bold")
    if event.type == "gap":
        return "bold black on yellow"
    return "cyan" if event.type == "token" else "magenta"


def _body(event: StreamEvent) -> Text:
    if event.type == "token" and isinstance(event.data.get("text"), str):
        return Text(event.data["text"])
    if event.type == "gap":
        first, last = event.data.get("from"), event.data.get("to")
        span = (
            f"event {first} no longer exists"
            if first == last
            else (f"events {first}..{last} no longer exist")
        )
        return Text(
            f"{span} (expired, or lost with a Redis restart); the stream goes on without them",
            style="yellow",
        )
    rest = {k: v for k, v in event.data.items() if k not in _SHOWN_APART}
    return Text(orjson.dumps(rest).decode())
