"""Talking to a runstream API over HTTP: :class:`Client` for programs, and the calls,
events and errors the command line shares with it.

The names below are loaded on first use: importing a light part of the package (its
errors, its defaults) does not load httpx. ``runstream api`` imports the command line,
which imports those parts, and a server has no use for an HTTP client (2.7 MiB).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from runstream.client.client import Client, Run
    from runstream.client.events import StreamEvent
    from runstream.client.http import (
        ApiError,
        ApiUnreachable,
        Conflict,
        InvalidRequest,
        NotFound,
        RateLimited,
        Unauthorized,
        Unavailable,
    )

_HOMES: Final = {
    "Client": "runstream.client.client",
    "Run": "runstream.client.client",
    "StreamEvent": "runstream.client.events",
    **dict.fromkeys(
        (
            "ApiError",
            "ApiUnreachable",
            "Conflict",
            "InvalidRequest",
            "NotFound",
            "RateLimited",
            "Unauthorized",
            "Unavailable",
        ),
        "runstream.client.http",
    ),
}

__all__ = [
    "ApiError",
    "ApiUnreachable",
    "Client",
    "Conflict",
    "InvalidRequest",
    "NotFound",
    "RateLimited",
    "Run",
    "StreamEvent",
    "Unauthorized",
    "Unavailable",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
