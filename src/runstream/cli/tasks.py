"""Small structured-concurrency helpers: every task they start is awaited before they return."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from runstream.client.errors import Interrupted

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

T = TypeVar("T")


async def until_set(event: asyncio.Event, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end, unless ``event`` is set first: then cancel it, wait for its
    cleanup, and raise :class:`Interrupted`. Errors of ``work`` propagate unwrapped."""
    with single_error():
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(work)
            watcher = tg.create_task(event.wait())
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            # Cancelling a finished task is a no-op: whichever lost is cancelled, and the
            # group awaits it before going on.
            task.cancel()
            watcher.cancel()
    if task.cancelled():
        raise Interrupted()
    return task.result()


@contextmanager
def single_error() -> Iterator[None]:
    """Re-raise a TaskGroup's lone error as itself, so callers can ``except`` it.

    A TaskGroup wraps every error in an ExceptionGroup, even a single one; a command
    wants to handle a ClientError as a ClientError. Groups of several errors pass unchanged.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
