"""How ``runstream run`` prints events, and how it reads them off the wire (in-process)."""

from __future__ import annotations

import io

import pytest
from httpx_sse import ServerSentEvent
from rich.console import Console

from runstream.cli.output import EventPrinter
from runstream.client.errors import ClientError
from runstream.client.events import StreamEvent, parse_event


def printed(*events: StreamEvent) -> list[str]:
    out, err = io.StringIO(), io.StringIO()
    printer = EventPrinter(
        Console(file=out, markup=False, highlight=False, soft_wrap=True, width=40),
        Console(file=err, markup=False, highlight=False, soft_wrap=True, width=40),
    )
    for event in events:
        printer.event(event)
    return out.getvalue().splitlines()


def test_token_events_show_their_text_verbatim_on_one_line() -> None:
    text = "[bold]not markup[/bold] " + "long " * 30
    lines = printed(StreamEvent(7, "token", {"type": "token", "text": text, "seq": 7}))
    assert lines == [f"    7 token    {text}"]


def test_other_events_show_compact_json_without_seq_type_ts() -> None:
    data = {"type": "tick", "n": 2, "payload": "", "seq": 3, "ts": "2025-01-01T00:00:00Z"}
    assert printed(StreamEvent(3, "tick", data)) == ['    3 tick     {"n":2,"payload":""}']


def test_gap_events_say_what_is_missing() -> None:
    (line,) = printed(StreamEvent(9, "gap", {"type": "gap", "from": 4, "to": 9}))
    assert line.startswith("    9 gap      events 4..9 no longer exist")
    (line,) = printed(StreamEvent(4, "gap", {"type": "gap", "from": 4, "to": 4}))
    assert line.startswith("    4 gap      event 4 no longer exists")


def test_only_a_final_status_is_terminal() -> None:
    assert not StreamEvent(1, "status", {"status": "running"}).is_terminal
    assert StreamEvent(5, "status", {"status": "stopped"}).is_terminal
    assert not StreamEvent(5, "token", {"status": "completed"}).is_terminal


def test_parse_event_reads_seq_from_the_id() -> None:
    sse = ServerSentEvent(event="token", data='{"type":"token","text":"a","seq":2}', id="2")
    assert parse_event(sse) == StreamEvent(2, "token", {"type": "token", "text": "a", "seq": 2})


@pytest.mark.parametrize(
    ("event_id", "data"), [("", '{"type":"x"}'), ("abc", '{"type":"x"}'), ("1", "[1]")]
)
def test_parse_event_rejects_what_is_not_runstreams(event_id: str, data: str) -> None:
    with pytest.raises(ClientError):
        parse_event(ServerSentEvent(event="x", data=data, id=event_id))
