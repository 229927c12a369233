"""``runstream worker``: one worker process, stopped gracefully by SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from runstream.cli.signals import Interrupts, handle_signals
from runstream.worker.process import run_worker

if TYPE_CHECKING:
    from runstream.config import Settings

log = structlog.get_logger(__name__)


async def serve_worker(settings: Settings, *, metrics_host: str = "127.0.0.1") -> None:
    """Run a worker until a stop signal, then let it wind down within its grace periods.

    The wind-down is bounded (``SHUTDOWN_GRACE_S``, then ``STOP_GRACE_S`` for agents
    that ignore the stop), so a repeated signal changes nothing but is acknowledged.
    """
    shutdown = asyncio.Event()
    interrupts = Interrupts(
        graceful=lambda _: shutdown.set(), force=lambda _: still_winding_down(settings)
    )
    with handle_signals(interrupts):
        await run_worker(settings, shutdown, metrics_host=metrics_host)


def still_winding_down(settings: Settings) -> None:
    """Say why a repeated signal does not end the worker at once, and for how long.

    Cancelling the worker would not be quicker: the queue shields running tasks from
    cancellation, so only the worker's own stop path (the executor ending each run as
    ``stopped``) ends them, and it is bounded by the two grace periods.
    """
    log.warning(
        "the worker is ending its runs; it exits within the grace periods",
        at_most_s=settings.shutdown_grace_s + settings.stop_grace_s,
    )
