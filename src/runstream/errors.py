"""runstream's exceptions, one tree.

    RunstreamError
    ├── ConfigError            bad configuration; the message is one line to show the user
    ├── BackendUnavailable     Redis or the database cannot serve the call now (HTTP 503)
    │   └── TooManyConnections a connection budget (pool or server maxclients) is exhausted
    ├── SubscribeError         the shared pub/sub connection could not confirm a subscription
    ├── AgentError             an agent misbehaved (bad event, unknown name)
    └── RunNotFound            no such run for this principal

Foreign errors (redis-py, SQLAlchemy) are translated at the module that talks to them.
"""

from __future__ import annotations


class RunstreamError(Exception):
    """Base of every error runstream raises on purpose."""


class ConfigError(RunstreamError):
    """The configuration is invalid; ``str(exc)`` is a one-line fix-it message."""


class BackendUnavailable(RunstreamError):
    """Redis or the database is unreachable or refused the call."""


class TooManyConnections(BackendUnavailable):
    """A connection budget is exhausted: the process pool, or the server's maxclients."""


class SubscribeError(BackendUnavailable):
    """A subscription on the shared pub/sub connection was not confirmed in time."""


class AgentError(RunstreamError):
    """An agent yielded something runstream cannot accept, or does not exist."""


class RunNotFound(RunstreamError):
    """The run does not exist or belongs to another principal."""
