"""A run's budget, the same for every agent: events, bytes and time.

A run that exceeds one ends ``failed`` with an error naming the setting, and its readers
get the terminal event as for any other ending. The events and bytes counted are the
agent's own (the system's status events are not charged).
"""

from __future__ import annotations

from runstream.config import Settings
from runstream.errors import AgentError
from runstream.models import Event


class RunBudget:
    """Counts one run's events and bytes against ``RUNSTREAM_MAX_RUN_EVENTS`` and
    ``RUNSTREAM_MAX_RUN_BYTES``; words the ``RUNSTREAM_MAX_RUN_S`` failure."""

    __slots__ = ("_bytes", "_events", "_settings")

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._events = 0
        self._bytes = 0

    def charge(self, event: Event) -> None:
        """Count ``event``; raise AgentError when it takes the run over a limit."""
        self._events += 1
        self._bytes += len(event.data)
        if self._events > self._settings.max_run_events:
            raise AgentError(
                f"run exceeded RUNSTREAM_MAX_RUN_EVENTS ({self._settings.max_run_events} events)"
            )
        if self._bytes > self._settings.max_run_bytes:
            raise AgentError(
                f"run exceeded RUNSTREAM_MAX_RUN_BYTES ({self._settings.max_run_bytes} bytes)"
            )

    def time_exceeded(self) -> str:
        """The error of a run that went on past ``RUNSTREAM_MAX_RUN_S``."""
        return f"run exceeded RUNSTREAM_MAX_RUN_S ({self._settings.max_run_s:g} s)"
