"""An exhausted connection budget, recognised and reported the same way by every adapter.

redis-py, the Redis server and SQLAlchemy each word "no connection left" their own way.
Whichever adapter meets one (``streams.connection``, ``store``) turns it into
:class:`~runstream.errors.TooManyConnections` here, so it is always logged as "Too many
connections" with the role and instance, and always counted in
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

    ``backend`` says whose budget it was (``redis``, ``pubsub``, ``database``).
    """
    TOO_MANY_CONNECTIONS.labels(role, instance).inc()
    log.error("Too many connections", role=role, instance=instance, backend=backend, cause=message)
    return TooManyConnections(message, role=role, instance=instance)


class ErrorMap:
    """A reusable, stateless context manager that maps one library's errors to runstream's.

    Each adapter keeps one for its process (``with self._errors: ...``); a subclass says
    in :meth:`translate` what each foreign error becomes, so an exhausted budget is
    logged and counted with the role and instance wherever it happens.
    """

    __slots__ = ("instance", "role")

    def __init__(self, *, role: str, instance: str) -> None:
        self.role = role
        self.instance = instance

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, _type: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        if exc is not None:
            self.translate(exc)

    def translate(self, exc: BaseException) -> None:
        """Raise runstream's error for ``exc`` (``from exc``); return to let it pass."""
        raise NotImplementedError

    def exhausted(self, message: str, backend: str) -> TooManyConnections:
        """The TooManyConnections to raise for this process, logged and counted."""
        return budget_exhausted(message, role=self.role, instance=self.instance, backend=backend)
