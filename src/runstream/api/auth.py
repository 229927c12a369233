"""Who is calling: API keys or JWTs, mapped to a principal that owns runs.

``Authorization: Bearer <token>`` everywhere; the stream endpoint also takes
``?token=`` because a browser's EventSource cannot set headers. With neither API keys
nor a JWT secret configured, auth is off and every caller is the ``anonymous``
principal (the CLI then refuses to bind anything but loopback).
"""

from __future__ import annotations

import hmac

import jwt

from runstream.api.errors import ApiError
from runstream.config import Settings

ANONYMOUS = "anonymous"


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Authorization must be 'Bearer <token>'")
    return token.strip()


def principal_for(settings: Settings, token: str | None) -> str:
    """The principal a token stands for; raises a 401 ApiError when it stands for none."""
    if not settings.auth_enabled:
        return ANONYMOUS
    if token is None:
        raise _unauthorized("missing credentials: send Authorization: Bearer <token>")
    for key, principal in settings.api_keys.items():
        if hmac.compare_digest(key.encode(), token.encode()):
            return principal
    if settings.jwt_secret:
        return _principal_from_jwt(settings.jwt_secret, token)
    raise _unauthorized("invalid credentials")


def _principal_from_jwt(secret: str, token: str) -> str:
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256", "HS384", "HS512"], options={"require": ["sub"]}
        )
    except jwt.PyJWTError as exc:
        raise _unauthorized(f"invalid token: {exc}") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise _unauthorized("invalid token: 'sub' must be a non-empty string")
    return subject
