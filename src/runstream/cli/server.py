"""Serving the API under uvicorn, with the process (not uvicorn) owning its signals.

uvicorn's ``serve()`` installs SIGINT/SIGTERM handlers of its own and re-raises the
signal once it has stopped, which would kill the process with the signal instead of
exiting 0, and would take the signals away from a worker sharing the process
(``runstream dev``). :class:`ApiServer` turns that off; the command calls
:meth:`ApiServer.request_exit` from its own handlers instead.
"""

from __future__ import annotations

import contextlib
import math
import signal
from typing import TYPE_CHECKING

import uvicorn

from runstream.api.hosts import is_loopback
from runstream.cli.signals import handle_signals
from runstream.errors import ConfigError, RunstreamError

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterator

    from fastapi import FastAPI

    from runstream.config import Settings


class ApiStartError(RunstreamError):
    """uvicorn could not start the API (port taken, or the app's startup failed)."""


class ApiServer(uvicorn.Server):
    """A uvicorn server that leaves signals alone and can say when it listens."""

    def __init__(
        self, config: uvicorn.Config, app: FastAPI, on_ready: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self._app = app
        self._on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: the command routes signals to :meth:`request_exit`."""
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then call ``on_ready`` once it listens."""
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()

    def request_exit(self, sig: int = signal.SIGTERM) -> None:
        """Stop serving; a second SIGINT forces the exit.

        Open event streams end at once, so their clients resume elsewhere instead of
        holding the shutdown for its whole grace period; requests in flight get the grace.
        """
        from runstream.api.app import close_streams  # loaded with the app already

        close_streams(self._app)
        self.handle_exit(sig, None)


def build_server(
    app: FastAPI,
    settings: Settings,
    host: str,
    port: int,
    on_ready: Callable[[], None] | None = None,
) -> ApiServer:
    """An :class:`ApiServer` for ``app`` on ``host:port`` with runstream's settings."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        # uvicorn types this as int; round up so a fractional grace is never cut short.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        log_config=None,  # logging is configured once, by runstream.logs
        # RUNSTREAM_HTTP_MAX_CONNECTIONS: uvicorn answers 503 to connections above it
        # before the app sees them, so a flood cannot exhaust the process's descriptors.
        limit_concurrency=settings.http_max_connections,
    )
    return ApiServer(config, app, on_ready)


async def serve(server: ApiServer, sock: socket.socket | None = None) -> None:
    """Run ``server`` until it is asked to exit; ApiStartError if it cannot start.

    ``sock``: a socket already listening (shared by several API processes)."""
    try:
        await server.serve(sockets=None if sock is None else [sock])
    except SystemExit:
        # uvicorn reports a failed bind or a failed lifespan startup with sys.exit()
        # after logging the cause; inside a larger program that must be an error.
        config = server.config
        raise ApiStartError(
            f"the API could not start on {config.host}:{config.port} (see the log above)"
        ) from None


def check_bind(host: str, settings: Settings) -> None:
    """Refuse to expose an API without authentication beyond this machine (ConfigError)."""
    if settings.auth_enabled or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to bind {host} with authentication off: set RUNSTREAM_API_KEYS or "
        "RUNSTREAM_JWT_SECRET, or bind 127.0.0.1"
    )


async def serve_api(
    settings: Settings, host: str, port: int, *, sock: socket.socket | None = None
) -> None:
    """Serve the API on ``host:port`` (or on ``sock``) until SIGTERM or Ctrl-C (a second
    Ctrl-C forces)."""
    from runstream.api.app import create_app  # the whole app stack: only when serving

    server = build_server(create_app(settings), settings, host, port)
    with handle_signals(server.request_exit):
        await serve(server, sock)
