"""The package's two structured-concurrency idioms, and nothing else.

- :func:`helper_task`: a helper task that lives exactly as long as a block. It starts
  when the block is entered and is cancelled and awaited when the block exits, however
  it exits; if the helper fails first, the block is cancelled and the helper's error
  is raised (a TaskGroup underneath).
- :func:`finish_shielded`: cleanup that must finish. It runs to its end even if the
  caller is cancelled (the caller's cancellation is re-raised afterwards), within a
  deadline: past it the cleanup is cancelled and TimeoutError raised, so no owner waits
  forever on a stuck close.

Both hold on Python 3.11, where a cancellation landing as redis-py's ``wait_for``
completes can be lost (``redis-py-facts.md``), and inside AnyIO cancel scopes (streaq
runs tasks in those), which re-deliver a cancellation until the task gives in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

STOP_EVERY_S = 0.1
"""How often a helper that ignored its cancellation is cancelled again."""


@contextlib.asynccontextmanager
async def helper_task(
    coro: Coroutine[Any, Any, Any], *, name: str | None = None
) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``coro`` as a task for exactly the life of the ``async with`` block.

    On exit the task is cancelled and awaited (cancelled again while it goes on). If the
    task fails while the block runs, the block is cancelled and the task's exception
    propagates as itself, not wrapped in an ExceptionGroup.
    """
    with collapse_excgroups():
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(coro, name=name)
            try:
                yield task
            finally:
                await cancel_and_wait(task)


async def finish_shielded(aw: Awaitable[T], *, within_s: float) -> T:
    """Run ``aw`` to its end even if the caller is cancelled, for at most ``within_s``.

    The caller's cancellation (asyncio's or an AnyIO scope's) waits for ``aw`` and is
    re-raised once it is done. Past the deadline ``aw`` is cancelled, awaited, and
    TimeoutError raised. Use it for closes and for short round trips on cancellable
    paths: a driver interrupted mid-call can leave its connection, or a clean-up task
    of its own, behind.
    """
    task = asyncio.ensure_future(aw)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    cancelled = False
    # The AnyIO shield stops a scope from re-cancelling this task on every loop turn;
    # asyncio.shield below covers plain asyncio cancellation.
    with anyio.CancelScope(shield=True):
        while not task.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                await cancel_and_wait(task)
                if cancelled:
                    raise asyncio.CancelledError
                raise TimeoutError(f"clean-up did not finish within {within_s:g}s")
            try:
                # asyncio.wait never cancels what it waits for: a cancellation of this
                # task lands here and leaves the clean-up running.
                await asyncio.wait([task], timeout=remaining)
            except asyncio.CancelledError:
                cancelled = True  # keep waiting: the clean-up finishes first
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio never reports it as lost
        raise asyncio.CancelledError
    return task.result()


async def cancel_and_wait(task: asyncio.Task[Any], *, every_s: float = STOP_EVERY_S) -> None:
    """Cancel ``task`` and wait until it is done, cancelling it again if it goes on.

    Shielded, so the wait completes even if the caller is cancelled too.
    """
    await asyncio.shield(_cancel_until_done(task, every_s))


async def _cancel_until_done(task: asyncio.Task[Any], every_s: float) -> None:
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=every_s)


def collapse_excgroups() -> CollapsedGroups:
    """Re-raise the one exception of a TaskGroup's group as itself (``with`` block).

    On Python 3.11 a TaskGroup wraps whatever its body raises in an ExceptionGroup, even
    when no child failed; an owner that runs helper tasks around a ``yield`` would then
    turn a plain BackendUnavailable into a group no caller expects to catch.
    """
    return CollapsedGroups()


class CollapsedGroups:
    """:func:`collapse_excgroups`' context manager (a class: a generator-based one keeps
    a frame for as long as its block runs, and an open stream runs one)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if not isinstance(exc, BaseExceptionGroup):
            return
        error: BaseException = exc
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if error is not exc:
            raise error from error.__cause__


class QuietDeadline:
    """``async with QuietDeadline(when) as deadline``: a block that ends quietly when its
    deadline (loop time ``when``; None: unset) expires.

    Whoever may end the block early reschedules it (``deadline.reschedule(now)``): the
    block is cancelled at its current await and exits without an error. A TimeoutError
    raised inside for another reason still propagates. A class rather than a
    generator-based context manager: an API process holds one per open stream.
    """

    __slots__ = ("_timeout",)

    def __init__(self, when: float | None = None) -> None:
        self._timeout = asyncio.timeout_at(when)

    async def __aenter__(self) -> asyncio.Timeout:
        return await self._timeout.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        deadline = self._timeout
        try:
            await deadline.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if deadline.expired():
                return True  # the deadline ended the block: its normal end
            raise
        return exc_type is not None and issubclass(exc_type, TimeoutError) and deadline.expired()


async def completes_within(aw: Awaitable[Any], seconds: float) -> bool:
    """Await ``aw`` for at most ``seconds``; False (and ``aw`` cancelled) when it took longer."""
    try:
        async with asyncio.timeout(seconds):
            await aw
    except TimeoutError:
        return False
    return True
