"""``runstream soak``: load with fault injection against a running system, and a verdict.

The command line only: its options, their checks (one line and exit 2 when wrong),
signals and output. The soak itself is :mod:`runstream.soak`, imported when the
command runs so that ``runstream --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from runstream.cli.options import ApiUrlOption, TokenOption
from runstream.client.defaults import DEFAULT_API_URL
from runstream.client.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ClientError
from runstream.soak.mix import DEFAULT_MIX

if TYPE_CHECKING:
    from rich.console import Console

    from runstream.soak.runner import SoakResult, SoakSettings

MIN_SAMPLE_INTERVAL_S: Final = 0.05
_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


def soak(
    api_url: ApiUrlOption = DEFAULT_API_URL,
    token: TokenOption = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            envvar="RUNSTREAM_REDIS_URL",
            help="The system's Redis (required): CLIENT LIST is sampled there and "
            "pub/sub connections are killed there (every pub/sub client of that server).",
        ),
    ] = None,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of load.")] = 60.0,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Virtual clients, each one run at a time.")
    ] = 20,
    mix: Annotated[
        str,
        typer.Option(
            "--mix",
            help="Fraction of iterations per fault (disconnect, stop, fail, pubsub_kill); "
            "the rest are normal runs.",
        ),
    ] = DEFAULT_MIX,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of the scenario choices (default: random)."),
    ] = None,
    sample_interval: Annotated[
        float, typer.Option("--sample-interval", help="Seconds between CLIENT LIST samples.")
    ] = 0.5,
    settle: Annotated[
        float,
        typer.Option(
            "--settle",
            help="Seconds allowed after the load for the connections to return to baseline.",
        ),
    ] = 30.0,
    out: Annotated[
        Path, typer.Option("--out", help="Directory for report.json and connections.png.")
    ] = Path("soak-report"),
    run_timeout: Annotated[
        float,
        typer.Option(
            "--run-timeout",
            help="Seconds one run may take before it counts as never ended (a loss).",
        ),
    ] = 60.0,
) -> None:
    """Drive runs and streams with a fault mix; report connections over time and a verdict.

    Baseline (CLIENT LIST at rest), then `--concurrency` virtual clients for `--duration`
    seconds, each playing normal runs and faults (client disconnects and resumes, stops,
    failing agents, pub/sub connections killed) and checking every event arrives exactly
    once; then up to `--settle` seconds for each process to hold its baseline connections
    again. Writes report.json and connections.png into `--out`. Exit code 0 when back to
    baseline with no event lost and no error, 1 otherwise. Ctrl-C ends the load early
    (the report is still written); a second Ctrl-C leaves at once.
    """
    from runstream.cli.main import reported_errors
    from runstream.cli.output import consoles

    with reported_errors():
        settings = soak_settings(
            api_url=api_url,
            token=token,
            redis_url=redis_url,
            duration=duration,
            concurrency=concurrency,
            mix=mix,
            seed=seed,
            sample_interval=sample_interval,
            settle=settle,
            out=out,
            run_timeout=run_timeout,
        )
        console, _ = consoles()
        result = asyncio.run(_soak(settings, console))
        show_result(result, console)
    raise typer.Exit(EXIT_OK if result.verdict.passed else EXIT_FAILED)


def soak_settings(
    *,
    api_url: str,
    token: str | None,
    redis_url: str | None,
    duration: float,
    concurrency: int,
    mix: str,
    seed: int | None,
    sample_interval: float,
    settle: float,
    out: Path,
    run_timeout: float = 60.0,
) -> SoakSettings:
    """Check the options; ClientError (exit 2, one line) naming the first one that is wrong."""
    from runstream.soak.chart import check_plotting
    from runstream.soak.mix import parse_mix
    from runstream.soak.runner import SoakSettings

    check_plotting()
    if not redis_url:
        raise usage(
            "--redis-url (or RUNSTREAM_REDIS_URL) is required: the soak samples "
            "CLIENT LIST and kills pub/sub connections on the system's Redis"
        )
    if not redis_url.startswith(_REDIS_SCHEMES):
        raise usage("--redis-url must start with redis://, rediss:// or unix://")
    if not api_url.startswith(("http://", "https://")):
        raise usage("--api must start with http:// or https://")
    if not duration > 0:
        raise usage(f"--duration must be more than 0 seconds, got {duration:g}")
    if concurrency < 1:
        raise usage(f"--concurrency must be at least 1, got {concurrency}")
    if not sample_interval >= MIN_SAMPLE_INTERVAL_S:
        raise usage(
            f"--sample-interval must be at least {MIN_SAMPLE_INTERVAL_S:g} s, "
            f"got {sample_interval:g}"
        )
    if not settle > 0:
        raise usage(f"--settle must be more than 0 seconds, got {settle:g}")
    if not run_timeout > 0:
        raise usage(f"--run-timeout must be more than 0 seconds, got {run_timeout:g}")
    if out.exists() and not out.is_dir():
        raise usage(f"--out {out} exists and is not a directory")
    try:
        parsed = parse_mix(mix)
    except ValueError as exc:
        raise usage(f"--mix: {exc}") from None
    return SoakSettings(
        api_url=api_url.rstrip("/"),
        token=token,
        redis_url=redis_url,
        duration=duration,
        concurrency=concurrency,
        mix=parsed,
        seed=secrets.randbits(32) if seed is None else seed,
        sample_interval=sample_interval,
        settle=settle,
        out=out,
        run_timeout=run_timeout,
    )


def usage(message: str) -> ClientError:
    """A bad option: one line, exit 2, nothing started."""
    return ClientError(message, EXIT_USAGE)


async def _soak(settings: SoakSettings, console: Console) -> SoakResult:
    """Run the soak under the command's signal handling."""
    from runstream.cli.signals import Interrupts, handle_signals
    from runstream.cli.tasks import until_set
    from runstream.soak.runner import run_soak

    stop, leave = asyncio.Event(), asyncio.Event()

    def end_load(_: int) -> None:
        stop.set()
        console.print("ending the load early (Ctrl-C again to leave at once)", style="yellow")

    console.print(
        f"soak: {settings.concurrency} clients for {settings.duration:g} s against "
        f"{settings.api_url}, mix {settings.mix.as_text() or 'normal runs only'}, "
        f"seed {settings.seed}"
    )
    with handle_signals(Interrupts(graceful=end_load, force=lambda _: leave.set())):
        return await until_set(leave, run_soak(settings, console, stop))


def show_result(result: SoakResult, console: Console) -> None:
    """Where the report went, the numbers that matter, and the verdict last."""
    report = result.report
    total = report["total"]
    console.print(
        f"runs: {total['done']} done ({total['passed']} ok, {total['lost']} lost, "
        f"{total['errors']} errors), {total['events']} events, {total['retries']} 503 "
        f"retries, {total['reconnects']} reconnects, {total['resumes']} resumes, "
        f"{total['pubsub_kills']} pub/sub kills"
    )
    peaks = ", ".join(f"{k} {v['total']}" for k, v in report["max_connections"].items())
    console.print(f"max connections: {peaks or 'none named runstream:*'}")
    if report["other_connections"]["flagged"]:
        console.print(
            f"note: {report['other_connections']['max']} connection(s) not named "
            "runstream:* were seen (not counted; see report.json)",
            style="yellow",
        )
    if report["stalls_total"]:
        console.print(
            f"note: {report['stalls_total']} run(s) waited {report['stall_threshold_s']:g} s or "
            "more for their next event "
            f'(longest {total["longest_wait_s"]:.1f} s): late, not lost; see "stalls" in '
            "report.json",
            style="yellow",
        )
    for problem in report["errors"][:5]:
        console.print(
            f"error ({problem['scenario']}, run {problem['run_id']}): {problem['message']}",
            style="red",
        )
    for problem in report["losses"][:5]:
        console.print(
            f"loss ({problem['scenario']}, run {problem['run_id']}): {problem['message']}",
            style="red",
        )
    console.print(f"report: {result.report_path}")
    console.print(f"chart: {result.chart_path}")
    style = "bold green" if result.verdict.passed else "bold red"
    for line in result.verdict.lines():
        console.print(line, style=style if line.startswith("passed") else None)
