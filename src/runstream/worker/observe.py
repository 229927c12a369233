"""A worker's ``/metrics`` and ``/healthz``, on ``RUNSTREAM_METRICS_PORT``.

A worker has no HTTP API of its own; this small one (Starlette under uvicorn, in the
worker's own loop, as a helper task) lets Prometheus scrape its pools, pub/sub, runs and
counters, and a supervisor check its health, exactly as for an API process.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Final

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runstream.concurrency import helper_task
from runstream.errors import ConfigError
from runstream.observability import METRICS_CONTENT_TYPE, health, metrics_text
from runstream.resources import Resources

log = structlog.get_logger(__name__)

STOP_TIMEOUT_S: Final = 5.0


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the worker process owns its signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def observation_app(resources: Resources) -> Starlette:
    """``/metrics`` (Prometheus text) and ``/healthz`` (statuses only) of this process."""

    async def metrics(_: Request) -> Response:
        return Response(metrics_text(), media_type=METRICS_CONTENT_TYPE)

    async def healthz(_: Request) -> JSONResponse:
        healthy, checks = await health(resources, detailed=False)
        body = {"status": "ok" if healthy else "unavailable", "checks": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz)])


@contextlib.asynccontextmanager
async def serving_observation(
    resources: Resources, host: str, port: int
) -> AsyncIterator[uvicorn.Server]:
    """Serve :func:`observation_app` on ``host:port`` for the block."""
    config = uvicorn.Config(
        observation_app(resources),
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    server = _QuietServer(config)
    # Bound here, not by uvicorn, which answers a failed bind with sys.exit().
    with _listening(host, port) as sock:
        serving_task = server.serve(sockets=[sock])
        # The socket already listens: a scrape that comes first waits in its backlog.
        async with helper_task(serving_task, name="runstream-worker-metrics") as serving:
            log.info("worker metrics served", url=f"http://{host}:{port}/metrics")
            try:
                yield server
            finally:
                server.should_exit = True
                await asyncio.wait([serving], timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def _listening(host: str, port: int) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"RUNSTREAM_METRICS_PORT: cannot listen on {host}:{port} ({exc.strerror})"
            ) from None
        sock.listen(64)
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()
