"""Percentiles and small summaries."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by nearest rank of sorted ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float | None]:
    """p50, p99 and max of ``values`` times ``scale`` (e.g. 1000 for ms)."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[max(0, min(n - 1, round(q / 100 * (n - 1))))] * scale

    return {"p50": at(50), "p99": at(99), "max": ordered[-1] * scale, "n": n}


def median(values: Sequence[float]) -> float | None:
    """The median, or None."""
    return percentile(values, 50)
