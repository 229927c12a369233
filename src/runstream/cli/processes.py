"""``runstream api --workers N``: several API processes sharing one listening socket.

The parent binds the port once and starts N children (``spawn``: nothing of the parent's
event loop or connections is inherited); each child serves the same socket with its own
pools, its own single pub/sub connection and its own instance name, ``<instance>-<n>``,
so ``CLIENT LIST`` and the metrics tell them apart. The kernel spreads new connections
over the children; a stream resumes on any of them (its cursor is the only state).

The parent holds no Redis or database connection. SIGTERM or Ctrl-C is passed on to every
child, which closes its streams and exits as a single ``runstream api`` does; a child
that dies on its own is started again (a crash must not shrink the service for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Final

import structlog

from runstream.cli.loop import run as run_loop
from runstream.cli.server import ApiStartError
from runstream.cli.signals import handle_signals
from runstream.errors import ConfigError

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess

    from runstream.config import Settings

log = structlog.get_logger(__name__)

RESTART_DELAY_S: Final = 1.0
STARTUP_S: Final = 5.0
"""A child that exits sooner than this after its start failed to start: no restart."""
STOP_TIMEOUT_S_EXTRA: Final = 10.0
"""How long past the shutdown grace a child may take before it is killed."""


def instance_of(base: str, index: int) -> str:
    """The instance name of child ``index`` (1-based) of an API started as ``base``."""
    return f"{base}-{index}"


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every child serves (ConfigError when the port is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _child(sock: socket.socket, index: int, log_json: bool, log_level: str) -> None:
    """One API process: the settings from the environment, its own instance name."""
    from runstream.cli.server import serve_api
    from runstream.config import load_settings
    from runstream.logs import configure_logging

    configure_logging(json=log_json, level=log_level)
    base = load_settings()
    settings = load_settings(instance=instance_of(base.instance, index))
    host, port = sock.getsockname()[:2]
    run_loop(serve_api(settings, host, port, sock=sock))


class Supervisor:
    """Starts the children, restarts one that dies, and stops them all on a signal."""

    def __init__(
        self, settings: Settings, sock: socket.socket, workers: int, logging: tuple[bool, str]
    ) -> None:
        self._settings = settings
        self._sock = sock
        self._workers = workers
        self._logging = logging
        self._context = multiprocessing.get_context("spawn")
        self._children: dict[int, SpawnProcess] = {}
        self._started_at: dict[int, float] = {}
        self._stopping = asyncio.Event()

    def _start(self, index: int) -> None:
        child = self._context.Process(
            target=_child,
            args=(self._sock, index, *self._logging),
            name=f"runstream-api-{index}",
        )
        child.start()
        self._children[index] = child
        self._started_at[index] = time.monotonic()
        log.info("api process started", index=index, pid=child.pid)

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        """Pass ``sig`` on to every child; called from the parent's signal handlers."""
        self._stopping.set()
        for child in self._children.values():
            if child.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, sig)

    async def run(self) -> None:
        """Serve until stopped; returns once every child has exited.

        Raises ApiStartError when a child exits during its first seconds (a port or a
        setting it cannot use would make every restart fail the same way).
        """
        for index in range(1, self._workers + 1):
            self._start(index)
        try:
            while not self._stopping.is_set():
                await self._restart_the_dead()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 0.5)
        finally:
            self.request_stop()
            await asyncio.to_thread(self._join_all)

    async def _restart_the_dead(self) -> None:
        for index, child in list(self._children.items()):
            if child.is_alive():
                continue
            if time.monotonic() - self._started_at[index] < STARTUP_S:
                raise ApiStartError(
                    f"API process {index} exited with code {child.exitcode} while starting "
                    "(see the log above)"
                )
            log.error("api process exited; starting it again", index=index, code=child.exitcode)
            await asyncio.sleep(RESTART_DELAY_S)
            if not self._stopping.is_set():
                self._start(index)

    def _join_all(self) -> None:
        deadline = time.monotonic() + self._settings.shutdown_grace_s + STOP_TIMEOUT_S_EXTRA
        for child in self._children.values():
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                log.error("api process did not stop in time; killing it", pid=child.pid)
                child.kill()
                child.join()


async def serve_processes(
    settings: Settings, host: str, port: int, workers: int, logging: tuple[bool, str]
) -> None:
    """Serve the API from ``workers`` processes on ``host:port`` until SIGTERM or Ctrl-C."""
    sock = bind(host, port)
    try:
        supervisor = Supervisor(settings, sock, workers, logging)
        with handle_signals(supervisor.request_stop):
            await supervisor.run()
    finally:
        sock.close()
