"""Request body limit, enforced while the body arrives (pure ASGI middleware).

A declared ``Content-Length`` over the limit is refused before anything is read; a
chunked body is counted as it comes and refused at the first byte past the limit, so a
large body is never held in memory whole.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runstream.api.errors import TrackedSend, send_error


class _TooLarge(HTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body parsing lets it through."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over the limit of {max_bytes} bytes")


class BodyLimit:
    """Answer 413 to requests whose body exceeds ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        if not _is_chunked(scope):
            # No body, or one whose declared length the HTTP server enforces: nothing to
            # count, and the response (an event stream, often) is sent without a wrapper.
            await self.app(scope, receive, send)
            return
        received = 0
        tracked = TrackedSend(send)

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, counting_receive, tracked)
        except _TooLarge:
            if not tracked.started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        message = f"request body over the limit of {self.max_bytes} bytes"
        await send_error(send, 413, "too_large", message, close=True)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _is_chunked(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope["headers"])
