"""A minimal async RESP client for the sampler: ``CLIENT LIST`` on a 15,000-client server
is megabytes per call, so it is fetched raw and only the names are extracted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from types import TracebackType

_NAME = re.compile(rb"(?:^| )name=(\S*)", re.MULTILINE)


def _command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RawRedis:
    """One connection; each call sends one command and reads one reply."""

    def __init__(self, host: str, port: int, name: str) -> None:
        self.host, self.port, self.name = host, port, name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> RawRedis:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 26
        )
        await self.call("CLIENT", "SETNAME", self.name)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def call(self, *parts: str) -> bytes | int | None:
        """Send a command; return a bulk/simple string as bytes, an integer, or None."""
        async with self._lock:
            return await self._call(parts)

    async def _call(self, parts: tuple[str, ...]) -> bytes | int | None:
        assert self._reader is not None and self._writer is not None
        self._writer.write(_command(*parts))
        await self._writer.drain()
        line = await self._reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return (await self._reader.readexactly(size + 2))[:-2]
        if kind == b"+":
            return rest
        if kind == b":":
            return int(rest)
        if kind == b"-":
            raise RuntimeError(rest.decode(errors="replace"))
        raise RuntimeError(f"unexpected reply {line[:80]!r}")

    async def client_names(self) -> Counter[str]:
        """Connections by CLIENT SETNAME (``""`` for unnamed), this one left out."""
        reply = await self.call("CLIENT", "LIST")
        assert isinstance(reply, bytes)
        counts = Counter(name.decode() for name in _NAME.findall(reply))
        counts[self.name] -= 1
        if counts[self.name] <= 0:
            del counts[self.name]
        return counts
