"""``runstream run`` and ``runstream runs follow``: print a run's events to the end.

Following is :meth:`runstream.client.Client.follow`: it survives a dropped connection by
reconnecting with ``Last-Event-ID``, so no event is missed or printed twice; each
reconnection it waits for is shown. The first Ctrl-C asks the API to stop the run (once)
and keeps following until the terminal event; a second one leaves at once.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final

from runstream.cli.signals import Interrupts, handle_signals
from runstream.cli.tasks import single_error, until_set
from runstream.client import Client, Conflict
from runstream.client.errors import EXIT_FAILED, EXIT_OK, EXIT_STOPPED, ClientError, Interrupted

if TYPE_CHECKING:
    from runstream.cli.output import EventPrinter
    from runstream.client import StreamEvent

MAX_RECONNECTS: Final = 5
"""Reconnection attempts in a row without a new event before giving up."""

_EXIT_CODES: Final = {"completed": EXIT_OK, "failed": EXIT_FAILED, "stopped": EXIT_STOPPED}


async def start_and_follow(
    *,
    api_url: str,
    token: str | None,
    agent: str,
    input: dict[str, Any],
    thread_id: str | None,
    printer: EventPrinter,
) -> int:
    """Start a run of ``agent``, print its events until it ends; the exit code.

    0 completed, 1 failed, 3 stopped; ClientError for anything that kept it from ending
    (the exit code is in the error), Interrupted on a second Ctrl-C.
    """
    async with Client(api_url, token=token, reconnects=MAX_RECONNECTS) as client:
        stop_asked, leave = asyncio.Event(), asyncio.Event()
        interrupts = Interrupts(graceful=lambda _: stop_asked.set(), force=lambda _: leave.set())
        with handle_signals(interrupts, (signal.SIGINT,)):
            run = await until_set(leave, client.create(agent, input, thread_id=thread_id))
            printer.note(f"run {run.id} ({run.agent}) {run.status}; Ctrl-C stops it")
            return await _follow_until_end(client, run.id, printer, stop_asked, leave)


async def follow_existing(
    *, api_url: str, token: str | None, run_id: str, after: int, printer: EventPrinter
) -> int:
    """Print an existing run's events after ``after`` until it ends; the exit code."""
    async with Client(api_url, token=token, reconnects=MAX_RECONNECTS) as client:
        run = await client.get(run_id)  # NotFound: a clear error before any stream
        stop_asked, leave = asyncio.Event(), asyncio.Event()
        interrupts = Interrupts(graceful=lambda _: stop_asked.set(), force=lambda _: leave.set())
        with handle_signals(interrupts, (signal.SIGINT,)):
            if run.is_final and after >= run.last_seq:
                printer.note(f"run {run_id} {run.status}")
                return _EXIT_CODES.get(run.status, EXIT_FAILED)
            return await _follow_until_end(client, run_id, printer, stop_asked, leave, after)


async def _follow_until_end(
    client: Client,
    run_id: str,
    printer: EventPrinter,
    stop_asked: asyncio.Event,
    leave: asyncio.Event,
    after: int = 0,
) -> int:
    try:
        terminal = await until_set(
            leave, _follow_with_stop(client, run_id, printer, stop_asked, after)
        )
    except Interrupted:
        raise Interrupted(f"left run {run_id} without waiting for its end") from None
    return _outcome(run_id, terminal, printer)


async def _follow_with_stop(
    client: Client, run_id: str, printer: EventPrinter, stop_asked: asyncio.Event, after: int
) -> StreamEvent:
    """Follow the run; meanwhile, send one stop request when ``stop_asked`` is set."""
    with single_error():
        async with asyncio.TaskGroup() as tg:
            stopper = tg.create_task(_stop_when_asked(client, run_id, printer, stop_asked))
            try:
                return await _print_events(client, run_id, printer, after)
            finally:
                stopper.cancel()


async def _print_events(
    client: Client, run_id: str, printer: EventPrinter, after: int
) -> StreamEvent:
    def retrying(reason: str, attempt: int, delay_s: float) -> None:
        printer.note(
            f"stream interrupted ({reason}); reconnecting in {delay_s:.2g} s "
            f"({attempt}/{MAX_RECONNECTS})",
            style="yellow",
        )

    async with aclosing(client.follow(run_id, after, on_retry=retrying)) as events:
        async for event in events:
            printer.event(event)
            if event.is_terminal:
                return event
    raise ClientError(f"the stream of run {run_id} ended before the run did")


async def _stop_when_asked(
    client: Client, run_id: str, printer: EventPrinter, stop_asked: asyncio.Event
) -> None:
    await stop_asked.wait()
    printer.note("stopping the run (Ctrl-C again to leave without waiting)", style="yellow")
    try:
        await client.stop(run_id)
    except Conflict:
        pass  # it ended meanwhile: its terminal event is on its way
    except ClientError as exc:
        # The follower reconnects and reports if the API is really gone.
        printer.note(f"could not stop the run: {exc}", style="red")


def _outcome(run_id: str, terminal: StreamEvent, printer: EventPrinter) -> int:
    status = str(terminal.data.get("status"))
    if status == "failed":
        error = terminal.data.get("error") or "no error message"
        raise ClientError(f"run {run_id} failed: {error}", EXIT_FAILED)
    printer.note(f"run {run_id} {status}")
    return _EXIT_CODES.get(status, EXIT_FAILED)
