"""The soak's verdict and ``report.json``.

The verdict answers two questions and counts the rest:

- ``back_to_baseline``: after the load, did every process (``role:instance``) come back
  to exactly the number of Redis connections it held before it, within ``--settle``?
- ``events_lost``: did any client see a gap, a missing or repeated seq, or no terminal
  event?

``passed`` is back to baseline, nothing lost and no error.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from runstream.soak.scenarios import STALL_S

if TYPE_CHECKING:
    from runstream.soak.connections import Sample, Sampler
    from runstream.soak.runner import SoakSettings
    from runstream.soak.state import SoakState

REPORT_NAME: Final = "report.json"
REPORT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Verdict:
    """The soak's conclusion."""

    back_to_baseline: bool
    settled_after: float | None
    """Seconds after the load until the counts matched the baseline; None if they never did."""
    diff: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per ``role:instance`` that did not come back: baseline, last count, purposes."""
    events_lost: bool = False
    losses: int = 0
    errors: int = 0

    @property
    def passed(self) -> bool:
        """Back to baseline, no event lost, no error."""
        return self.back_to_baseline and not self.events_lost and self.errors == 0

    def to_json(self) -> dict[str, Any]:
        """The verdict as it appears at the end of ``report.json``."""
        return {
            "back_to_baseline": self.back_to_baseline,
            "settled_after_s": None if self.settled_after is None else round(self.settled_after, 3),
            "diff": self.diff,
            "events_lost": self.events_lost,
            "losses": self.losses,
            "errors": self.errors,
            "passed": self.passed,
        }

    def lines(self) -> list[str]:
        """The verdict in words, one line per finding, the outcome last."""
        if self.back_to_baseline:
            after = f"{self.settled_after:.1f} s" if self.settled_after is not None else "?"
            lines = [f"back_to_baseline: true (after {after})"]
        else:
            lines = ["back_to_baseline: false"]
            for key, entry in self.diff.items():
                lines.append(
                    f"  {key}: {entry['baseline']} before the load, {entry['now']} after "
                    f"the settle ({_purposes_text(entry['purposes'])})"
                )
        lines.append(f"events_lost: {str(self.events_lost).lower()} ({self.losses} losses)")
        lines.append(f"errors: {self.errors}")
        lines.append(f"passed: {str(self.passed).lower()}")
        return lines


def _purposes_text(purposes: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{p} {v['baseline']} -> {v['now']}" for p, v in purposes.items())


def baseline_diff(baseline: Sample, now: Sample) -> dict[str, dict[str, Any]]:
    """Every ``role:instance`` whose total differs between ``baseline`` and ``now``, with
    the purposes that differ (a process that appeared or vanished counts from 0)."""
    before, after = baseline.totals, now.totals
    diff: dict[str, dict[str, Any]] = {}
    for key in sorted(before.keys() | after.keys()):
        if before.get(key, 0) == after.get(key, 0):
            continue
        old = baseline.processes.get(key, {})
        new = now.processes.get(key, {})
        diff[key] = {
            "baseline": before.get(key, 0),
            "now": after.get(key, 0),
            "purposes": {
                purpose: {"baseline": old.get(purpose, 0), "now": new.get(purpose, 0)}
                for purpose in sorted(old.keys() | new.keys())
                if old.get(purpose, 0) != new.get(purpose, 0)
            },
        }
    return diff


def judge(state: SoakState, baseline: Sample, last: Sample) -> Verdict:
    """The verdict from what the soak saw and the last sample of the settle phase."""
    back = state.settled_after is not None
    return Verdict(
        back_to_baseline=back,
        settled_after=state.settled_after,
        diff={} if back else baseline_diff(baseline, last),
        events_lost=state.losses_total > 0,
        losses=state.losses_total,
        errors=state.errors_total,
    )


def max_connections(samples: list[Sample]) -> dict[str, dict[str, Any]]:
    """The peak per ``role:instance`` (total, and per purpose) over the whole soak."""
    peaks: dict[str, dict[str, Any]] = {}
    for sample in samples:
        for key, purposes in sample.processes.items():
            peak = peaks.setdefault(key, {"total": 0, "at_t": None, "purposes": {}})
            total = sum(purposes.values())
            if total > peak["total"]:
                peak["total"], peak["at_t"] = total, round(sample.t, 3)
            for purpose, count in purposes.items():
                peak["purposes"][purpose] = max(peak["purposes"].get(purpose, 0), count)
    return dict(sorted(peaks.items()))


def build_report(
    *,
    settings: SoakSettings,
    started_at: datetime,
    baseline: Sample,
    sampler: Sampler,
    state: SoakState,
    verdict: Verdict,
) -> dict[str, Any]:
    """Everything ``report.json`` holds; the verdict is its last key."""
    samples = sampler.samples
    other_max = max((sum(s.other.values()) for s in samples), default=0)
    return {
        "version": REPORT_VERSION,
        "started_at": started_at.astimezone(UTC).isoformat(),
        "settings": settings.to_json(),
        "seed": settings.seed,
        "timeline": {
            "load_started_s": _round(state.load_started),
            "load_deadline_s": _round(state.load_deadline),
            "load_ended_s": _round(state.load_ended),
            "ended_early": state.ended_early,
            "ended_s": _round(state.ended),
        },
        "baseline": {
            "t": round(baseline.t, 3),
            "totals": baseline.totals,
            "purposes": baseline.processes,
        },
        "other_connections": {
            "note": "connections not named runstream:* (not counted in the verdict)",
            "flagged": bool(baseline.other) or other_max > 0,
            "at_baseline": baseline.other,
            "max": other_max,
        },
        "scenarios": {scenario.value: tally.to_json() for scenario, tally in state.tallies.items()},
        "total": state.total().to_json(),
        "errors_total": state.errors_total,
        "errors": [p.to_json() for p in state.errors],
        "losses_total": state.losses_total,
        "losses": [p.to_json() for p in state.losses],
        "stall_threshold_s": STALL_S,
        "stalls_total": state.stalls_total,
        "stalls": [p.to_json() for p in state.stalls],
        "max_connections": max_connections(samples),
        "sampling": {
            "interval_s": settings.sample_interval,
            "samples": len(samples),
            "failures": sampler.failures,
            "last_failure": sampler.last_failure,
        },
        "samples": [s.to_json() for s in samples],
        "verdict": verdict.to_json(),
    }


def write_report(out: Path, report: dict[str, Any]) -> Path:
    """Write ``report.json`` into ``out`` (atomically: a reader never sees half of it)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    data = orjson.dumps(report, option=orjson.OPT_INDENT_2)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".report-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data + b"\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
