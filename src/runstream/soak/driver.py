"""The load: ``concurrency`` virtual clients, each playing scenarios until the deadline."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from runstream.soak.scenarios import play

if TYPE_CHECKING:
    from runstream.soak.mix import Mix
    from runstream.soak.scenarios import Context


async def virtual_client(
    ctx: Context, mix: Mix, rng: random.Random, *, deadline: float, stop: asyncio.Event
) -> None:
    """Play one scenario after another until ``deadline`` (``loop.time()``) or ``stop``.

    An iteration that has begun is played to its end (bounded by the iteration timeout):
    cutting it short would leave runs behind (a hanging one, say) that the settle phase
    would then wrongly blame on the system.
    """
    loop = asyncio.get_running_loop()
    while loop.time() < deadline and not stop.is_set():
        await play(ctx, mix.choose(rng), rng)


async def drive(
    ctx: Context,
    mix: Mix,
    *,
    concurrency: int,
    duration: float,
    seed: int,
    stop: asyncio.Event,
) -> None:
    """Run the virtual clients for ``duration`` seconds (or until ``stop`` is set).

    Each client has its own generator seeded from ``seed`` and its index, so a client's
    sequence of scenarios and parameters is the same for the same seed, whatever the
    interleaving of the others.
    """
    deadline = asyncio.get_running_loop().time() + duration
    async with asyncio.TaskGroup() as tg:
        for index in range(concurrency):
            rng = random.Random(f"{seed}:{index}")
            tg.create_task(
                virtual_client(ctx, mix, rng, deadline=deadline, stop=stop),
                name=f"runstream-soak-client-{index}",
            )
