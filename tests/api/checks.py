"""Assertions shared by the API tests."""

from __future__ import annotations

import httpx


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """``response`` has ``status`` and the one error shape (with ``code``, if given)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
