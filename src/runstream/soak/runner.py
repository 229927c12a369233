"""A whole soak: baseline, load, settle, then the report and the chart.

Three phases, CLIENT LIST sampled all along:

1. *baseline*: the connections every process holds at rest, once two samples in a row
   agree;
2. *load*: the virtual clients (:mod:`runstream.soak.driver`) for ``--duration``;
3. *settle*: up to ``--settle`` seconds for every ``role:instance`` to hold exactly its
   baseline again.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import httpx

from runstream.client.errors import ClientError
from runstream.client.http import (
    REQUEST_TIMEOUT_S,
    STREAM_READ_TIMEOUT_S,
    api_error,
    transport_errors,
)
from runstream.concurrency import cancel_and_wait, collapse_excgroups
from runstream.config import redact_url
from runstream.soak.chart import CHART_NAME, write_chart
from runstream.soak.connections import Sample, Sampler, open_admin
from runstream.soak.driver import drive
from runstream.soak.progress import Display
from runstream.soak.report import Verdict, build_report, judge, write_report
from runstream.soak.scenarios import DEFAULT_RUN_TIMEOUT_S, Context
from runstream.soak.state import SoakState

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from rich.console import Console

    from runstream.soak.mix import Mix

SETTLED_SAMPLES: Final = 2
"""Samples in a row that must equal the baseline for the system to count as back."""

BASELINE_TIMEOUT_S: Final = 10.0
"""Longest wait for two agreeing samples before the load; the last one is used then."""


@dataclass(frozen=True, slots=True)
class SoakSettings:
    """What ``runstream soak`` was asked to do."""

    api_url: str
    token: str | None = field(repr=False)
    redis_url: str = field(repr=False)
    duration: float
    concurrency: int
    mix: Mix
    seed: int
    sample_interval: float
    settle: float
    out: Path
    run_timeout: float = DEFAULT_RUN_TIMEOUT_S

    def to_json(self) -> dict[str, Any]:
        """The settings as the report records them (no token, no Redis password)."""
        return {
            "api_url": self.api_url,
            "redis_url": redact_url(self.redis_url),
            "duration_s": self.duration,
            "concurrency": self.concurrency,
            "mix": {s.value: round(f, 6) for s, f in self.mix.fractions.items()},
            "sample_interval_s": self.sample_interval,
            "settle_s": self.settle,
            "run_timeout_s": self.run_timeout,
            "out": str(self.out),
        }


@dataclass(frozen=True, slots=True)
class SoakResult:
    """The verdict and where the report and chart were written."""

    verdict: Verdict
    report_path: Path
    chart_path: Path
    report: dict[str, Any]


async def run_soak(settings: SoakSettings, console: Console, stop: asyncio.Event) -> SoakResult:
    """Run the soak against the system and write its report; ``stop`` ends the load early.

    ClientError (exit 2 or 1) when the soak cannot start: a malformed URL, Redis or the API
    unreachable, no CLIENT LIST sample. What the system does under load is never an
    exception here: it is the verdict.
    """
    loop = asyncio.get_running_loop()
    started, started_at = loop.time(), datetime.now(UTC)
    state = SoakState()
    async with (
        open_admin(settings.redis_url) as admin,
        open_api(settings.api_url, settings.token, settings.concurrency) as client,
    ):
        await check_api(client)
        sampler = Sampler(admin, interval=settings.sample_interval, started=started)
        display = Display(
            console,
            state,
            sampler,
            duration=settings.duration,
            settle=settings.settle,
            started=started,
        )
        ctx = Context(
            client=client,
            admin=admin,
            state=state,
            started=started,
            run_timeout=settings.run_timeout,
        )
        with collapse_excgroups():  # a ClientError of the body comes out as itself
            async with asyncio.TaskGroup() as tg:
                sampling = tg.create_task(sampler.run(), name="runstream-soak-sampler")
                showing = tg.create_task(display.run(), name="runstream-soak-display")
                try:
                    baseline = await _phases(settings, ctx, sampler, stop)
                finally:
                    # The sampler may be inside a redis-py command, where Python 3.11 can
                    # lose a cancellation: cancel until it is really done.
                    await cancel_and_wait(sampling)
                    await cancel_and_wait(showing)
    last = sampler.latest or baseline
    verdict = judge(state, baseline, last)
    report = build_report(
        settings=settings,
        started_at=started_at,
        baseline=baseline,
        sampler=sampler,
        state=state,
        verdict=verdict,
    )
    report_path = write_report(settings.out, report)
    title = f"runstream soak: {settings.concurrency} clients, {settings.duration:g} s, " + (
        "passed" if verdict.passed else "FAILED"
    )
    chart_path = await asyncio.to_thread(
        write_chart, settings.out / CHART_NAME, sampler.samples, baseline, state, title
    )
    return SoakResult(verdict, report_path, chart_path, report)


async def _phases(
    settings: SoakSettings, ctx: Context, sampler: Sampler, stop: asyncio.Event
) -> Sample:
    """Baseline, load, settle (the state records each); the baseline sample."""
    state = ctx.state
    baseline = await take_baseline(sampler)
    state.phase = sampler.phase = "load"
    state.load_started = ctx.now()
    state.load_deadline = state.load_started + settings.duration
    await drive(
        ctx,
        settings.mix,
        concurrency=settings.concurrency,
        duration=settings.duration,
        seed=settings.seed,
        stop=stop,
    )
    state.load_ended = ctx.now()
    state.ended_early = stop.is_set()
    state.phase = sampler.phase = "settle"
    state.settled_after = await settle(sampler, baseline, settings.settle)
    state.phase = "done"
    state.ended = ctx.now()
    return baseline


@asynccontextmanager
async def open_api(
    api_url: str, token: str | None, concurrency: int
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the API sized for the load: each virtual client may hold a stream
    and a request (a stop) at once; beyond the pool, clients would queue in httpx and the
    soak would measure its own pool instead of the system."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=STREAM_READ_TIMEOUT_S)
    size = 2 * concurrency + 4
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with httpx.AsyncClient(
        base_url=api_url, headers=headers, timeout=timeout, limits=limits
    ) as client:
        yield client


async def check_api(client: httpx.AsyncClient) -> None:
    """``GET /healthz`` must answer 200 before any load; ClientError otherwise."""
    with transport_errors(client):
        response = await client.get("/healthz")
    if response.status_code != 200:
        url = str(client.base_url).rstrip("/")
        raise ClientError(f"the API at {url} is not healthy: {api_error(response)}")


async def take_baseline(sampler: Sampler) -> Sample:
    """The connections at rest: the first sample equal to the one before it.

    A process may be trimming a pool or reconnecting when the soak starts; two agreeing
    samples in a row say it is not. After :data:`BASELINE_TIMEOUT_S` the latest is used.
    """
    previous: Sample | None = None
    try:
        async with asyncio.timeout(BASELINE_TIMEOUT_S):
            while True:
                sample = await sampler.next_sample()
                if previous is not None and sample.processes == previous.processes:
                    return sample
                previous = sample
    except TimeoutError:
        if previous is not None:
            return previous
        raise ClientError(
            f"could not sample CLIENT LIST within {BASELINE_TIMEOUT_S:g} s: "
            f"{sampler.last_failure or 'no answer'}"
        ) from None


async def settle(sampler: Sampler, baseline: Sample, timeout: float) -> float | None:
    """Wait up to ``timeout`` seconds for the counts per ``role:instance`` to equal the
    baseline's in :data:`SETTLED_SAMPLES` samples in a row; the seconds until the first
    of them, or None when they never did.

    One matching sample could be a count passing through the baseline on its way
    elsewhere (a pool trimming while a reconnect opens another); back means staying.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    matched_at: float | None = None
    streak = 0
    try:
        async with asyncio.timeout(timeout):
            while streak < SETTLED_SAMPLES:
                sample = await sampler.next_sample()
                if sample.totals != baseline.totals:
                    streak, matched_at = 0, None
                    continue
                streak += 1
                if matched_at is None:
                    matched_at = loop.time() - began
    except TimeoutError:
        return None
    return matched_at
