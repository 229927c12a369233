"""The CLI's small pieces, in-process: bind policy, URLs, task helpers, logging."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
from typing import TYPE_CHECKING

import pytest
import structlog
import uvicorn.config

from runstream.api.hosts import is_loopback
from runstream.cli.dev import api_url
from runstream.cli.server import check_bind
from runstream.cli.tasks import until_set
from runstream.client.errors import ClientError, Interrupted
from runstream.config import load_settings, redact_url
from runstream.errors import ConfigError
from runstream.logs import configure_logging

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_public_bind_needs_auth() -> None:
    with pytest.raises(ConfigError, match=r"refusing to bind 0\.0\.0\.0"):
        check_bind("0.0.0.0", load_settings(api_keys={}, jwt_secret=None))
    check_bind("0.0.0.0", load_settings(api_keys={"k" * 16: "alice"}))
    check_bind("127.0.0.1", load_settings(api_keys={}, jwt_secret=None))


def test_urls_for_the_banner() -> None:
    assert api_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert api_url("::1", 9000) == "http://[::1]:9000"
    assert redact_url("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url("postgresql://bob:pw@db/x") == "postgresql://bob:***@db/x"
    assert redact_url("sqlite+aiosqlite:///./runstream.db") == "sqlite+aiosqlite:///./runstream.db"
    assert redact_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"


async def test_until_set_returns_the_result(no_task_leaks: None) -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 42

    assert await until_set(asyncio.Event(), work()) == 42


async def test_until_set_cancels_work_when_the_event_is_set(no_task_leaks: None) -> None:
    event, cleaned_up = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        try:
            event.set()
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    with pytest.raises(Interrupted):
        await until_set(event, work())
    assert cleaned_up.is_set()


async def test_until_set_raises_the_work_error_unwrapped(no_task_leaks: None) -> None:
    async def work() -> None:
        raise ClientError("boom")

    with pytest.raises(ClientError, match="boom"):
        await until_set(asyncio.Event(), work())


_TOUCHED = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "streaq", "coredis", "httpx")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back every logger configure_logging touches, and structlog's defaults."""
    saved = {
        name: (list(lg.handlers), lg.level, lg.propagate)
        for name in _TOUCHED
        for lg in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_carry_context_level_and_utc_time(capsys: pytest.CaptureFixture[str]) -> None:
    # As if uvicorn had configured its own loggers earlier in the process.
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    configure_logging(json=True, level="info")
    structlog.contextvars.bind_contextvars(run_id="r-1", instance="i-1")
    structlog.get_logger("runstream.test").info("hello", n=1)
    logging.getLogger("uvicorn.error").info("from %s", "stdlib")
    logging.getLogger("streaq").info("chatty")
    logging.getLogger("runstream.test").debug("hidden")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["hello", "from stdlib"]
    first = lines[0]
    assert first["run_id"] == "r-1" and first["instance"] == "i-1" and first["n"] == 1
    assert first["level"] == "info" and first["logger"] == "runstream.test"
    assert first["timestamp"].endswith("Z")
    assert lines[1]["logger"] == "uvicorn.error" and lines[1]["run_id"] == "r-1"


@pytest.mark.usefixtures("restore_logging")
def test_configuring_twice_does_not_double_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=False, level="debug")
    configure_logging(json=False, level="debug")
    logging.getLogger("runstream.test").debug("once")
    assert capsys.readouterr().err.count("once") == 1


def test_unknown_log_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging(level="loud")
