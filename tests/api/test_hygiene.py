"""Hostile input: every body, cursor and header this API did not expect is a 4xx in the
error shape, stores nothing, and never breaks what the principal can read afterwards."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest
import structlog
from fastapi import FastAPI

from tests.api.checks import assert_error
from tests.api.streaming import read_stream, start
from tests.system import Api

pytestmark = pytest.mark.usefixtures("worker")


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def runs_of(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/runs", params={"limit": 100})
    assert response.status_code == 200, response.text
    runs: list[dict[str, Any]] = response.json()["runs"]
    return runs


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"metadata": nested(260)}, "metadata: nested deeper than 32 levels"),
        ({"metadata": {"blob": "x" * 17000}}, "RUNSTREAM_MAX_METADATA_BYTES=16384"),
        ({"metadata": {"k": "a\x00b"}}, "NUL"),
        ({"metadata": {"a\x00": 1}}, "NUL"),
        ({"thread_id": "t\x00"}, "NUL"),
        ({"metadata": {"n": 2**70}}, "metadata: integers must fit in 64 bits"),
        ({"input": {"text": "hi", "n": -(2**64)}}, "input: integers must fit in 64 bits"),
        ({"input": {"text": "hi", "deep": nested(40)}}, "input: nested deeper than 32"),
    ],
)
async def test_bad_metadata_and_input_are_422_and_store_nothing(
    client: httpx.AsyncClient, body: dict[str, Any], problem: str
) -> None:
    before = await runs_of(client)
    response = await client.post("/runs", json={"agent": "echo", "input": {"text": "hi"}, **body})
    assert_error(response, 422, "invalid_request")
    assert problem in response.json()["error"]["message"]
    assert await runs_of(client) == before


@pytest.mark.parametrize(
    "body",
    [
        rb'{"agent": "echo", "input": {"text": "hi", "\ud800": 1}}',
        rb'{"agent": "echo", "input": {"text": "hi"}, "metadata": {"k": "\udfff"}}',
    ],
)
async def test_lone_surrogates_are_422_and_store_nothing(
    client: httpx.AsyncClient, body: bytes
) -> None:
    before = await runs_of(client)
    response = await client.post(
        "/runs", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422, "invalid_request")
    assert "valid Unicode" in response.json()["error"]["message"]
    assert await runs_of(client) == before


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity"])
async def test_nan_and_infinity_are_422(client: httpx.AsyncClient, number: bytes) -> None:
    body = b'{"agent": "echo", "input": {"text": "hi"}, "metadata": {"x": %s}}' % number
    response = await client.post(
        "/runs", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422, "invalid_request")
    assert "NaN and Infinity" in response.json()["error"]["message"]


async def test_metadata_at_the_limits_is_stored_and_listed(client: httpx.AsyncClient) -> None:
    metadata = {"deep": nested(31), "blob": "x" * 15000}
    response = await client.post(
        "/runs", json={"agent": "echo", "input": {"text": "hi"}, "metadata": metadata}
    )
    assert response.status_code == 201, response.text
    assert (await runs_of(client))[0]["metadata"] == metadata


def _b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _b64(orjson.dumps(["2026-01-01T00:00:00", "3f0c8c8e-0000-4000-8000-000000000000"])),
        _b64(orjson.dumps([1, 2])),
        _b64(orjson.dumps(["9999-12-31T23:59:59+00:00", "3f0c8c8e-0000-4000-8000-000000000000"])),
        "not-a-cursor",
        "a.b",
        "é.é",
    ],
)
async def test_a_cursor_this_api_did_not_issue_is_422(
    client: httpx.AsyncClient, cursor: str
) -> None:
    assert_error(await client.get("/runs", params={"cursor": cursor}), 422)


async def test_a_tampered_cursor_is_422_and_a_real_one_pages(client: httpx.AsyncClient) -> None:
    for n in range(3):
        await start(client, "echo", text=f"run {n}")
    first = (await client.get("/runs", params={"limit": 2})).json()
    assert len(first["runs"]) == 2 and first["next"]
    second = (await client.get("/runs", params={"limit": 2, "cursor": first["next"]})).json()
    assert {r["id"] for r in second["runs"]}.isdisjoint({r["id"] for r in first["runs"]})
    _, _, mac = first["next"].partition(".")
    forged = _b64(orjson.dumps([0, first["runs"][0]["id"]])) + "." + mac
    assert_error(await client.get("/runs", params={"cursor": forged}), 422, "invalid_cursor")


async def test_cursors_above_2_63_are_422_and_an_empty_last_event_id_is_no_cursor(
    client: httpx.AsyncClient,
) -> None:
    run_id = await start(client, "echo", text="a b")
    path = f"/runs/{run_id}/stream"
    assert_error(await client.get(path, params={"after": 2**64}), 422)
    assert_error(await client.get(path, params={"after": -1}), 422)
    for header in (str(2**63), "-1", "abc", "1.5", "\u00b2".encode("latin-1")):
        assert_error(await client.get(path, headers={"Last-Event-ID": header}), 422)
    full = await read_stream(client, run_id)
    async with client.stream("GET", path, headers={"Last-Event-ID": ""}) as response:
        assert response.status_code == 200
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert body.count(b"\nevent: ") + body.startswith(b"event: ") == len(full)


async def test_a_resume_at_the_terminal_event_is_204(client: httpx.AsyncClient) -> None:
    run_id = await start(client, "echo", text="a b")
    full = await read_stream(client, run_id)
    last = int(full[-1]["id"])
    path = f"/runs/{run_id}/stream"
    assert (await client.get(path, headers={"Last-Event-ID": str(last)})).status_code == 204
    assert (await client.get(path, params={"after": last + 5})).status_code == 204
    assert await read_stream(client, run_id, last_event_id=last - 1) == full[-1:]


async def test_the_same_idempotency_key_with_another_body_is_422(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "key-1"}
    body = {"agent": "echo", "input": {"text": "one"}}
    first = await client.post("/runs", json=body, headers=headers)
    assert first.status_code == 201
    again = await client.post("/runs", json=body, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = {"agent": "echo", "input": {"text": "two"}}
    assert_error(
        await client.post("/runs", json=other, headers=headers), 422, "idempotency_mismatch"
    )
    headers2 = {"Idempotency-Key": "key-2"}
    one = {"agent": "echo", "input": {"text": "x"}, "metadata": {"flag": 1}}
    assert (await client.post("/runs", json=one, headers=headers2)).status_code == 201
    true = {**one, "metadata": {"flag": True}}
    assert_error(
        await client.post("/runs", json=true, headers=headers2), 422, "idempotency_mismatch"
    )
    with_metadata = {**body, "metadata": {"k": 1}}
    assert_error(
        await client.post("/runs", json=with_metadata, headers=headers), 422, "idempotency_mismatch"
    )


async def test_an_unexpected_error_is_a_json_500_whose_id_is_logged(
    api: Api, client: httpx.AsyncClient
) -> None:
    app: FastAPI = api.server.config.app  # type: ignore[assignment]

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/broken")
    assert_error(response, 500, "internal_error")
    logged = [entry for entry in logs if entry["event"] == "internal error"]
    assert len(logged) == 1 and logged[0]["error_id"] in response.json()["error"]["message"]
