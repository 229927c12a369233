"""Who is calling: API keys or JWTs, mapped to a principal that owns runs.

``Authorization: Bearer <token>`` everywhere; the stream endpoint also takes
``?token=`` because a browser's EventSource cannot set headers. With neither API keys
nor a JWT secret configured, auth is off and every caller is the ``anonymous``
principal (the CLI then refuses to bind anything but loopback).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from runstream.api.errors import ApiError
from runstream.api.signing import sign, signing_key, unsign
from runstream.config import Settings

ANONYMOUS = "anonymous"
_TICKET = "ticket"


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
        return _principal_from_jwt(settings, settings.jwt_secret, token)
    raise _unauthorized("invalid credentials")


def authenticated(settings: Settings, token: str | None) -> bool:
    """Whether ``token`` stands for a principal (False with auth off: nobody is known)."""
    if not settings.auth_enabled or token is None:
        return False
    try:
        principal_for(settings, token)
    except ApiError:
        return False
    return True


def _principal_from_jwt(settings: Settings, secret: str, token: str) -> str:
    # A token without an expiry would be valid forever; audience and issuer are checked
    # whenever the operator named them (PyJWT skips each check when given None).
    required = ["sub", "exp"]
    required += ["aud"] if settings.jwt_audience else []
    required += ["iss"] if settings.jwt_issuer else []
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256", "HS384", "HS512"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": required},
        )
    except jwt.PyJWTError as exc:
        raise _unauthorized(f"invalid token: {exc}") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise _unauthorized("invalid token: 'sub' must be a non-empty string")
    return subject


@dataclass(frozen=True, slots=True)
class Ticket:
    """A short-lived credential for one run's stream, for a browser's EventSource URL."""

    ticket: str
    expires_at: datetime


def issue_ticket(settings: Settings, principal: str, run_id: str) -> Ticket:
    """A ticket that lets ``GET /runs/{run_id}/stream`` act as ``principal`` for
    ``RUNSTREAM_TICKET_TTL_S`` seconds (checked by every API process of the deployment)."""
    expires = int(time.time()) + settings.ticket_ttl_s
    text = sign(signing_key(settings, _TICKET), [run_id, principal, expires])
    return Ticket(text, datetime.fromtimestamp(expires, UTC))


def principal_for_ticket(settings: Settings, ticket: str, run_id: str) -> str:
    """The principal a ticket was issued to; 401 when it is forged, expired or for
    another run."""
    try:
        ticket_run, principal, expires = unsign(signing_key(settings, _TICKET), ticket)
    except (ValueError, TypeError):
        raise _unauthorized("invalid ticket") from None
    if not isinstance(principal, str) or not isinstance(expires, int) or ticket_run != run_id:
        raise _unauthorized("invalid ticket: not one for this run")
    if expires <= time.time():
        raise _unauthorized("ticket expired: ask for a new one (POST /runs/{id}/ticket)")
    return principal
