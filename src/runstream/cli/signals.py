"""SIGINT and SIGTERM for a running command: the first asks politely, the next insists.

The process owns its signals (uvicorn's and streaq's own handlers are switched off, see
:mod:`runstream.cli.server` and :mod:`runstream.worker.queue`), so every command states
here what a first and a repeated Ctrl-C or SIGTERM mean for it.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """Counts stop signals; calls ``graceful`` on the first and ``force`` on each later one."""

    def __init__(
        self, graceful: Callable[[int], None], force: Callable[[int], None] | None = None
    ) -> None:
        self._graceful = graceful
        self._force = force
        self.count = 0

    def __call__(self, sig: int) -> None:
        """Handle one signal (also callable directly, e.g. from a test or another handler)."""
        self.count += 1
        if self.count == 1:
            self._graceful(sig)
        elif self._force is not None:
            self._force(sig)


@contextmanager
def handle_signals(
    handler: Callable[[int], None], signals: tuple[signal.Signals, ...] = STOP_SIGNALS
) -> Iterator[None]:
    """Route ``signals`` to ``handler(signum)`` on the running loop; restore them on exit."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    try:
        for sig in signals:
            loop.add_signal_handler(sig, handler, int(sig))
            installed.append(sig)
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
