"""Structured logging for every runstream process, structlog and stdlib alike.

runstream's own code logs through structlog; uvicorn, streaq, httpx and SQLAlchemy log
through the standard library. Both end in one handler on stderr with one format: ISO
UTC timestamps, the level, the logger name and whatever is bound in the context
(``run_id``, ``instance``), rendered as JSON lines or for a human at a console.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote_plus

import structlog

if TYPE_CHECKING:
    from structlog.typing import Processor

LEVELS: Final = ("debug", "info", "warning", "error", "critical")

# Libraries whose INFO output is one line per poll or per request: at INFO they bury
# runstream's own lines, so they only speak up from WARNING on.
QUIET_LOGGERS: Final = ("streaq", "coredis", "httpx", "httpcore")

# Marks the handler configure_logging installed, so a second call replaces it rather
# than doubling every line, and handlers installed by others (pytest) are left alone.
_HANDLER_NAME: Final = "runstream"


_SECRET_PARAMETERS: Final = frozenset({"token", "ticket"})


def redact_query(target: str) -> str:
    """``target`` (a path with its query) with ``token=`` and ``ticket=`` values hidden,
    however their names are spelled (``%74oken`` is ``token`` to the server too)."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        if eq and unquote_plus(name).strip().lower() in _SECRET_PARAMETERS:
            part = f"{name}=***"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


class RedactCredentials(logging.Filter):
    """Hides credentials in uvicorn's access lines (``?token=`` is how an EventSource
    authenticates, so the full URL would otherwise put an API key in every log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query(arg) if isinstance(arg, str) and "=" in arg else arg
                for arg in record.args
            )
        return True


def configure_logging(json: bool = False, level: str = "info") -> None:
    """Send structlog and stdlib logging to stderr, as JSON lines or for a console.

    ``level`` is one of :data:`LEVELS` (any case); it applies to runstream and to the
    libraries it uses, except the chatty ones in :data:`QUIET_LOGGERS` (WARNING). Raises
    ValueError for an unknown level. Calling it again replaces the previous setup.
    """
    numeric = _level_number(level)
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _install_handler(_formatter(shared, json=json), numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def _level_number(level: str) -> int:
    name = level.strip().lower()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(LEVELS)}")
    number: int = logging.getLevelNamesMapping()[name.upper()]
    return number


def _shared_processors() -> list[Processor]:
    """What every line gets, whether it came from structlog or from stdlib logging."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def _formatter(shared: list[Processor], *, json: bool) -> logging.Formatter:
    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
        # A traceback inside one JSON value keeps one event per line.
        final: list[Processor] = [structlog.processors.format_exc_info, renderer]
    else:
        tty = sys.stderr.isatty()
        # Never show locals: a frame's locals may hold API keys, JWT secrets or tokens.
        tracebacks = (
            structlog.dev.RichTracebackFormatter(show_locals=False)
            if tty
            else structlog.dev.plain_traceback
        )
        renderer = structlog.dev.ConsoleRenderer(colors=tty, exception_formatter=tracebacks)
        final = [renderer]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )


def _install_handler(formatter: logging.Formatter, level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's own logging config (used when someone ran uvicorn without
    # log_config=None in this process) gives its loggers private handlers and stops them
    # propagating: take them back so every line has one format and one destination.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(level)
    redact_access_log()


def redact_access_log() -> None:
    """Install :class:`RedactCredentials` on uvicorn's access log (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactCredentials) for f in access.filters):
        access.addFilter(RedactCredentials())
