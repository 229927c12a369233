"""The ``runstream`` command: dev, api, worker and run (README.md).

Each command reports failure as one line, ``runstream: <what and how to fix it>``, on
stderr, with exit code 2 for bad configuration or arguments (nothing was started) and 1
when the work itself failed. The server commands import the application lazily, so
``runstream run`` and ``--help`` start fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn

import orjson
import structlog
import typer

from runstream.cli.loop import run as run_loop
from runstream.cli.options import ApiUrlOption, TokenOption
from runstream.cli.runs import agents, runs_app
from runstream.cli.soak import soak
from runstream.client.defaults import DEFAULT_API_URL
from runstream.client.errors import EXIT_INTERRUPTED, EXIT_USAGE, ClientError
from runstream.config import load_settings
from runstream.errors import ConfigError, RunstreamError, describe
from runstream.logs import LEVELS, configure_logging

if TYPE_CHECKING:
    from collections.abc import Iterator

    from runstream.config import Settings

log = structlog.get_logger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})

app = typer.Typer(
    name="runstream",
    help="Run AI agents in background workers and stream their events live.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    add_completion=False,
    # Locals may hold tokens and keys: never print them with a traceback.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

HostOption = Annotated[
    str,
    typer.Option(
        "--host",
        help="Address to bind. Anything but loopback requires authentication "
        "(RUNSTREAM_API_KEYS or RUNSTREAM_JWT_SECRET).",
    ),
]
PortOption = Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port to bind.")]


_logging: list[tuple[bool, str]] = []
"""The log format and level the command line chose (JSON, level)."""


def _show_version(value: bool) -> None:
    if value:
        from runstream import __version__

        typer.echo(f"runstream {__version__}")
        raise typer.Exit()


@app.callback()
def _configure(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            envvar="RUNSTREAM_LOG_LEVEL",
            help=f"Log level: {', '.join(LEVELS)}. RUNSTREAM_LOG_JSON=1 logs JSON lines.",
        ),
    ] = "info",
) -> None:
    """Run AI agents in background workers and stream their events live."""
    with reported_errors():
        json_logs = env_flag("RUNSTREAM_LOG_JSON")
        try:
            configure_logging(json=json_logs, level=log_level)
        except ValueError as exc:
            raise ConfigError(f"RUNSTREAM_LOG_LEVEL (--log-level): {exc}") from None
        _logging[:] = [(json_logs, log_level)]  # what child processes configure too


@app.command()
def dev(host: HostOption = DEFAULT_HOST, port: PortOption = DEFAULT_PORT) -> None:
    """Everything in one process: API, worker, a private Redis and SQLite.

    A private redis-server is started on a free local port unless RUNSTREAM_REDIS_URL is
    set; the database is RUNSTREAM_DATABASE_URL (default: ./runstream.db). Ctrl-C stops
    it all gracefully: running runs get RUNSTREAM_SHUTDOWN_GRACE_S, then end stopped.
    """
    from runstream.cli.dev import run_dev
    from runstream.cli.output import consoles

    with reported_errors():
        out, _ = consoles()
        run_dev(host, port, out)


WorkersOption = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        max=64,
        help="API processes sharing the port, each with its own connections and the "
        "instance name <RUNSTREAM_INSTANCE>-<n>.",
    ),
]


@app.command()
def api(
    host: HostOption = DEFAULT_HOST, port: PortOption = DEFAULT_PORT, workers: WorkersOption = 1
) -> None:
    """Serve the HTTP API under uvicorn until SIGTERM or Ctrl-C.

    On SIGTERM open streams are closed (clients resume elsewhere with Last-Event-ID)
    and requests in flight get RUNSTREAM_SHUTDOWN_GRACE_S to finish.
    """
    from runstream.cli.server import check_bind, serve_api

    with reported_errors():
        settings = load_settings()
        check_bind(host, settings)
        check_agents(settings)
        if workers == 1:
            run_loop(serve_api(settings, host, port))
        else:
            from runstream.cli.processes import serve_processes

            logging = _logging[0] if _logging else (False, "info")
            run_loop(serve_processes(settings, host, port, workers, logging))


@app.command()
def worker(
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve /metrics and /healthz on this port (or RUNSTREAM_METRICS_PORT).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address the metrics port binds.")
    ] = "127.0.0.1",
) -> None:
    """Execute runs until SIGTERM or Ctrl-C, then wind down gracefully.

    Running runs get RUNSTREAM_SHUTDOWN_GRACE_S to finish; then they are stopped
    ("worker shut down"), agents that ignore the stop after RUNSTREAM_STOP_GRACE_S.
    """
    from runstream.cli.worker import serve_worker

    with reported_errors():
        overrides = {} if metrics_port is None else {"metrics_port": metrics_port}
        settings = load_settings(**overrides)
        check_agents(settings)
        run_loop(serve_worker(settings, metrics_host=metrics_host))


@app.command()
def run(
    agent: Annotated[str, typer.Argument(help="Name of a registered agent, e.g. echo.")],
    input: Annotated[
        str,
        typer.Option(
            "--input", "-i", help='The agent\'s input as a JSON object, e.g. \'{"text": "hi"}\'.'
        ),
    ],
    api_url: ApiUrlOption = DEFAULT_API_URL,
    token: TokenOption = None,
    thread_id: Annotated[
        str | None, typer.Option("--thread-id", help="Thread the run belongs to.")
    ] = None,
) -> None:
    """Start a run and print its events until it ends.

    Exit code 0 when it completed, 1 when it failed, 3 when it was stopped. Ctrl-C asks
    the API to stop the run and keeps following; a second Ctrl-C leaves at once.
    """
    from runstream.cli.follow import start_and_follow
    from runstream.cli.output import EventPrinter, consoles

    with reported_errors():
        agent_input = parse_input(input)
        printer = EventPrinter(*consoles())
        code = asyncio.run(
            start_and_follow(
                api_url=api_url,
                token=token,
                agent=agent,
                input=agent_input,
                thread_id=thread_id,
                printer=printer,
            )
        )
    raise typer.Exit(code)


@app.command()
def top(
    once: Annotated[bool, typer.Option("--once", help="One snapshot, then exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with --once).")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between refreshes.")
    ] = 2.0,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            help="A process's base URL whose /metrics gives its streams and events/s "
            "(an API, or a worker's metrics port); repeat for several.",
        ),
    ] = None,
) -> None:
    """Every runstream process seen in Redis's CLIENT LIST, live: connections by
    purpose against the budget, runs active and running, streams and events/s."""
    from rich.live import Live

    from runstream.cli.output import consoles
    from runstream.cli.top import render, watch

    with reported_errors():
        settings = load_settings()
        out, _ = consoles()
        urls = list(metrics or [])
        if once:
            snapshot = asyncio.run(watch(settings, urls, once=True, interval_s=0, show=_ignore))
            if as_json:
                typer.echo(orjson.dumps(snapshot.to_json()).decode())
            else:
                out.print(render(snapshot))
            return
        with Live(console=out, auto_refresh=False) as live:

            def show(snapshot: Any) -> None:
                live.update(render(snapshot), refresh=True)

            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(watch(settings, urls, once=False, interval_s=interval, show=show))


def _ignore(_: object) -> None:
    return None


app.command()(soak)  # declared in runstream.cli.soak, with its options
app.command()(agents)  # declared in runstream.cli.runs, with the runs commands
app.add_typer(runs_app, name="runs")


def check_agents(settings: Settings) -> None:
    """Load the configured agents now, so one that cannot be imported stops the command
    with one line (ConfigError) before any server starts and logs a traceback."""
    from runstream.agents.registry import load_registry

    load_registry(settings.agents)


def parse_input(text: str) -> dict[str, Any]:
    """The ``--input`` JSON object, or ClientError (exit 2) saying what is wrong with it."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ClientError(f"--input is not valid JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise ClientError('--input must be a JSON object, e.g. \'{"text": "hi"}\'', EXIT_USAGE)
    return value


def env_flag(name: str) -> bool:
    """A yes/no environment variable (1/0, true/false, yes/no, on/off); ConfigError else."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name}: expected 1 or 0 (true/false, yes/no, on/off), got {raw!r}")


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn runstream's errors and Ctrl-C into one line on stderr and an exit code."""
    try:
        yield
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except ClientError as exc:
        fail(str(exc), exc.exit_code)
    except RunstreamError as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        # Ctrl-C before the command's own handlers were in place (e.g. during startup).
        fail("interrupted", EXIT_INTERRUPTED)
    except typer.Exit:
        raise
    except Exception as exc:
        # Not one of ours (a library's connection error, a bug): the traceback goes to
        # the log, where operators collect it, and the terminal still ends with one line.
        log.error("command failed", exc_info=exc)
        fail(f"{describe(exc)} (traceback in the log above)", 1)


def fail(message: str, code: int) -> NoReturn:
    """Print ``runstream: <message>`` (one line) on stderr and exit with ``code``."""
    line = " ".join(message.split())  # one line, whatever the message held
    typer.echo(f"runstream: {line}", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Entry point of the ``runstream`` executable."""
    app(prog_name="runstream")


if __name__ == "__main__":
    main()
