"""The API fuzzed from its own OpenAPI document (schemathesis): no request, however odd,
gets a 5xx, an answer outside the error shape, or a hang.

Run ids and agent names are bound to real values most of the time, so the fuzzer gets
past the 404 and 422 checks and into the handlers. Bounded: a fixed number of examples
per operation, derandomized so a failure reproduces, each request under a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.api.streaming import read_stream, start
from tests.system import Api

EXAMPLES = 40
REQUEST_TIMEOUT_S = 15


@pytest.fixture
def system_overrides() -> dict[str, Any]:
    # Whatever the fuzzer starts stays small and short.
    return {"max_run_events": 200, "max_run_bytes": 65536, "max_run_s": 3.0}


pytestmark = pytest.mark.usefixtures("worker")


def fuzz(schema: Any, base_url: str, run_ids: list[str]) -> tuple[list[str], int]:
    """Every operation's examples, valid and invalid by its schema, against the running
    API; what went wrong, if anything, and how many requests were sent."""
    problems: list[str] = []
    sent = 0
    run_id = st.sampled_from([*run_ids, "not-a-uuid", str(uuid.uuid4())])
    agent = st.sampled_from(["echo", "scripted", "no-such-agent"])
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation, mode in itertools.product(operations, GenerationMode):

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(generation_mode=mode),
            real_id=run_id,
            real_agent=agent,
            bind=st.sampled_from([True, True, True, False]),
        )
        def check(case: Any, real_id: str, real_agent: str, bind: bool) -> None:
            nonlocal sent
            if bind:  # past the 404, the unknown agent and the malformed credentials
                if "run_id" in (case.path_parameters or {}):
                    case.path_parameters["run_id"] = real_id
                if isinstance(case.body, dict) and "agent" in case.body:
                    case.body["agent"] = real_agent
                if case.headers:
                    case.headers.pop("authorization", None)
            sent += 1
            try:
                response = case.call(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
            except requests.Timeout:
                problems.append(f"{case.method} {case.formatted_path}: no answer (hang)")
                return
            except (requests.exceptions.InvalidHeader, ValueError, UnicodeError):
                return  # the client library itself refused to send it
            problem = judge(response)
            if problem:
                problems.append(f"{case.method} {case.formatted_path}: {problem}")

        try:
            check()
        except Unsatisfiable:
            # Nothing in this operation can be made invalid (no parameters, no body).
            assert mode is GenerationMode.NEGATIVE, operation.label
    return problems, sent


def judge(response: requests.Response) -> str | None:
    if response.status_code >= 500:
        return f"{response.status_code} {response.text[:200]}"
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            return f"{response.status_code} is not JSON: {response.text[:200]}"
        if not (isinstance(body, dict) and set(body) == {"error"}):
            return f"{response.status_code} outside the error shape: {response.text[:200]}"
    return None


async def test_the_openapi_document_and_its_pages_are_served(client: httpx.AsyncClient) -> None:
    document = await client.get("/openapi.json")
    assert document.status_code == 200
    assert "/runs/{run_id}/stream" in document.json()["paths"]
    assert (await client.get("/docs")).status_code == 200


async def test_fuzzed_requests_never_get_a_5xx_nor_hang(
    api: Api, client: httpx.AsyncClient
) -> None:
    run_ids = [
        await start(client, "echo", text="fuzz me"),
        await start(client, "scripted", count=3),
    ]
    for run_id in run_ids:
        await read_stream(client, run_id)  # finished: their streams replay and close
    app: FastAPI = api.server.config.app  # type: ignore[assignment]
    schema = schemathesis.openapi.from_dict(app.openapi())
    problems, sent = await asyncio.to_thread(fuzz, schema, api.url, run_ids)
    assert problems == []
    assert sent >= 8 * EXAMPLES  # every operation was exercised, valid and invalid


async def test_the_openapi_document_tells_the_truth(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    text = str(document)
    assert "HTTPValidationError" not in text and "'detail'" not in text
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"bearer", "token", "ticket"}
    paths = document["paths"]
    create = paths["/runs"]["post"]
    assert create["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunOut"
    }
    for status in ("401", "413", "422", "429", "503"):
        schema = create["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert set(paths["/runs/{run_id}/stop"]["post"]["responses"]) >= {"202", "401", "404", "409"}
    stream = paths["/runs/{run_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert "204" in stream["responses"] and "429" in stream["responses"]
    assert {"ticket": []} in stream["security"]
    assert paths["/healthz"]["get"]["security"] == []
    assert paths["/runs/{run_id}"]["get"]["security"] == [{"bearer": []}]
    run_fields = document["components"]["schemas"]["RunOut"]["properties"]
    assert {"id", "status", "last_seq", "input", "created_at"} <= set(run_fields)
