"""An exhausted connection budget, recognised and reported the same way by every adapter.

redis-py, coredis, the Redis server and SQLAlchemy each word "no connection left" their
own way. Whichever adapter meets one (``streams.connection``, ``queue``, ``store``)
turns it into :class:`~runstream.errors.TooManyConnections` here, so it is always
logged as "Too many connections" with the role and instance, and always counted in
``runstream_too_many_connections_total``.
"""

from __future__ import annotations

from typing import Final

import structlog

from runstream.errors import TooManyConnections
from runstream.metrics import TOO_MANY_CONNECTIONS

log = structlog.get_logger(__name__)

# redis-py's blocking pool ("No connection available."), a non-blocking pool ("Too many
# connections"), the Redis server's maxclients ("max number of clients reached").
BUDGET_MESSAGES: Final = (
    "no connection available",
    "too many connections",
    "max number of clients",
)


def is_budget_message(text: str) -> bool:
    """True when an error's text says a Redis connection budget is exhausted."""
    lowered = text.lower()
    return any(message in lowered for message in BUDGET_MESSAGES)


def budget_exhausted(message: str, *, role: str, instance: str, backend: str) -> TooManyConnections:
    """Log and count an exhausted budget; return the exception (saying ``message``) to raise.

    ``backend`` says whose budget it was (``redis``, ``pubsub``, ``queue``, ``database``).
    """
    TOO_MANY_CONNECTIONS.labels(role, instance).inc()
    log.error("Too many connections", role=role, instance=instance, backend=backend, cause=message)
    return TooManyConnections(message, role=role, instance=instance)
