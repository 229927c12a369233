"""Credentials: stream tickets, JWT claims, what /healthz and the access log reveal, and
the Host check that keeps an unauthenticated API to this machine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import jwt
import pytest

from runstream.config import load_settings
from runstream.errors import ConfigError
from runstream.logs import RedactCredentials, redact_query
from tests.api.checks import assert_error
from tests.api.streaming import start
from tests.system import Api, make_settings, running_api, running_worker

KEY = "alice-key-0123456789"
SECRET = "a-jwt-secret-of-at-least-32-bytes!"


@pytest.fixture
async def secured(redis_url: str, sqlite_url: str) -> AsyncIterator[Api]:
    overrides = {
        "api_keys": f"{KEY}=alice",
        "jwt_secret": SECRET,
        "jwt_audience": "runstream",
        "jwt_issuer": "https://issuer.test",
        "ticket_ttl_s": 2,
    }
    async with (
        running_api(make_settings(redis_url, sqlite_url, **overrides)) as api,
        running_worker(make_settings(redis_url, sqlite_url, instance="wk-cred", **overrides)),
    ):
        yield api


async def stream_status(client: httpx.AsyncClient, path: str, **params: str) -> int:
    async with client.stream("GET", path, params=params) as response:
        await response.aread()
        return response.status_code


async def test_a_ticket_opens_that_runs_stream_only_and_expires(secured: Api) -> None:
    async with secured.client(KEY) as alice, secured.client() as browser:
        run_id = await start(alice, "echo", text="a b")
        other_id = await start(alice, "echo", text="c")
        issued = await alice.post(f"/runs/{run_id}/ticket")
        assert issued.status_code == 200
        ticket = issued.json()["ticket"]
        expires_at = datetime.fromisoformat(issued.json()["expires_at"])
        assert await stream_status(browser, f"/runs/{run_id}/stream", ticket=ticket) == 200
        for_other = await browser.get(f"/runs/{other_id}/stream", params={"ticket": ticket})
        assert_error(for_other, 401, "unauthorized")
        assert_error(await browser.get(f"/runs/{run_id}", params={"ticket": ticket}), 401)
        assert_error(await browser.post(f"/runs/{run_id}/ticket"), 401)
        forged = ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB")
        assert_error(await browser.get(f"/runs/{run_id}/stream", params={"ticket": forged}), 401)
        while time.time() <= expires_at.timestamp():  # a condition: the ticket's own expiry
            await asyncio.sleep(0.1)
        expired = await browser.get(f"/runs/{run_id}/stream", params={"ticket": ticket})
        assert_error(expired, 401, "unauthorized")
        assert "expired" in expired.json()["error"]["message"]
        # ?token= keeps working
        assert await stream_status(browser, f"/runs/{run_id}/stream", token=KEY) == 200


async def test_a_ticket_is_only_issued_for_the_callers_run(secured: Api) -> None:
    async with secured.client(KEY) as alice:
        unknown = "00000000-0000-4000-8000-000000000000"
        assert_error(await alice.post(f"/runs/{unknown}/ticket"), 404, "not_found")


def token(**claims: object) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_jwts_must_carry_exp_and_the_configured_audience_and_issuer(secured: Api) -> None:
    soon = int(time.time()) + 600
    good = {"sub": "bob", "exp": soon, "aud": "runstream", "iss": "https://issuer.test"}
    async with secured.client(token(**good)) as bob:
        assert (await bob.get("/runs")).status_code == 200
    no_exp = {k: v for k, v in good.items() if k != "exp"}
    bad_claims = [
        no_exp,
        {**good, "exp": int(time.time()) - 10},
        {**good, "aud": "someone-else"},
        {k: v for k, v in good.items() if k != "aud"},
        {**good, "iss": "https://evil.test"},
    ]
    for claims in bad_claims:
        async with secured.client(token(**claims)) as caller:
            assert_error(await caller.get("/runs"), 401, "unauthorized")


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"jwt_secret": "x"}, "RUNSTREAM_JWT_SECRET"),
        ({"jwt_secret": "31-bytes-is-one-byte-too-short"}, "RUNSTREAM_JWT_SECRET"),
        ({"api_keys": "short=alice"}, "RUNSTREAM_API_KEYS"),
    ],
)
def test_weak_secrets_stop_the_process_at_start(overrides: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        load_settings(**overrides)


def test_an_api_key_may_contain_equals_signs() -> None:
    settings = load_settings(api_keys="abc=def=ghi=jklmnop==alice, other-key-0123456789=bob")
    assert settings.api_keys == {"abc=def=ghi=jklmnop=": "alice", "other-key-0123456789": "bob"}


async def test_anonymous_healthz_shows_statuses_only(secured: Api, redis_url: str) -> None:
    async with secured.client() as anonymous, secured.client(KEY) as alice:
        seen = (await anonymous.get("/healthz")).json()
        assert seen == {
            "status": "ok",
            "checks": {"redis": "ok", "pubsub": "ok", "database": "ok"},
        }
        assert (await alice.get("/healthz")).json() == seen


def test_the_access_log_never_holds_a_token_or_a_ticket() -> None:
    assert redact_query("/runs/x/stream?token=secret&after=3") == "/runs/x/stream?token=***&after=3"
    assert (
        redact_query("/runs/x/stream?after=3&TICKET=abc.def") == "/runs/x/stream?after=3&TICKET=***"
    )
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/runs/x/stream?token=k3y-k3y-k3y-k3y", "1.1", 200),
        None,
    )
    assert RedactCredentials().filter(record)
    assert "k3y" not in record.getMessage() and "token=***" in record.getMessage()


async def test_the_served_access_log_redacts_the_token(
    secured: Api, caplog: pytest.LogCaptureFixture
) -> None:
    async with secured.client(KEY) as alice, secured.client() as browser:
        run_id = await start(alice, "echo", text="a")
        with caplog.at_level(logging.INFO, logger="uvicorn.access"):
            logging.getLogger("uvicorn.access").disabled = False
            assert await stream_status(browser, f"/runs/{run_id}/stream", token=KEY) == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("token=***" in line for line in lines), lines
    assert not any(KEY in line for line in lines)


@pytest.mark.usefixtures("worker")
async def test_without_auth_only_loopback_host_names_are_served(
    client: httpx.AsyncClient,
) -> None:
    for host in ("evil.example", "evil.example:80", "10.0.0.1", "localhost.evil.example"):
        response = await client.get("/runs", headers={"Host": host})
        assert_error(response, 400, "invalid_host")
    for host in ("localhost", "127.0.0.1:8000", "[::1]:8000", "app.localhost"):
        assert (await client.get("/runs", headers={"Host": host})).status_code == 200


async def test_cors_lets_the_configured_origins_call_and_stream(
    redis_url: str, sqlite_url: str
) -> None:
    settings = make_settings(
        redis_url, sqlite_url, instance="api-cors", cors_origins="https://app.example.com"
    )
    async with running_api(settings) as api, api.client() as client:
        preflight = await client.options(
            "/runs",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, idempotency-key, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"authorization", "last-event-id", "idempotency-key", "content-type"} <= {
            h.strip() for h in allowed.split(",")
        }
        created = await client.post(
            "/runs",
            json={"agent": "echo", "input": {"text": "x"}},
            headers={"Origin": "https://app.example.com"},
        )
        assert created.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "location" in created.headers["access-control-expose-headers"].lower()
        other = await client.get("/runs", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_a_bad_cors_origin_stops_the_process_at_start() -> None:
    with pytest.raises(ConfigError, match="RUNSTREAM_CORS_ORIGINS"):
        load_settings(cors_origins="app.example.com")


async def test_an_unauthenticated_stream_is_told_how_to_authenticate(secured: Api) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    async with secured.client() as client:
        refused = await client.get(f"/runs/{unknown}/stream")
        assert_error(refused, 401, "unauthorized")
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = await client.get(f"/runs/{unknown}/stream", params={"token": "nope"})
        assert_error(wrong, 401, "unauthorized")
        known = await client.get(f"/runs/{unknown}/stream", params={"token": KEY})
        assert_error(known, 404, "not_found")
