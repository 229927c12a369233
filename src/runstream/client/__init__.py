"""Talking to a runstream API over HTTP: :class:`Client` for programs, and the calls,
events and errors the command line shares with it."""

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
