"""The page at /ui/, in a real headless Chromium (Debian's package, driven by Playwright)
against a running API and worker: it lists runs, starts one and follows it live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.system import Api, make_settings, running_api, running_worker

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.async_api", reason="Playwright is not installed")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"
)

KEY = "ui-test-key-0123456789"
AGENTS = "mixed_types=tests.worker.sample_agents:mixed_types"


@pytest.fixture
async def system(redis_url: str, sqlite_url: str) -> AsyncIterator[Api]:
    # Streams rotate every second and tickets last one: a page that follows a run for
    # longer has to reconnect, with a fresh ticket, and lose nothing.
    overrides = {
        "api_keys": f"{KEY}=alice",
        "agents": AGENTS,
        "stream_max_s": 1.0,
        "ticket_ttl_s": 1,
    }
    async with (
        running_api(make_settings(redis_url, sqlite_url, instance="api-ui", **overrides)) as api,
        running_worker(make_settings(redis_url, sqlite_url, instance="wk-ui", **overrides)),
    ):
        yield api


@pytest.fixture
async def page(system: Api) -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            # The page's CSP forbids eval, which Playwright's waits use; the policy itself
            # is checked on its headers below.
            page = await browser.new_page(bypass_csp=True)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{system.url}/ui/")
            await page.fill("#token", KEY)
            await page.press("#token", "Tab")  # "change": the page loads agents and runs
            await page.wait_for_selector("#agent option[value=echo]", state="attached")
            yield page
            assert errors == []
        finally:
            await browser.close()


async def events_shown(page: object) -> list[str]:
    return await page.eval_on_selector_all("#events li", "items => items.map(i => i.textContent)")  # type: ignore[attr-defined, no-any-return]


async def test_the_page_starts_a_run_and_follows_it_live(page: object, system: Api) -> None:
    await page.select_option("#agent", "echo")  # type: ignore[attr-defined]
    await page.fill("#input", '{"text": "one two three four five", "interval_ms": 150}')  # type: ignore[attr-defined]
    await page.click("#start-button")  # type: ignore[attr-defined]
    # Live: some tokens are on the page while the run still goes on.
    await page.wait_for_function(  # type: ignore[attr-defined]
        "document.querySelectorAll('#events li').length >= 3"
        " && document.getElementById('run-status').textContent === 'running'",
        timeout=15_000,
    )
    await page.wait_for_function(  # type: ignore[attr-defined]
        "document.getElementById('run-status').textContent === 'completed'", timeout=15_000
    )
    shown = await events_shown(page)
    assert shown == [
        "1 status running",
        "2 token one",
        "3 token two",
        "4 token three",
        "5 token four",
        "6 token five",
        "7 status completed",
    ]
    run_id = await page.text_content("#run-id")  # type: ignore[attr-defined]
    async with system.client(KEY) as client:
        assert (await client.get(f"/runs/{run_id}")).json()["status"] == "completed"
    await page.wait_for_selector(f"tr[data-run-id='{run_id}'] .status-completed")  # type: ignore[attr-defined]


async def test_the_page_shows_every_event_type_as_text(page: object) -> None:
    await page.select_option("#agent", "mixed_types")  # type: ignore[attr-defined]
    await page.fill("#input", "{}")  # type: ignore[attr-defined]
    await page.click("#start-button")  # type: ignore[attr-defined]
    await page.wait_for_function(  # type: ignore[attr-defined]
        "document.getElementById('run-status').textContent === 'completed'", timeout=15_000
    )
    shown = await events_shown(page)
    assert [line.split(" ", 2)[1] for line in shown] == [
        "status",
        "thought",
        "token",
        "tool_call",
        "token",
        "status",
    ]
    assert "<img src=x onerror=alert(1)>" in shown[2]
    assert await page.query_selector("#events img") is None  # type: ignore[attr-defined]


async def test_a_bad_key_is_reported_on_the_page(page: object) -> None:
    await page.fill("#token", "wrong-key-0123456789")  # type: ignore[attr-defined]
    await page.press("#token", "Tab")  # type: ignore[attr-defined]
    await page.wait_for_function(  # type: ignore[attr-defined]
        "document.getElementById('runs-error').textContent.includes('unauthorized')"
    )


async def test_the_page_is_served_with_a_strict_content_security_policy(system: Api) -> None:
    async with httpx.AsyncClient(base_url=system.url) as client:
        page = await client.get("/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert (await client.get("/ui", follow_redirects=True)).url.path == "/ui/"
        assert (await client.get("/ui/nope.js")).status_code == 404


async def test_the_page_follows_a_run_across_rotations_and_expired_tickets(page: object) -> None:
    words = " ".join(f"w{n}" for n in range(1, 9))
    await page.select_option("#agent", "echo")  # type: ignore[attr-defined]
    await page.fill("#input", f'{{"text": "{words}", "interval_ms": 450}}')  # type: ignore[attr-defined]
    await page.click("#start-button")  # type: ignore[attr-defined]
    await page.wait_for_function(  # type: ignore[attr-defined]
        "document.getElementById('run-status').textContent === 'completed'", timeout=30_000
    )
    shown = await events_shown(page)
    assert shown == [
        "1 status running",
        *(f"{n + 1} token w{n}" for n in range(1, 9)),
        "10 status completed",
    ]
