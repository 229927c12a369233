"""The FastAPI application and the lifespan that owns the process's connections."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from runstream import __version__
from runstream.api import agents, events, health, metrics, runs, stream, ui
from runstream.api.deps import ApiState
from runstream.api.errors import InternalErrors, install_error_handlers
from runstream.api.hosts import LoopbackHostsOnly
from runstream.api.limits import BodyLimit
from runstream.api.schemas import finish_document
from runstream.api.sse import OpenStreams
from runstream.api.stream import StreamRoute
from runstream.config import Settings
from runstream.logs import redact_access_log
from runstream.observability import PROCESS
from runstream.resources import open_resources
from runstream.service import RunService

log = structlog.get_logger(__name__)


def close_streams(app: FastAPI) -> None:
    """End every event stream the app has open, now and from now on: call it when the
    server starts shutting down, or open streams hold the shutdown until they end."""
    streams: OpenStreams = app.state.open_streams
    streams.close_all()


@asynccontextmanager
async def runstream_lifespan(app: FastAPI) -> AsyncIterator[ApiState]:
    """Start ``app`` (made by :func:`create_app`) for the block, from the lifespan of an
    application that mounts it: a mounted app's own lifespan never runs (see
    docs/embedding.md). Yields the running API's state."""
    async with app.router.lifespan_context(app):
        state: ApiState = app.state.api  # set by create_app's lifespan
        yield state


def create_app(settings: Settings) -> FastAPI:
    """An API app for ``settings``; its lifespan opens and closes every connection."""

    streams = OpenStreams()
    redact_access_log()  # however the app is served, no token reaches the access log

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with open_resources(settings, role="api") as resources:
            with PROCESS.watching(resources):
                state = ApiState(resources=resources, runs=RunService(resources), streams=streams)
                # On the app too: a mounted app's requests do not see its lifespan state.
                app.state.api = state
                log.info("api started", instance=settings.instance)
                try:
                    yield {"api": state}
                finally:
                    app.state.api = None
                    streams.stop_checking()
        log.info("api stopped", instance=settings.instance)

    app = FastAPI(
        title="runstream",
        version=__version__,
        lifespan=lifespan,
        description="Agent runs in background workers, streamed live (docs/protocol.md).",
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            document["paths"][stream.PATH] = {"get": copy.deepcopy(stream.OPERATION)}
            app.openapi_schema = finish_document(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.open_streams = streams  # the server ends them all when it starts shutting down
    install_error_handlers(app)
    app.include_router(runs.router)
    app.include_router(agents.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(ui.router)
    # Streams are served ahead of FastAPI's router (api/stream.py), inside every other
    # middleware: the host check, CORS and the error shape apply to them too.
    app.add_middleware(StreamRoute)
    # Innermost but for the streams: the framework's own text/plain 500 is never reached.
    app.add_middleware(InternalErrors)
    app.add_middleware(BodyLimit, max_bytes=settings.max_input_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Last-Event-ID", "Idempotency-Key", "Content-Type"],
            expose_headers=["Location"],
            max_age=600,
        )
    if not settings.auth_enabled:
        app.add_middleware(LoopbackHostsOnly)
    return app
