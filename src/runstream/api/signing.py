"""Values the API hands out and must recognise again: list cursors and stream tickets.

Each is ``<base64url JSON>.<base64url HMAC-SHA256>``, signed with a key derived from the
deployment's credentials (the JWT secret and API keys), so every API process of one
deployment accepts what another issued, and nothing a client crafted is ever parsed
further than its signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any, Final

import orjson

from runstream.config import Settings

_SIGNATURE_BYTES: Final = 16


def signing_key(settings: Settings, purpose: str) -> bytes:
    """The key for ``purpose`` (``cursor``, ``ticket``), the same in every process of a
    deployment configured alike. With auth off there is no secret to derive from: the
    API then serves loopback only, where a forged cursor can harm nobody but its maker."""
    material = [purpose, settings.jwt_secret or "", *sorted(settings.api_keys)]
    return hashlib.sha256("\0".join(material).encode()).digest()


def sign(key: bytes, value: Any) -> str:
    """``value`` (JSON-serialisable) as a signed, URL-safe string."""
    payload = orjson.dumps(value)
    mac = hmac.digest(key, payload, "sha256")[:_SIGNATURE_BYTES]
    return f"{_b64(payload)}.{_b64(mac)}"


def unsign(key: bytes, text: str) -> Any:
    """The value :func:`sign` made ``text`` from; ValueError for anything else."""
    body, sep, mac = text.partition(".")
    if not sep:
        raise ValueError("not a signed value")
    try:
        payload, given = _unb64(body), _unb64(mac)
    except (binascii.Error, ValueError):
        raise ValueError("not a signed value") from None
    expected = hmac.digest(key, payload, "sha256")[:_SIGNATURE_BYTES]
    if not hmac.compare_digest(expected, given):
        raise ValueError("bad signature")
    return orjson.loads(payload)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
