"""runstream's exceptions, one tree.

    RunstreamError
    ├── ConfigError            bad configuration; the message is one line to show the user
    ├── BackendUnavailable     Redis, the queue or the database cannot serve the call now
    │   ├── TooManyConnections a connection budget (pool or server maxclients) is exhausted;
    │   │                      carries the role and instance that hit it
    │   └── SubscribeError     the shared pub/sub connection could not confirm a subscription
    ├── QuotaExceeded          a per-principal limit (active runs, open streams) is reached
    ├── LockLost               a writer's run lock is held by another worker now
    ├── AgentError             an agent misbehaved (bad event, unknown name, bad input)
    ├── IdempotencyMismatch    an idempotency key reused with another request body
    ├── RunNotFound            no such run for this principal
    └── RunFinished            the run has already ended (it cannot be stopped)

Foreign errors (redis-py, coredis, SQLAlchemy and the drivers under it) are translated
in the adapter that talks to them (``streams``, ``queue``, ``store``): nothing above
the adapters sees one. The HTTP layer maps this tree to statuses (``api.errors``).
"""

from __future__ import annotations


class RunstreamError(Exception):
    """Base of every error runstream raises on purpose."""


class ConfigError(RunstreamError):
    """The configuration is invalid; ``str(exc)`` is a one-line fix-it message."""


class BackendUnavailable(RunstreamError):
    """Redis, the queue or the database is unreachable or refused the call.

    ``dependency`` names which one ("Redis", "the database", "the queue", "live
    delivery"): what a client is told, while the message (which may name an address)
    goes to the log only.
    """

    def __init__(self, message: str, *, dependency: str = "a backend") -> None:
        super().__init__(message)
        self.dependency = dependency


class TooManyConnections(BackendUnavailable):
    """A connection budget is exhausted: a process pool, or the server's maxclients.

    ``role`` and ``instance`` name the process that hit it, as in ``CLIENT LIST`` names.
    """

    def __init__(self, message: str, *, role: str, instance: str) -> None:
        super().__init__(message, dependency="a connection pool")
        self.role = role
        self.instance = instance


class SubscribeError(BackendUnavailable):
    """A subscription on the shared pub/sub connection was not confirmed in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, dependency="live delivery")


class QuotaExceeded(RunstreamError):
    """A per-principal limit is reached; ``setting`` names it (an HTTP 429)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{message} ({setting})")
        self.setting = setting


class LockLost(RunstreamError):
    """A run's writer no longer holds the run's lock: another worker owns the run now,
    and this one must stop writing it."""


class AgentError(RunstreamError):
    """An agent yielded something runstream cannot accept, or does not exist."""


class IdempotencyMismatch(RunstreamError):
    """An idempotency key already names a run created with another request body."""


class RunNotFound(RunstreamError):
    """The run does not exist or belongs to another principal."""


class RunFinished(RunstreamError):
    """The run has already ended; ``status`` is how it ended."""

    def __init__(self, status: str) -> None:
        super().__init__(f"run already {status}")
        self.status = status


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error (of the first one inside an exception group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
