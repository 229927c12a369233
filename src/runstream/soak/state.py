"""What the soak has seen so far: phases, per-scenario tallies, errors and losses.

One :class:`SoakState` is shared by the virtual clients (which write it), the progress
display (which reads it while the soak runs) and the report (which reads it at the end).
Everything runs on one event loop, so plain attributes need no lock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

from runstream.soak.mix import Scenario

MAX_LISTED: Final = 100
"""Errors (and losses) listed one by one in the report; the rest are only counted."""


@dataclass
class Tally:
    """How the iterations of one scenario went."""

    started: int = 0
    passed: int = 0
    lost: int = 0
    """Iterations whose events were not all delivered exactly once (gap, missing, duplicate,
    no terminal event)."""
    errors: int = 0
    """Iterations that ended otherwise than the scenario expects."""
    retries: int = 0
    """HTTP 503 answers retried after a short backoff (not losses)."""
    reconnects: int = 0
    """Streams that ended or broke before the terminal event and were resumed."""
    resumes: int = 0
    """Deliberate disconnects (scenario ``disconnect``) resumed with ``Last-Event-ID``."""
    pubsub_kills: int = 0
    """``CLIENT KILL TYPE pubsub`` issued (scenario ``pubsub_kill``)."""
    events: int = 0
    """Events received (what a client reads, duplicates included)."""
    stalls: int = 0
    """Iterations that waited :data:`~runstream.soak.scenarios.STALL_S` or more for an
    event of a stream (not a loss: the event came, late)."""
    longest_wait_s: float = 0.0
    """Longest silence between two events of an open stream."""

    @property
    def done(self) -> int:
        """Iterations finished, whatever their outcome."""
        return self.passed + self.lost + self.errors

    def to_json(self) -> dict[str, int]:
        """The tally as it appears in ``report.json``."""
        return {**asdict(self), "done": self.done}


@dataclass(frozen=True, slots=True)
class Problem:
    """One error or loss, with what it happened to and when."""

    t: float
    scenario: str
    run_id: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        """The problem as it appears in ``report.json``."""
        return {
            "t": round(self.t, 3),
            "scenario": self.scenario,
            "run_id": self.run_id,
            "message": self.message,
        }


@dataclass
class SoakState:
    """The soak's progress: its phase and times (seconds since it started), and outcomes."""

    phase: str = "baseline"
    load_started: float | None = None
    load_deadline: float | None = None
    """When the virtual clients stopped starting runs; those in flight then finish."""
    load_ended: float | None = None
    ended_early: bool = False
    """The load was ended before its duration (Ctrl-C)."""
    settled_after: float | None = None
    """Seconds from the end of the load until the counts matched the baseline (None: never)."""
    ended: float | None = None
    tallies: dict[Scenario, Tally] = field(
        default_factory=lambda: {scenario: Tally() for scenario in Scenario}
    )
    errors: list[Problem] = field(default_factory=list)
    errors_total: int = 0
    losses: list[Problem] = field(default_factory=list)
    losses_total: int = 0
    stalls: list[Problem] = field(default_factory=list)
    stalls_total: int = 0

    def record_error(self, problem: Problem) -> None:
        """Count an error; keep the first :data:`MAX_LISTED` of them."""
        self.errors_total += 1
        if len(self.errors) < MAX_LISTED:
            self.errors.append(problem)

    def record_loss(self, problem: Problem) -> None:
        """Count a loss; keep the first :data:`MAX_LISTED` of them."""
        self.losses_total += 1
        if len(self.losses) < MAX_LISTED:
            self.losses.append(problem)

    def record_stall(self, problem: Problem) -> None:
        """Count a stall; keep the first :data:`MAX_LISTED` of them."""
        self.stalls_total += 1
        if len(self.stalls) < MAX_LISTED:
            self.stalls.append(problem)

    def total(self) -> Tally:
        """Every scenario's tally added up."""
        out = Tally()
        for tally in self.tallies.values():
            for name, value in asdict(tally).items():
                if name == "longest_wait_s":
                    out.longest_wait_s = max(out.longest_wait_s, value)
                else:
                    setattr(out, name, getattr(out, name) + value)
        return out
