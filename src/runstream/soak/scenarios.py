"""The five things a virtual client does to a run, and how it checks what it got.

Each scenario starts one run through the API, follows its stream as a browser would
(resuming with ``Last-Event-ID`` whenever a connection ends before the terminal event),
applies its fault, and checks the outcome with a :class:`~runstream.soak.checks.RunCheck`:

- ``normal``: a scripted (or echo) run followed to the end: ``completed``.
- ``disconnect``: the client drops the stream after a few events, once or more, and
  resumes; the concatenation must still be seq 1..N once each: ``completed``.
- ``stop``: a run that hangs after its ticks is stopped while followed: ``stopped``.
- ``fail``: a run whose agent raises: ``failed`` with an error naming "RuntimeError".
- ``pubsub_kill``: ``CLIENT KILL TYPE pubsub`` while the stream is live; the server
  resyncs from its log, so every event still arrives once, in order: ``completed``.

An HTTP 503 is retried after a short backoff and counted as a retry, not as a loss.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx
from httpx_sse import SSEError, aconnect_sse
from redis.exceptions import RedisError

from runstream.client.errors import ClientError
from runstream.client.events import parse_event
from runstream.client.http import ApiError, api_error, create_run, stop_run, transport_errors
from runstream.errors import describe
from runstream.soak.checks import RunCheck
from runstream.soak.mix import Scenario
from runstream.soak.state import Problem, SoakState, Tally

if TYPE_CHECKING:
    import random
    from collections.abc import AsyncIterator, Awaitable, Callable

    from httpx_sse import ServerSentEvent

    from runstream.soak.connections import Admin

    Hook = Callable[[RunCheck], Awaitable[bool]]
    """Called after each event; True drops the connection there (the run goes on)."""

DEFAULT_RUN_TIMEOUT_S: Final = 60.0
"""Longest one iteration may take by default; beyond it the run counts as never ended."""

MAX_ATTEMPTS: Final = 8
"""Tries in a row without progress (503s, dropped streams) before giving up on a run."""

DRAIN_TIMEOUT_S: Final = 5.0
"""How long the server may keep a stream open after its terminal event."""

SCRIPTED_FAILURE: Final = "RuntimeError"
"""What the error of a ``fail`` run names: the agent's exception type (its message reaches
clients only with RUNSTREAM_EXPOSE_AGENT_ERRORS)."""

STALL_S: Final = 5.0
"""A wait this long for the next event of a run that is producing them is a stall: not a
loss (the event comes), but live delivery failed and the reader fell back on polling."""


class Unexpected(Exception):
    """The run or the API did something the scenario does not expect: an error."""


class StreamLost(Exception):
    """The server kept closing the stream without ever sending the terminal event: a loss."""


@dataclass(frozen=True, slots=True)
class Context:
    """What every iteration shares: the API client, the admin connection, the state."""

    client: httpx.AsyncClient
    admin: Admin
    state: SoakState
    started: float
    """``loop.time()`` when the soak started: problems are timed from there."""
    run_timeout: float = DEFAULT_RUN_TIMEOUT_S
    """Longest one iteration may take before its run counts as never ended."""

    def now(self) -> float:
        """Seconds since the soak started."""
        return asyncio.get_running_loop().time() - self.started


def backoff(attempt: int) -> float:
    """Seconds to wait before try ``attempt + 1``: 50 ms doubling up to 1 s."""
    return float(min(0.05 * 2 ** (attempt - 1), 1.0))


class Iteration:
    """One run driven through one scenario by one virtual client."""

    def __init__(self, ctx: Context, scenario: Scenario) -> None:
        self.ctx = ctx
        self.scenario = scenario
        self.tally: Tally = ctx.state.tallies[scenario]
        self.check: RunCheck | None = None
        self.stalled = False
        """Whether this run's stream already went silent for :data:`STALL_S` (counted once)."""

    @property
    def run_id(self) -> str | None:
        """The run's id once it was created."""
        return None if self.check is None else self.check.run_id

    async def start(self, agent: str, input: dict[str, Any]) -> RunCheck:
        """``POST /runs`` (503 retried); the check that will follow its events."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                run = await create_run(self.ctx.client, agent, input, None)
            except ApiError as exc:
                if exc.status != 503 or attempt == MAX_ATTEMPTS:
                    raise Unexpected(f"POST /runs: {exc}") from None
                self.tally.retries += 1
                await asyncio.sleep(backoff(attempt))
                continue
            self.check = RunCheck(str(run["id"]))
            return self.check
        raise AssertionError("unreachable")  # pragma: no cover

    async def stop(self) -> None:
        """``POST /runs/{id}/stop``: 202 expected (503 retried)."""
        run_id = self._check().run_id
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                await stop_run(self.ctx.client, run_id)
            except ApiError as exc:
                if exc.status != 503 or attempt == MAX_ATTEMPTS:
                    raise Unexpected(f"POST /runs/{run_id}/stop: {exc}") from None
                self.tally.retries += 1
                await asyncio.sleep(backoff(attempt))
                continue
            return

    async def follow(self, on_event: Hook | None = None) -> bool:
        """Read the stream until the terminal event (True) or until ``on_event`` drops it
        (False), resuming with ``Last-Event-ID`` whenever a connection ends early."""
        check = self._check()
        attempts = 0
        while True:
            before = check.cursor
            clean_close = False
            try:
                ended = await self._connection(check, on_event)
            except ApiError as exc:
                if exc.status != 503:
                    raise Unexpected(f"GET /runs/{check.run_id}/stream: {exc}") from None
                self.tally.retries += 1
                reason = str(exc)
            except (httpx.TransportError, SSEError) as exc:
                self.tally.reconnects += 1
                reason = describe(exc)
            else:
                if ended is not None:
                    return ended
                self.tally.reconnects += 1
                clean_close = True
                reason = "the server closed the stream before the terminal event"
            # Progress since the last try means the connection worked: count afresh.
            attempts = 1 if check.cursor > before else attempts + 1
            if attempts > MAX_ATTEMPTS:
                message = f"{reason} ({MAX_ATTEMPTS} tries in a row after seq {check.cursor})"
                raise StreamLost(message) if clean_close else Unexpected(message)
            await asyncio.sleep(backoff(attempts))

    async def _connection(self, check: RunCheck, on_event: Hook | None) -> bool | None:
        """One connection: True at the terminal event, False when dropped, None when the
        server closed it first."""
        headers = {"Last-Event-ID": str(check.cursor)} if check.cursor else {}
        url = f"/runs/{check.run_id}/stream"
        async with aconnect_sse(self.ctx.client, "GET", url, headers=headers) as source:
            if not source.response.is_success:
                await source.response.aread()
                raise api_error(source.response)
            async with aclosing(source.aiter_sse()) as messages:
                last = self._clock()
                async for sse in messages:
                    if not sse.data:
                        # A keep-alive: httpx-sse reports the blank line after a comment
                        # as a message with the last id and no data; SSE dispatches none.
                        continue
                    now = self._clock()
                    self._waited(now - last, check)
                    last = now
                    check.accept(parse_event(sse))
                    self.tally.events += 1
                    if check.terminal is not None:
                        await self._drain(check, messages)
                        return True
                    if on_event is not None and await on_event(check):
                        return False  # leaving the block closes the connection
        return None

    async def _drain(self, check: RunCheck, messages: AsyncIterator[ServerSentEvent]) -> None:
        """After the terminal event the server closes the stream; anything more is a loss."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                async for sse in messages:
                    if sse.data:
                        check.accept(parse_event(sse))
                        self.tally.events += 1
        except TimeoutError:
            raise Unexpected(
                f"the stream stayed open {DRAIN_TIMEOUT_S:g} s after the terminal event"
            ) from None
        except (httpx.TransportError, SSEError):
            pass  # the terminal event is in: how the connection ended does not matter

    def _clock(self) -> float:
        return asyncio.get_running_loop().time()

    def _waited(self, seconds: float, check: RunCheck) -> None:
        """Account for the silence before the next event of an open stream (before the
        first one, it includes the time the run waited in the queue)."""
        self.tally.longest_wait_s = max(self.tally.longest_wait_s, round(seconds, 3))
        if seconds >= STALL_S and not self.stalled:
            self.stalled = True
            self.tally.stalls += 1
            self.ctx.state.record_stall(
                Problem(
                    self.ctx.now(),
                    self.scenario.value,
                    check.run_id,
                    f"waited {seconds:.1f} s for the event after seq {check.cursor}",
                )
            )

    def expect(self, status: str, ticks: int, error: str | None = None) -> None:
        """Check the final status, the error text and that ticks 1..``ticks`` all came."""
        check = self._check()
        if check.status != status:
            detail = f": {check.error_message}" if check.error_message else ""
            raise Unexpected(f"ended {check.status}{detail}; expected {status}")
        if error is not None and error not in check.error_message:
            raise Unexpected(f"error {check.error_message!r} does not mention {error!r}")
        # With a loss already recorded the ticks are off for that reason; say it once.
        if not check.losses and check.ticks != list(range(1, ticks + 1)):
            raise Unexpected(
                f"ticks {_span(check.ticks)} behind contiguous seqs; expected 1..{ticks}"
            )

    def _check(self) -> RunCheck:
        if self.check is None:
            raise AssertionError("the run was not started")
        return self.check


def _span(ticks: list[int]) -> str:
    if len(ticks) <= 6:
        return str(ticks)
    return f"[{ticks[0]}, {ticks[1]}, ..., {ticks[-1]}] ({len(ticks)})"


# -- the scenarios ---------------------------------------------------------------------


async def normal(it: Iteration, rng: random.Random) -> None:
    """A run followed from start to end: completed, every event once."""
    count, interval = rng.randint(5, 50), rng.randint(0, 20)
    if rng.random() < 0.25:
        words = " ".join(f"w{i}" for i in range(1, count + 1))
        await it.start("echo", {"text": words, "interval_ms": interval})
    else:
        await it.start("scripted", {"count": count, "interval_ms": interval})
    await it.follow()
    it.expect("completed", count)


async def disconnect(it: Iteration, rng: random.Random) -> None:
    """Drop the stream after a few events (once or more) and resume with Last-Event-ID."""
    count, interval = rng.randint(10, 50), rng.randint(5, 20)
    check = await it.start("scripted", {"count": count, "interval_ms": interval})
    ended = False
    for _ in range(rng.randint(1, 3)):
        target = check.events + rng.randint(1, 8)

        async def enough(check: RunCheck, target: int = target) -> bool:
            return check.events >= target

        ended = await it.follow(on_event=enough)
        if ended:
            break  # the run ended before this drop
        it.tally.resumes += 1
        await asyncio.sleep(rng.uniform(0, 0.2))  # a browser comes back a little later
    if not ended:
        await it.follow()
    it.expect("completed", count)


async def stop(it: Iteration, rng: random.Random) -> None:
    """A run that hangs after its ticks, stopped while followed: stopped."""
    count, interval = rng.randint(1, 5), rng.randint(0, 20)
    await it.start("scripted", {"count": count, "interval_ms": interval, "hang": True})
    stopped = False

    async def stop_after_ticks(check: RunCheck) -> bool:
        nonlocal stopped
        if not stopped and len(check.ticks) >= count:
            stopped = True
            await it.stop()
        return False  # keep following: the terminal event is on its way

    await it.follow(on_event=stop_after_ticks)
    if not stopped:
        raise Unexpected("the run ended before it was stopped")
    it.expect("stopped", count)


async def fail(it: Iteration, rng: random.Random) -> None:
    """A run whose agent raises after some ticks: failed, with the agent's message."""
    count, interval = rng.randint(3, 20), rng.randint(0, 10)
    fail_after = rng.randint(0, count - 1)
    await it.start("scripted", {"count": count, "interval_ms": interval, "fail_after": fail_after})
    await it.follow()
    it.expect("failed", fail_after, error=SCRIPTED_FAILURE)


async def pubsub_kill(it: Iteration, rng: random.Random) -> None:
    """Kill every pub/sub connection while the stream is live: still every event once."""
    count, interval = rng.randint(20, 50), rng.randint(10, 30)
    kill_after = rng.randint(1, 5)
    await it.start("scripted", {"count": count, "interval_ms": interval})
    killed = False

    async def kill(check: RunCheck) -> bool:
        nonlocal killed
        if not killed and check.events >= kill_after:
            killed = True
            try:
                await it.ctx.admin.kill_pubsub()
            except (RedisError, OSError, TimeoutError) as exc:
                raise Unexpected(f"CLIENT KILL TYPE pubsub: {describe(exc)}") from None
            it.tally.pubsub_kills += 1
        return False

    await it.follow(on_event=kill)
    if not killed:
        raise Unexpected("the run ended before pub/sub could be killed")
    it.expect("completed", count)


PLAYS: Final[dict[Scenario, Callable[[Iteration, random.Random], Awaitable[None]]]] = {
    Scenario.NORMAL: normal,
    Scenario.DISCONNECT: disconnect,
    Scenario.STOP: stop,
    Scenario.FAIL: fail,
    Scenario.PUBSUB_KILL: pubsub_kill,
}


async def play(ctx: Context, scenario: Scenario, rng: random.Random) -> None:
    """Play one iteration of ``scenario`` and record its outcome in the state.

    Never raises for what the system under test does (that is the soak's finding, not its
    failure); only cancellation goes through.
    """
    it = Iteration(ctx, scenario)
    it.tally.started += 1
    error: str | None = None
    try:
        async with asyncio.timeout(ctx.run_timeout):
            await PLAYS[scenario](it, rng)
    except TimeoutError:
        if it.check is not None and it.check.terminal is None:
            seen = await _run_state(ctx, it.check)
            it.check.losses.append(f"no terminal event within {ctx.run_timeout:g} s ({seen})")
        else:
            error = f"not done within {ctx.run_timeout:g} s"
    except StreamLost as exc:
        assert it.check is not None
        it.check.losses.append(f"no terminal event: {exc}")
    except (Unexpected, ClientError) as exc:
        error = str(exc)
    except Exception as exc:
        # Not a known outcome (a bug here or a malformed answer): still a finding about
        # this one run, not a reason to abandon the others.
        error = f"unexpected {describe(exc)}"
    finally:
        if it.check is not None and it.check.terminal is None:
            await _abandon(ctx, it.check.run_id)
    _record(it, error)


def _record(it: Iteration, error: str | None) -> None:
    state, now = it.ctx.state, it.ctx.now()
    losses = [] if it.check is None else it.check.losses
    for loss in losses:
        state.record_loss(Problem(now, it.scenario.value, it.run_id, loss))
    if error is not None:
        state.record_error(Problem(now, it.scenario.value, it.run_id, error))
        it.tally.errors += 1
    elif losses:
        it.tally.lost += 1
    else:
        it.tally.passed += 1


async def _run_state(ctx: Context, check: RunCheck) -> str:
    """What the client had and what the API says of the run: where it got stuck."""
    had = f"received up to seq {check.cursor}"
    try:
        async with asyncio.timeout(2.0):
            with transport_errors(ctx.client):
                response = await ctx.client.get(f"/runs/{check.run_id}")
        run = response.json()
        return f"{had}; the run is {run['status']} with last_seq {run['last_seq']}"
    except (ClientError, TimeoutError, ValueError, KeyError, TypeError):
        return had


async def _abandon(ctx: Context, run_id: str) -> None:
    """Ask the API to stop a run this client leaves unfinished (e.g. a hanging one), so
    the soak leaves nothing running behind it. Best effort: failures are ignored."""
    try:
        async with asyncio.timeout(2.0):
            await stop_run(ctx.client, run_id)
    except (ClientError, TimeoutError):
        pass
