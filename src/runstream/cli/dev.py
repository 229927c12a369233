"""``runstream dev``: the whole system in one process and one command.

A private redis-server (unless ``RUNSTREAM_REDIS_URL`` is set), the default SQLite
database, the API under uvicorn and a worker, side by side in one event loop. They live
and die together: when either ends, for whatever reason, the other is stopped
gracefully, and the redis-server goes last.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from runstream.agents.registry import load_registry
from runstream.api.app import create_app
from runstream.cli.embedded_redis import embedded_redis
from runstream.cli.loop import run as run_loop
from runstream.cli.server import build_server, check_bind, serve
from runstream.cli.signals import Interrupts, handle_signals
from runstream.cli.worker import still_winding_down
from runstream.client.defaults import DEFAULT_API_URL
from runstream.config import load_settings, redact_url
from runstream.errors import ConfigError
from runstream.worker.process import run_worker

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

    from rich.console import Console

    from runstream.cli.server import ApiServer
    from runstream.config import Settings


@dataclass(frozen=True, slots=True)
class DevRedis:
    """The Redis that ``runstream dev`` uses, and whether it started it."""

    url: str
    embedded: bool


def run_dev(host: str, port: int, console: Console) -> None:
    """Check the configuration, start Redis if needed, run API and worker until a signal.

    Raises ConfigError (nothing started), EmbeddedRedisError or ApiStartError. The
    redis-server is stopped on every path, after the API and the worker.
    """
    base = load_settings()  # a bad environment fails here, before anything starts
    if base.redis_cluster and not os.environ.get("RUNSTREAM_REDIS_URL"):
        raise ConfigError(
            "RUNSTREAM_REDIS_CLUSTER needs RUNSTREAM_REDIS_URL to name a cluster node "
            "(runstream dev starts a standalone Redis only when no URL is set)"
        )
    load_registry(base.agents)  # and so does an agent that cannot be imported
    check_bind(host, base)
    with dev_redis() as redis:
        # One Settings per component: each carries its own instance id, so CLIENT LIST
        # and the logs tell the API's connections from the worker's.
        api = load_settings(redis_url=redis.url, instance=f"{base.instance}-api")
        worker = load_settings(redis_url=redis.url, instance=f"{base.instance}-worker")
        url = api_url(host, port)
        banner = functools.partial(print_banner, console, url, api, redis)
        server = build_server(create_app(api), api, host, port, on_ready=banner)
        run_loop(DevSystem(server, worker).run())


@contextmanager
def dev_redis() -> Iterator[DevRedis]:
    """``RUNSTREAM_REDIS_URL`` when set, else a private redis-server for the duration."""
    configured = os.environ.get("RUNSTREAM_REDIS_URL")
    if configured:
        yield DevRedis(configured, embedded=False)
        return
    with embedded_redis() as url:
        yield DevRedis(url, embedded=True)


class DevSystem:
    """The API and a worker in one event loop, started and stopped together."""

    def __init__(self, server: ApiServer, worker_settings: Settings) -> None:
        self._server = server
        self._worker_settings = worker_settings
        self._shutdown = asyncio.Event()
        self._errors: list[Exception] = []

    async def run(self) -> None:
        """Serve until a signal or until one half ends; re-raise the first error."""
        with handle_signals(Interrupts(graceful=self.stop, force=self.force)):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._guard(serve(self._server)))
                tg.create_task(self._guard(run_worker(self._worker_settings, self._shutdown)))
        if self._errors:
            raise self._errors[0]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Ask both halves to finish: uvicorn closes streams and drains, the worker winds
        down its runs within its grace periods."""
        if not self._server.should_exit:
            self._server.request_exit(sig)
        self._shutdown.set()

    def force(self, _: int = signal.SIGINT) -> None:
        """Stop waiting for the API's open connections; the worker still ends its runs
        on its own bounded path (see :func:`runstream.cli.worker.still_winding_down`)."""
        self._server.force_exit = True
        self._server.should_exit = True
        self._shutdown.set()
        still_winding_down(self._worker_settings)

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one half; when it ends, however, stop the other one gracefully.

        The error is kept rather than raised: a TaskGroup would cancel the other half
        at once, cutting its streams and runs short instead of letting them wind down.
        """
        try:
            await work
        except Exception as exc:
            self._errors.append(exc)
        finally:
            self.stop()


def print_banner(console: Console, url: str, settings: Settings, redis: DevRedis) -> None:
    """Where everything is, and a first command to try."""
    redis_note = " (embedded, private to this process)" if redis.embedded else ""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("API", url)
    table.add_row("Redis", redact_url(redis.url) + redis_note)
    table.add_row("Database", redact_url(settings.database_url))
    example = 'runstream run echo --input \'{"text": "hello world"}\''
    if url != DEFAULT_API_URL:
        example += f" --api {url}"
    if settings.auth_enabled:
        example += " --token <your key>"
    console.print(Panel.fit(table, title="runstream dev", border_style="green"))
    # Outside the panel: a panel crops long lines, and this one is meant to be copied.
    console.print(Text.assemble(("Try: ", "bold"), (example, "cyan")))
    console.print(Text("Ctrl-C stops everything.", style="dim"))


def api_url(host: str, port: int) -> str:
    """The URL a client uses for an API bound to ``host:port``."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"
