"""Small structured-concurrency helpers shared by the package."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def complete_before_cancel(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end even if the caller is cancelled, then honour the cancellation.

    For short database round trips on cancellable paths (a stream whose client left):
    a driver interrupted mid-query invalidates its connection, and the SQLAlchemy/aiosqlite
    clean-up of that connection can outlive the caller as a stuck task. Waiting for the
    round trip instead keeps every task inside its owner's lifetime.
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True  # keep waiting: the round trip finishes first
    if cancelled:
        raise asyncio.CancelledError
    return result
