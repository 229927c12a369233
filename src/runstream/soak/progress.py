"""Progress of a soak: a live Rich display on a terminal, a short line every few seconds
otherwise (CI logs, pipes).

The display is redrawn from a task of the soak's TaskGroup rather than by Rich's own
refresh thread, so it reads the soak's state on the event loop that writes it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runstream.soak.mix import Scenario

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from runstream.soak.connections import Sample, Sampler
    from runstream.soak.state import SoakState

REFRESH_S: Final = 0.25
LINE_EVERY_S: Final = 5.0


class Display:
    """Shows the soak's phase, time, outcomes per scenario and current connections."""

    def __init__(
        self,
        console: Console,
        state: SoakState,
        sampler: Sampler,
        *,
        duration: float,
        settle: float,
        started: float,
    ) -> None:
        self._console = console
        self._settle = settle
        self._started = started
        self._state = state
        self._sampler = sampler
        self._duration = duration

    async def run(self) -> None:
        """Keep the display current until cancelled."""
        if self._console.is_terminal:
            with Live(self.render(), console=self._console, auto_refresh=False) as live:
                try:
                    while True:
                        await asyncio.sleep(REFRESH_S)
                        live.update(self.render(), refresh=True)
                finally:
                    live.update(self.render(), refresh=True)  # the final state stays on screen
        else:
            while True:
                await asyncio.sleep(LINE_EVERY_S)
                self._console.print(self.line())

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self._started

    def _elapsed_load(self) -> float:
        state = self._state
        if state.load_started is None:
            return 0.0
        end = state.load_ended if state.load_ended is not None else self._now()
        return max(0.0, end - state.load_started)

    def status(self) -> str:
        """Where the soak is: the phase and its time."""
        state, now = self._state, self._now()
        if state.phase == "baseline":
            return f"baseline: sampling the connections at rest ({now:.1f} s)"
        if state.phase == "load":
            elapsed = self._elapsed_load()
            if elapsed <= self._duration:
                left = self._duration - elapsed
                return f"load: {elapsed:.1f} s of {self._duration:g} s, {left:.1f} s left"
            total = state.total()
            running = total.started - total.done
            return (
                f"load: {self._duration:g} s over, {running} run(s) still in flight "
                f"({elapsed - self._duration:.1f} s)"
            )
        if state.phase == "settle" and state.load_ended is not None:
            waited = now - state.load_ended
            return f"settle: {waited:.1f} s of {self._settle:g} s, waiting for the baseline"
        return f"{state.phase} ({now:.1f} s)"

    def render(self) -> RenderableType:
        """The live view."""
        state = self._state
        elapsed = min(self._elapsed_load(), self._duration)
        bar = ProgressBar(total=self._duration, completed=elapsed, width=60)
        table = Table(box=None, pad_edge=False, header_style="bold")
        columns = ("scenario", "running", "ok", "lost", "errors", "503s", "reconnects")
        for column in (*columns, "stalls"):
            table.add_column(column, justify="left" if column == "scenario" else "right")
        for scenario in Scenario:
            tally = state.tallies[scenario]
            table.add_row(
                scenario.value,
                str(tally.started - tally.done),
                str(tally.passed),
                _count(tally.lost, "red"),
                _count(tally.errors, "red"),
                str(tally.retries),
                str(tally.reconnects),
                _count(tally.stalls, "yellow"),
            )
        header = Text(f"soak {self.status()}", style="bold")
        return Group(header, bar, table, connections_text(self._sampler.latest))

    def line(self) -> str:
        """One plain line for logs."""
        total = self._state.total()
        conns = connections_text(self._sampler.latest).plain
        return (
            f"soak {self.status()}; runs {total.done} done ({total.passed} ok, "
            f"{total.lost} lost, {total.errors} errors, {total.stalls} stalled), "
            f"{total.retries} retries; {conns}"
        )


def connections_text(sample: Sample | None) -> Text:
    """``connections: api:a1 3 (cmd 1, pubsub 1, queue 1), ...`` for the latest sample."""
    text = Text("connections: ", style="bold")
    if sample is None:
        text.append("not sampled yet")
        return text
    parts = [
        f"{key} {sum(p.values())} ({', '.join(f'{k} {v}' for k, v in p.items())})"
        for key, p in sample.processes.items()
    ]
    if sample.other:
        parts.append(f"other {sum(sample.other.values())}")
    text.append("; ".join(parts) if parts else "none named runstream:*")
    return text


def _count(value: int, style: str) -> Text:
    return Text(str(value), style=style if value else "")
