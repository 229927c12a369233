"""The event loop the server commands run on: uvloop when it is installed, else asyncio's.

``pip install 'runstream[fast]'`` adds uvloop and httptools (which uvicorn then uses for
HTTP parsing); docs/performance.md says what each buys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on a uvloop loop where uvloop is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
