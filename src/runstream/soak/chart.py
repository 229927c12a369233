"""``connections.png``: Redis connections over time per ``role:instance``.

One line per process, its baseline as a dashed line of the same colour, the load
window shaded. Drawn with matplotlib's Agg canvas directly (no pyplot): no display is
needed and no process-wide figure state is touched.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Final

from runstream.client.errors import EXIT_USAGE, ClientError

if TYPE_CHECKING:
    from pathlib import Path

    from runstream.soak.connections import Sample
    from runstream.soak.state import SoakState

CHART_NAME: Final = "connections.png"
EXTRA_HINT: Final = "pip install 'runstream[soak]'"


def check_plotting() -> None:
    """Fail at once (exit 2, one line) when the plotting library is not installed: it is
    an optional extra, so that servers do not carry it."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ClientError(
            f"runstream soak draws its chart with matplotlib, which is not installed: {EXTRA_HINT}",
            EXIT_USAGE,
        )


def write_chart(
    path: Path, samples: list[Sample], baseline: Sample, state: SoakState, title: str
) -> Path:
    """Draw the chart into ``path`` (a PNG) and return it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself to the figure: savefig renders with Agg
    axes = figure.add_subplot()
    last_t = samples[-1].t if samples else 0.0
    if state.load_started is not None:
        ended = state.load_ended if state.load_ended is not None else last_t
        deadline = min(state.load_deadline or ended, ended)
        axes.axvspan(state.load_started, deadline, color="tab:orange", alpha=0.15, label="load")
        if ended > deadline:
            axes.axvspan(
                deadline, ended, color="tab:orange", alpha=0.06, label="runs in flight finishing"
            )
        if state.settled_after is not None:
            axes.axvline(
                ended + state.settled_after,
                color="tab:green",
                linewidth=1,
                label="back to baseline",
            )
    keys = sorted({key for sample in samples for key in sample.processes} | set(baseline.totals))
    times = [s.t for s in samples]
    for index, key in enumerate(keys):
        colour = f"C{index % 10}"
        counts = [s.totals.get(key, 0) for s in samples]
        axes.step(times, counts, where="post", color=colour, label=key)
        axes.axhline(
            baseline.totals.get(key, 0),
            color=colour,
            linestyle="--",
            linewidth=1,
            alpha=0.8,
            label=f"{key} baseline",
        )
    if any(s.other for s in samples):
        others = [sum(s.other.values()) for s in samples]
        axes.step(times, others, where="post", color="grey", linestyle=":", label="not runstream")
    axes.set_xlabel("seconds since the soak started")
    axes.set_ylabel("Redis connections (CLIENT LIST)")
    axes.set_title(title)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    # Outside the plot: the lines are what the reader came for.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.savefig(path, format="png")
    return path
