"""A small SSE client on ``asyncio.Protocol``: 10,000 of these fit one event loop.

HTTP/1.1 GET, chunked or close-delimited body, SSE messages split on blank lines; each
message's ``data`` JSON is handed to a callback. No retries: a stream that fails is
reported with why (HTTP status and body, connection error, idle, closed early).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class StreamState:
    """What one stream did."""

    index: int
    run_id: str
    status: int | None = None
    events: int = 0
    terminal: bool = False
    error: str | None = None
    last_seq: int = 0
    gaps: int = 0
    duplicates: int = 0
    opened_s: float | None = None
    last_activity: float = 0.0
    closed: bool = False


OnData = Callable[[StreamState, bytes, float], bool]
"""Called with (state, data bytes, receipt wall time); returns True at the terminal event."""


class SSEProtocol(asyncio.Protocol):
    """One SSE response, parsed as it arrives."""

    def __init__(self, request: bytes, state: StreamState, on_data: OnData) -> None:
        self.request, self.state, self.on_data = request, state, on_data
        self.transport: asyncio.Transport | None = None
        self.headers_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._raw = bytearray()
        self._chunked = False
        self._chunk_left = -1  # -1: expecting a chunk-size line
        self._pending = b""
        self._error_body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the request."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """Headers first, then the (possibly chunked) body."""
        self.state.last_activity = time.monotonic()
        if not self.headers_done.done():
            self._raw += data
            end = self._raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = bytes(self._raw[:end]), bytes(self._raw[end + 4 :])
            self._raw.clear()
            self._parse_head(head)
            self.headers_done.set_result(None)
            data = rest
            if self.state.status != 200 and not data:
                asyncio.get_running_loop().call_later(1.0, self._refuse)
            if not data:
                return
        if self.state.status != 200:
            self._error_body = (self._error_body + data)[:300]
            self._refuse()
            return
        if not self._chunked:
            self._feed(data)
            return
        self._raw += data
        self._dechunk()

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            self.state.status = int(parts[1])
        except (IndexError, ValueError):
            self.state.status = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True

    def _dechunk(self) -> None:
        raw = self._raw
        while raw:
            if self._chunk_left < 0:
                eol = raw.find(b"\r\n")
                if eol < 0:
                    return
                size = int(bytes(raw[:eol]).split(b";")[0] or b"0", 16)
                del raw[: eol + 2]
                if size == 0:
                    self._close_self()
                    return
                self._chunk_left = size
            if len(raw) < self._chunk_left + 2:
                return
            payload = bytes(raw[: self._chunk_left])
            del raw[: self._chunk_left + 2]
            self._chunk_left = -1
            self._feed(payload)
            if self.state.closed:
                return

    def _feed(self, payload: bytes) -> None:
        pending = self._pending + payload
        if b"\r" in pending:
            pending = pending.replace(b"\r\n", b"\n")
        while True:
            end = pending.find(b"\n\n")
            if end < 0:
                break
            block, pending = pending[:end], pending[end + 2 :]
            if self._message(block):
                self.state.terminal = True
                self._close_self()
                return
        self._pending = pending

    def _message(self, block: bytes) -> bool:
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
        if not data:
            return False  # comment (heartbeat), retry:, or id/event alone
        return self.on_data(self.state, b"\n".join(data), time.time())

    def _refuse(self) -> None:
        if self.state.error is None:
            body = self._error_body.decode(errors="replace").strip()
            self.state.error = f"HTTP {self.state.status}: {body[:200]}"
        self._close_self()

    def _close_self(self) -> None:
        self.state.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Record why a stream ended without its terminal event."""
        state = self.state
        state.closed = True
        if not state.terminal and state.error is None:
            if state.status not in (None, 200):
                body = self._error_body.decode(errors="replace").strip()
                state.error = f"HTTP {state.status}: {body[:200]}"
            elif exc is not None:
                state.error = f"connection lost: {type(exc).__name__}"
            else:
                state.error = "closed before the terminal event"
        if not self.headers_done.done():
            self.headers_done.set_result(None)
        if not self.finished.done():
            self.finished.set_result(None)

    def abort(self, reason: str) -> None:
        """End the stream from our side, recording ``reason`` (idle, deadline)."""
        if self.state.error is None and not self.state.terminal:
            self.state.error = reason
        if self.transport is not None:
            self.transport.abort()


def request_bytes(host: str, port: int, path: str) -> bytes:
    """The GET request of a stream."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\nUser-Agent: bench-load\r\n\r\n"
    ).encode()
