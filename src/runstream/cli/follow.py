"""``runstream run``: start a run through the API and follow its stream to the end.

Following survives a dropped connection: the CLI reconnects with ``Last-Event-ID`` set to
the last ``seq`` it printed, and drops anything at or below it, so no event is missed or
printed twice. The first Ctrl-C asks the API to stop the run (once) and keeps following
until the terminal event; a second one leaves at once.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final

import httpx
from httpx_sse import SSEError, aconnect_sse

from runstream.cli.signals import Interrupts, handle_signals
from runstream.cli.tasks import single_error, until_set
from runstream.client.errors import EXIT_FAILED, EXIT_OK, EXIT_STOPPED, ClientError, Interrupted
from runstream.client.events import StreamEvent, parse_event
from runstream.client.http import (
    ApiError,
    ApiUnreachable,
    api_error,
    create_run,
    open_client,
    stop_run,
    transport_errors,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from runstream.cli.output import EventPrinter

MAX_RECONNECTS: Final = 5
"""Reconnection attempts in a row without a new event before giving up."""

_EXIT_CODES: Final = {"completed": EXIT_OK, "failed": EXIT_FAILED, "stopped": EXIT_STOPPED}


class StreamDropped(Exception):
    """The stream ended or failed before the terminal event; worth reconnecting."""


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
    stop_asked, leave = asyncio.Event(), asyncio.Event()
    interrupts = Interrupts(graceful=lambda _: stop_asked.set(), force=lambda _: leave.set())
    async with open_client(api_url, token) as client:
        with handle_signals(interrupts, (signal.SIGINT,)):
            run = await until_set(leave, create_run(client, agent, input, thread_id))
            run_id = str(run["id"])
            printer.note(f"run {run_id} ({run['agent']}) {run['status']}; Ctrl-C stops it")
            try:
                terminal = await until_set(
                    leave, _follow_with_stop(client, run_id, printer, stop_asked)
                )
            except Interrupted:
                raise Interrupted(f"left run {run_id} without waiting for its end") from None
    return _outcome(run_id, terminal, printer)


async def _follow_with_stop(
    client: httpx.AsyncClient, run_id: str, printer: EventPrinter, stop_asked: asyncio.Event
) -> StreamEvent:
    """Follow the run; meanwhile, send one stop request when ``stop_asked`` is set."""
    with single_error():
        async with asyncio.TaskGroup() as tg:
            stopper = tg.create_task(_stop_when_asked(client, run_id, printer, stop_asked))
            try:
                return await Follower(client, run_id, printer).run()
            finally:
                stopper.cancel()


async def _stop_when_asked(
    client: httpx.AsyncClient, run_id: str, printer: EventPrinter, stop_asked: asyncio.Event
) -> None:
    await stop_asked.wait()
    printer.note("stopping the run (Ctrl-C again to leave without waiting)", style="yellow")
    try:
        await stop_run(client, run_id)
    except ApiError as exc:
        if exc.status != 409:  # 409: it ended meanwhile, its terminal event is on its way
            printer.note(f"could not stop the run: {exc}", style="red")
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


class Follower:
    """Prints a run's events from ``after`` on, reconnecting until the terminal event."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        run_id: str,
        printer: EventPrinter,
        *,
        after: int = 0,
        max_reconnects: int = MAX_RECONNECTS,
    ) -> None:
        self._client = client
        self._run_id = run_id
        self._printer = printer
        self._max_reconnects = max_reconnects
        self.cursor = after
        """The last ``seq`` printed: where a reconnection resumes."""

    async def run(self) -> StreamEvent:
        """Follow to the terminal event and return it; ClientError when the stream is lost."""
        failures = 0
        while True:
            before = self.cursor
            try:
                return await self._follow_once()
            except StreamDropped as exc:
                reason = str(exc)
            # Progress since the last attempt means the connection worked: count afresh.
            failures = 1 if self.cursor > before else failures + 1
            if failures > self._max_reconnects:
                raise ClientError(
                    f"lost the stream of run {self._run_id} after {self._max_reconnects} "
                    f"reconnection attempts: {reason}"
                )
            delay = min(0.25 * 2 ** (failures - 1), 2.0)
            self._printer.note(
                f"stream interrupted after seq {self.cursor} ({reason}); "
                f"reconnecting in {delay:g} s ({failures}/{self._max_reconnects})",
                style="yellow",
            )
            await asyncio.sleep(delay)

    async def _follow_once(self) -> StreamEvent:
        """One connection: print new events; the terminal one ends it, else StreamDropped."""
        try:
            async with aclosing(self._events()) as events:
                async for event in events:
                    if event.seq <= self.cursor:
                        continue  # already printed before a reconnection
                    self._printer.event(event)
                    self.cursor = event.seq
                    if event.is_terminal:
                        return event
        except (ApiUnreachable, ApiError) as exc:
            if not _is_transient(exc):
                raise
            raise StreamDropped(str(exc)) from None
        except (httpx.TransportError, SSEError) as exc:
            raise StreamDropped(str(exc) or type(exc).__name__) from None
        raise StreamDropped("the server closed the stream before the run ended")

    async def _events(self) -> AsyncGenerator[StreamEvent, None]:
        headers = {"Last-Event-ID": str(self.cursor)} if self.cursor else {}
        url = f"/runs/{self._run_id}/stream"
        with transport_errors(self._client):
            async with aconnect_sse(self._client, "GET", url, headers=headers) as source:
                response = source.response
                if not response.is_success:
                    await response.aread()
                    raise api_error(response)
                async for sse in source.aiter_sse():
                    if not sse.data:
                        continue  # a heartbeat comment, which httpx-sse reports as an event
                    yield parse_event(sse)


def _is_transient(exc: ApiUnreachable | ApiError) -> bool:
    """Whether reconnecting may help: the API is down, restarting or overloaded."""
    if isinstance(exc, ApiError):
        return exc.status >= 500
    return True
