"""What the pattern's API and worker share: settings, key names, Redis clients, events."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from redis.asyncio import ConnectionPool, Redis

QUEUE_KEY: Final = "pattern:queue"
TERMINAL: Final = frozenset({"completed", "failed", "stopped"})
STREAM_END_SIGNALS: Final = frozenset({"STOP", "END_STREAM", "ERROR"})
RESPONSE_TTL_S: Final = 24 * 3600


def responses_key(run_id: str) -> str:
    """The run's Redis list of responses (``agent_run:<id>:responses``)."""
    return f"agent_run:{run_id}:responses"


def response_channel(run_id: str) -> str:
    """The channel a ``new`` is published on after each RPUSH."""
    return f"agent_run:{run_id}:new_response"


def control_channel(run_id: str) -> str:
    """The run's global control channel (STOP, END_STREAM, ERROR)."""
    return f"agent_run:{run_id}:control"


def instance_control_channel(run_id: str, instance: str) -> str:
    """The control channel of the worker instance that runs the run."""
    return f"agent_run:{run_id}:control:{instance}"


@dataclass(frozen=True)
class Settings:
    """``PATTERN_*`` environment variables (set by the bench)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite+aiosqlite:///./pattern.db"
    instance: str = field(default_factory=lambda: secrets.token_hex(4))
    # 0: unbounded, as the original's pool was (redis-py 5's default is 2**31).
    redis_max_connections: int = 0
    worker_concurrency: int = 100

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings from the environment."""
        env = os.environ
        return cls(
            redis_url=env.get("PATTERN_REDIS_URL", cls.redis_url),
            database_url=env.get("PATTERN_DATABASE_URL", cls.database_url),
            instance=env.get("PATTERN_INSTANCE") or secrets.token_hex(4),
            redis_max_connections=int(env.get("PATTERN_REDIS_MAX_CONNECTIONS", "0")),
            worker_concurrency=int(env.get("PATTERN_WORKER_CONCURRENCY", "100")),
        )


def redis_client(settings: Settings, role: str, purpose: str) -> Redis:
    """A client on its own pool whose connections are named ``pattern:<role>:<inst>:<purpose>``.

    The original had one pool for commands and PubSubs alike; two pools (``cmd`` and
    ``pubsub``) only let ``CLIENT LIST`` tell them apart: the counts are the same.
    """
    name = f"pattern:{role}:{settings.instance}:{purpose}"
    # redis-py 8 defaults to 100 connections; redis-py 5, the original's, to 2**31.
    limit = settings.redis_max_connections or 2**31 - 1
    pool = ConnectionPool.from_url(
        settings.redis_url,
        client_name=name,
        max_connections=limit,
        decode_responses=True,
        socket_connect_timeout=5.0,
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)


def now_iso() -> str:
    """The current time as ISO 8601 UTC with milliseconds, as runstream writes ``ts``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_event(seq: int, event: dict[str, Any]) -> str:
    """One response as stored in the list: the event plus ``seq`` and ``ts``."""
    return orjson.dumps({**event, "seq": seq, "ts": now_iso()}).decode()
