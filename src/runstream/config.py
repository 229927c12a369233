"""Settings: every ``RUNSTREAM_*`` environment variable, read and checked in one place.

A bad value fails at start with one line that names the variable and says what to fix
(:func:`load_settings` raises :class:`~runstream.errors.ConfigError`; the CLI prints it).
"""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from runstream.errors import ConfigError

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


MIN_API_KEY_CHARS = 16
MIN_JWT_SECRET_BYTES = 32


class Settings(BaseSettings):
    """The whole configuration of a runstream process (docs/settings.md)."""

    model_config = SettingsConfigDict(env_prefix="RUNSTREAM_", extra="ignore", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    queue_redis_url: str | None = None
    database_url: str = "sqlite+aiosqlite:///./runstream.db"
    redis_max_connections: int = Field(default=8, ge=1, le=1000)
    redis_timeout_s: float = Field(default=2.0, gt=0, le=60)
    redis_idle_s: float = Field(default=10.0, gt=0)
    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    jwt_secret: str | None = None
    event_ttl_s: int = Field(default=86400, ge=1)
    max_event_bytes: int = Field(default=1024 * 1024, ge=64)
    max_input_bytes: int = Field(default=1024 * 1024, ge=64)
    heartbeat_s: float = Field(default=15.0, gt=0)
    stop_grace_s: float = Field(default=5.0, ge=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    worker_lost_s: float = Field(default=30.0, ge=1)
    worker_concurrency: int = Field(default=100, ge=1, le=10000)
    agents: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    instance: str = Field(default_factory=lambda: secrets.token_hex(4))
    queue_name: str = "runs"
    subscriber_queue_size: int = Field(default=256, ge=1)
    pubsub_ping_s: float = Field(default=5.0, gt=0)
    # Limits (docs/settings.md): per run, per principal, per request, per process.
    max_run_events: int = Field(default=100_000, ge=1)
    max_run_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_run_s: float = Field(default=3600.0, gt=0)
    max_active_runs_per_principal: int = Field(default=50, ge=1)
    max_streams_per_principal: int = Field(default=200, ge=1)
    max_metadata_bytes: int = Field(default=16384, ge=2)
    http_max_connections: int | None = Field(default=None, ge=1)
    ticket_ttl_s: int = Field(default=60, ge=1, le=86400)
    stream_max_s: float = Field(default=0.0, ge=0)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    expose_agent_errors: bool = False
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("api_keys", "agents", mode="before")
    @classmethod
    def _parse_pairs(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_pairs(value)
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(origin.strip() for origin in value.split(",") if origin.strip())
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: dict[str, str]) -> dict[str, str]:
        short = [key for key in value if len(key) < MIN_API_KEY_CHARS]
        if short:
            raise ValueError(
                f"every API key must be at least {MIN_API_KEY_CHARS} characters "
                f"({len(short)} shorter)"
            )
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _check_jwt_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_JWT_SECRET_BYTES} bytes")
        return value

    @field_validator("redis_url", "queue_redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _check_cluster(self) -> Settings:
        if self.redis_cluster and self.redis_url.startswith("unix://"):
            raise ValueError(
                "RUNSTREAM_REDIS_CLUSTER needs RUNSTREAM_REDIS_URL to name a cluster node "
                "as redis://host:port"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep:
            raise ValueError("must look like sqlite:///path.db or postgresql://user@host/db")
        base = scheme.split("+", 1)[0]
        if base not in _ASYNC_DRIVERS:
            raise ValueError("only sqlite and postgresql are supported")
        return f"{_ASYNC_DRIVERS[base]}://{rest}"

    @field_validator("instance")
    @classmethod
    def _check_instance(cls, value: str) -> str:
        # The instance is part of CLIENT SETNAME, where a space or colon would break
        # every connect or the role:instance:purpose parsing.
        if not value or any(c.isspace() or c == ":" for c in value):
            raise ValueError("must be non-empty, without spaces or colons")
        return value

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry an API key or a JWT."""
        return bool(self.api_keys) or bool(self.jwt_secret)


def parse_pairs(text: str) -> dict[str, str]:
    """Parse ``"a=x,b=y"`` into ``{"a": "x", "b": "y"}``; raise ValueError when malformed.

    The value is what follows the *last* ``=``, so a name (an API key) may contain ``=``
    (base64 padding) while a value (a principal, a ``module:attr``) cannot."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.rpartition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"expected name=value pairs separated by commas, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus ``overrides``), or raise ConfigError with one line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a check across settings names them itself
            raise ConfigError(first["msg"].removeprefix("Value error, ")) from None
        field = str(first["loc"][0])
        raise ConfigError(
            f"RUNSTREAM_{field.upper()}: {first['msg']} (fix the environment variable)"
        ) from None


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit to print or to report."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
