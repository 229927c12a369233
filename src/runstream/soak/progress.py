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
        started: float,
    ) -> None:
        self._console = console
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

    def _elapsed_load(self) -> float:
        state = self._state
        if state.load_started is None:
            return 0.0
        now = asyncio.get_running_loop().time() - self._started
        end = state.load_ended if state.load_ended is not None else now
        return max(0.0, end - state.load_started)

    def render(self) -> RenderableType:
        """The live view."""
        state = self._state
        elapsed = min(self._elapsed_load(), self._duration)
        header = Text()
        header.append(f"soak: {state.phase:<8} ", style="bold")
        header.append(
            f"load {elapsed:5.1f} s of {self._duration:g} s, "
            f"{max(0.0, self._duration - elapsed):5.1f} s left"
        )
        bar = ProgressBar(total=self._duration, completed=elapsed, width=60)
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("scenario", "running", "ok", "lost", "errors", "503 retries", "reconnects"):
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
            )
        return Group(header, bar, table, connections_text(self._sampler.latest))

    def line(self) -> str:
        """One plain line for logs."""
        state, total = self._state, self._state.total()
        latest = self._sampler.latest
        conns = connections_text(latest).plain
        return (
            f"soak {state.phase}: load {self._elapsed_load():.0f}/{self._duration:g} s, "
            f"runs {total.done} done ({total.passed} ok, {total.lost} lost, "
            f"{total.errors} errors), {total.retries} retries; {conns}"
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
