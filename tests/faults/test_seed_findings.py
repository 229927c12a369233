"""The five findings of the seed incident, one regression test each.

Every test runs against runstream ("runstream"), against the original per-subscriber
pattern with all five fixes ("seed-fixed", which must pass too: the tests do not just
punish the pattern), and against that pattern with its finding put back ("F1".."F5"),
which must fail: those are ``xfail(strict=True)``, so a test that stopped catching its
bug would turn the suite red.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
import redis

from runstream.streams import keys
from runstream.streams.follow import follow
from runstream.streams.pubsub import Decoder, PubSubHub, Subscription
from tests.api.streaming import read_first, read_stream, start
from tests.conftest import wait_until
from tests.faults.conftest import FaultSystem, kill_connections
from tests.faults.inject import FailingSubscribe
from tests.faults.leaky import SeedSubscriptions


def variants(bug: str, raises: type[BaseException] | None = AssertionError) -> list[Any]:
    return [
        "runstream",
        "seed-fixed",
        pytest.param(
            bug,
            marks=pytest.mark.xfail(
                strict=True, raises=raises, reason=f"{bug} put back: must be caught"
            ),
        ),
    ]


@pytest.fixture
async def variant(
    request: pytest.FixtureRequest, system: FaultSystem, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """Installs the subscription code under test, after the baseline was taken."""
    name: str = request.param
    if name == "runstream":
        yield name
        return
    seed = SeedSubscriptions(None if name == "seed-fixed" else name)
    seed.install(monkeypatch)
    system.accountant.extra_pools = []

    def track() -> None:
        system.accountant.extra_pools = [c.connection_pool for c in seed.clients.values()]

    system.track_extra = track  # type: ignore[attr-defined]
    system.seed = seed  # type: ignore[attr-defined]
    try:
        yield name
    finally:
        monkeypatch.undo()
        await seed.aclose()
        if seed.bug is not None:
            # What a bug left behind was caught by the test itself (its AssertionError);
            # collect it now, so the garbage collector's complaint about it does not
            # surface in some later phase or test as an unrelated error.
            previous, sys.unraisablehook = sys.unraisablehook, lambda _: None
            try:
                gc.collect()
            finally:
                sys.unraisablehook = previous


async def back_to_baseline(system: FaultSystem) -> None:
    getattr(system, "track_extra", lambda: None)()
    await system.assert_back_to_baseline(timeout=10)


@contextlib.contextmanager
def redis_deprecations() -> Iterator[list[warnings.WarningMessage]]:
    """Record (instead of raising) deprecation warnings, to assert there were none."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        found: list[warnings.WarningMessage] = []
        yield found
        found.extend(w for w in caught if issubclass(w.category, DeprecationWarning))


@pytest.mark.parametrize("variant", variants("F1"), indirect=True)
async def test_f1_failed_control_subscribe_gives_its_connection_back(
    system: FaultSystem, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 1: the worker's subscribe to its control channel fails after the PubSub
    took a connection; that connection must go back to the pool."""
    with FailingSubscribe(":control").installed(monkeypatch) as failing:
        run_id = await start(system.client, "scripted", count=2)
        async with asyncio.timeout(30):
            while failing.failures < 3:
                await asyncio.sleep(0.02)
    events = await asyncio.wait_for(read_stream(system.client, run_id), 30)
    assert events[-1]["data"]["status"] == "completed"
    await back_to_baseline(system)


@pytest.mark.parametrize("variant", variants("F2"), indirect=True)
async def test_f2_subscriptions_are_closed_with_the_current_api(
    system: FaultSystem, variant: str
) -> None:
    """Finding 2: closing with the deprecated ``close()``; redis-py deprecations are errors."""
    with redis_deprecations() as deprecated:
        for _ in range(3):
            run_id = await start(system.client, "scripted", count=5, interval_ms=5)
            assert (await read_stream(system.client, run_id))[-1]["data"]["status"] == "completed"
    assert deprecated == []
    await back_to_baseline(system)


@pytest.mark.parametrize("variant", variants("F3"), indirect=True)
async def test_f3_stream_cleanup_releases_even_when_its_first_call_fails(
    system: FaultSystem, variant: str
) -> None:
    """Finding 3: the stream's clean-up made calls that could raise before it closed.

    Followers are cancelled the way AnyIO cancels a scope (Starlette's task groups and
    every AnyIO-based middleware do): the cancellation is delivered again at every await
    of the clean-up, so a close placed after another await is skipped and the connection
    stays open (until the garbage collector warns about it, which is an error here too)."""
    client = system.client
    sources = system.api.resources.sources()
    run_id = await start(system.client, "scripted", count=1, hang=True)

    async def follow_in_scope(scope: anyio.CancelScope, got_one: asyncio.Event) -> None:
        with scope:
            async with contextlib.aclosing(follow(run_id, 0, sources, poll_s=1.0)) as frames:
                async for _ in frames:
                    got_one.set()

    for _ in range(3):
        following = [asyncio.Event() for _ in range(5)]
        scopes = [anyio.CancelScope() for _ in following]
        async with asyncio.TaskGroup() as tg:
            for scope, got_one in zip(scopes, following, strict=True):
                tg.create_task(follow_in_scope(scope, got_one))
            async with asyncio.timeout(10):  # every reader has its subscription and an event
                await asyncio.gather(*(e.wait() for e in following))
            for scope in scopes:
                scope.cancel()  # the readers leave mid-stream
    await client.post(f"/runs/{run_id}/stop")
    assert (await read_stream(client, run_id))[-1]["data"]["status"] == "stopped"
    await back_to_baseline(system)


@pytest.mark.parametrize("variant", variants("F4"), indirect=True)
async def test_f4_error_path_closes_with_the_current_api_and_leaks_nothing(
    system: FaultSystem, variant: str, full_server: redis.Redis
) -> None:
    """Finding 4: an exception inside a subscription was handled with ``close()``."""
    client = system.client
    run_id = await start(system.client, "scripted", count=1, hang=True)
    with redis_deprecations() as deprecated:
        reader = asyncio.create_task(read_stream(client, run_id))
        channel = keys.run_notify(run_id)
        # The reader follows live once the server counts a subscriber of the run's channel.
        await wait_until(lambda: full_server.pubsub_numsub(channel)[0][1] >= 1)
        # The server refuses every new connection, so the API's pooled command connection
        # cannot be replaced by its one retry: the stream meets the error.
        kill_connections(full_server, "runstream:api:api1:cmd", then_refuse=True)
        kill_connections(full_server, "runstream:api:api1:pubsub", then_refuse=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader, 15)  # the stream ends on the error
        full_server.config_set("maxclients", 10000)
    assert deprecated == []
    assert await system.api.resources.hub.wait_connected(10)
    await client.post(f"/runs/{run_id}/stop")
    assert (await read_stream(client, run_id))[-1]["data"]["status"] == "stopped"
    await back_to_baseline(system)


@pytest.mark.parametrize("variant", variants("F5"), indirect=True)
async def test_f5_no_task_outlives_the_subscription_that_started_it(
    system: FaultSystem, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 5: listener tasks were cancelled but not awaited, so they outlived the
    stream. Whatever a subscription starts must be finished when it exits."""
    orphans: list[asyncio.Task[Any]] = []
    current = PubSubHub.subscribe
    parent_of: dict[asyncio.Task[Any], asyncio.Task[Any] | None] = {}
    loop = asyncio.get_running_loop()

    def remember_parent(
        loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        parent_of[task] = asyncio.current_task(loop)
        return task

    @contextlib.asynccontextmanager
    async def checked(
        hub: PubSubHub, channel: str, decode: Decoder | None = None
    ) -> AsyncIterator[Subscription]:
        owner = asyncio.current_task()
        earlier = set(parent_of)
        try:
            async with current(hub, channel, decode) as sub:
                yield sub
        finally:
            # Tasks started while the subscription was open, by its task, still pending.
            orphans.extend(
                t for t, p in parent_of.items() if p is owner and t not in earlier and not t.done()
            )

    run_id = await start(system.client, "scripted", count=30)
    await read_stream(system.client, run_id)  # finished: every stream below is a replay
    monkeypatch.setattr(PubSubHub, "subscribe", checked)
    loop.set_task_factory(remember_parent)  # type: ignore[arg-type]
    try:
        for _ in range(5):
            await read_first(system.client, run_id, 3)
            await read_stream(system.client, run_id)
    finally:
        loop.set_task_factory(None)
    monkeypatch.setattr(PubSubHub, "subscribe", current)
    assert orphans == []
    await back_to_baseline(system)
