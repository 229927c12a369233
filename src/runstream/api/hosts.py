"""Which ``Host`` an API without authentication answers: loopback names only.

With auth off the API trusts whoever can reach it, which must be this machine alone.
Binding loopback is not enough: a web page can point a DNS name of its own at 127.0.0.1
(DNS rebinding) and then talk to the API as a same-origin site. Refusing every ``Host``
that is not a loopback name closes that door.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Final

from runstream.api.errors import send_error

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) stands for this machine only."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8000`` gives ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class LoopbackHostsOnly:
    """Answer 400 in the error shape to a request whose ``Host`` is not a loopback name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not is_loopback(host_name(header)):
                await _refuse(send)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send) -> None:
    message = "with authentication off only loopback host names are served (Host header)"
    await send_error(send, 400, "invalid_host", message)
