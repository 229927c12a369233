"""Failures injected into real redis-py objects (the server itself stays real)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError


class FailingSubscribe:
    """Makes ``PubSub.subscribe`` fail for channels containing ``part``, after the PubSub
    has taken its connection (the case that leaked in the seed), and counts the failures."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.failures = 0

    @contextlib.contextmanager
    def installed(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[FailingSubscribe]:
        original = PubSub.subscribe
        injector = self

        async def subscribe(ps: PubSub, *args: Any, **kwargs: Any) -> Any:
            if any(injector.part in str(arg) for arg in args):
                injector.failures += 1
                await ps.connect()  # the connection is taken, then the command fails
                raise RedisConnectionError(f"injected: subscribe to {injector.part} failed")
            return await original(ps, *args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(PubSub, "subscribe", subscribe)
            yield self
