"""Small structured-concurrency helpers shared by the package."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
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


@contextlib.contextmanager
def collapse_excgroups() -> Iterator[None]:
    """Re-raise the one exception of a TaskGroup's group as itself.

    On Python 3.11 a TaskGroup wraps whatever its body raises in an ExceptionGroup, even
    when no child failed; an owner that runs helper tasks around a ``yield`` would then
    turn a plain BackendUnavailable into a group no caller expects to catch.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if error is group:
            raise
        raise error from error.__cause__


async def cancel_and_wait(task: asyncio.Task[Any], *, every_s: float = 0.1) -> None:
    """Cancel ``task`` and wait until it is done, cancelling it again if it goes on.

    On Python 3.11 a cancellation that lands as redis-py's ``asyncio.wait_for`` completes
    is lost, and a loop that was told to stop keeps running; its owner would then wait
    for it forever. Shielded, so the wait completes even if the owner is cancelled too.
    """
    await asyncio.shield(_cancel_until_done(task, every_s))


async def _cancel_until_done(task: asyncio.Task[Any], every_s: float) -> None:
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=every_s)
