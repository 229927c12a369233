"""A TCP proxy in front of the API that misbehaves on purpose: it cuts every connection
after a number of response bytes, and can answer the first connections 503 itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

_BODY = b'{"error":{"code":"unavailable","message":"proxy says: later!"}}'


def unavailable(retry_after: int | None) -> bytes:
    """The proxy's own 503, with ``Retry-After`` when given."""
    header = b"" if retry_after is None else b"retry-after: %d\r\n" % retry_after
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n%s"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (header, len(_BODY), _BODY)
    )


@dataclass
class CuttingProxy:
    upstream_port: int
    cut_after_bytes: int
    refuse_first: int = 0
    retry_after: int | None = None
    connections: int = 0
    cuts: int = 0
    url: str = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections <= self.refuse_first:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(unavailable(self.retry_after))
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            sent = 0
            while data := await up_reader.read(256):
                writer.write(data)
                await writer.drain()
                sent += len(data)
                if sent >= self.cut_after_bytes:
                    self.cuts += 1
                    return

        try:
            async with asyncio.TaskGroup() as tg:
                up = tg.create_task(upstream())
                await downstream()
                up.cancel()
        except* (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()


@contextlib.asynccontextmanager
async def cutting_proxy(
    upstream_url: str,
    *,
    cut_after_bytes: int,
    refuse_first: int = 0,
    retry_after: int | None = None,
) -> AsyncIterator[CuttingProxy]:
    port = int(upstream_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after_bytes, refuse_first, retry_after)
    server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    proxy.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield proxy
        server.close()
