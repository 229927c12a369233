"""``runstream runs list | get | stop | follow`` and ``runstream agents``: the API's runs
and agents from a terminal, through :class:`runstream.client.Client`.

``get`` and ``stop`` print the run object as JSON (one line, for ``jq``); ``list`` prints
a table, or JSON lines with ``--json``; ``follow`` prints events as ``runstream run`` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.table import Column, Table

from runstream.cli.options import ApiUrlOption, TokenOption
from runstream.client.defaults import DEFAULT_API_URL

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from runstream.client import Client, Run

runs_app = typer.Typer(help="List, show, stop and follow runs.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")]
RunIdArgument = Annotated[str, typer.Argument(help="The run's id.")]


def _json(value: Any) -> str:
    # Times as the API writes them: ISO 8601 with a Z.
    return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()


def _client(api_url: str, token: str | None) -> Client:
    # Imported when a command runs: the package's command line (``runstream api`` too)
    # does not load httpx otherwise.
    from runstream.client import Client

    return Client(api_url, token=token)


def _run_json(run: Run) -> str:
    return _json(dataclasses.asdict(run))


@runs_app.command("list")
def list_runs(
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    thread_id: Annotated[str | None, typer.Option("--thread-id", help="Only this thread.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many runs.")] = 20,
    as_json: JsonOption = False,
    api_url: ApiUrlOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Your runs, newest first."""
    from runstream.cli.main import reported_errors
    from runstream.cli.output import consoles

    async def fetch() -> list[Run]:
        found: list[Run] = []
        async with _client(api_url, token) as client:
            async for run in client.list(status=status, thread_id=thread_id):
                found.append(run)
                if len(found) >= limit:
                    break
        return found

    with reported_errors():
        found = asyncio.run(fetch())
        out, _ = consoles()
        if as_json:
            for run in found:
                out.print(_run_json(run))
            return
        id_column = Column("id", no_wrap=True, min_width=36)  # never cut: it is what one copies
        table = Table(id_column, "agent", "status", "created", "last seq", "error")
        for run in found:
            created = run.created_at.isoformat(timespec="seconds")
            table.add_row(run.id, run.agent, run.status, created, str(run.last_seq), run.error)
        out.print(table)


@runs_app.command("get")
def get_run(
    run_id: RunIdArgument, api_url: ApiUrlOption = DEFAULT_API_URL, token: TokenOption = None
) -> None:
    """The run, as JSON."""
    _print_run(api_url, token, lambda client: client.get(run_id))


@runs_app.command("stop")
def stop_run(
    run_id: RunIdArgument, api_url: ApiUrlOption = DEFAULT_API_URL, token: TokenOption = None
) -> None:
    """Stop the run; prints it as JSON (exit 1 if it had already ended)."""
    _print_run(api_url, token, lambda client: client.stop(run_id))


def _print_run(api_url: str, token: str | None, call: Callable[[Client], Awaitable[Run]]) -> None:
    """Print as JSON the run ``call`` answers, or the error as one line."""
    from runstream.cli.main import reported_errors

    async def fetch() -> Run:
        async with _client(api_url, token) as client:
            return await call(client)

    with reported_errors():
        typer.echo(_run_json(asyncio.run(fetch())))


@runs_app.command("follow")
def follow_run(
    run_id: RunIdArgument,
    after: Annotated[int, typer.Option(min=0, help="Start after this seq.")] = 0,
    api_url: ApiUrlOption = DEFAULT_API_URL,
    token: TokenOption = None,
) -> None:
    """Print the run's events until it ends (exit 0 completed, 1 failed, 3 stopped)."""
    from runstream.cli.follow import follow_existing
    from runstream.cli.main import reported_errors
    from runstream.cli.output import EventPrinter, consoles

    with reported_errors():
        printer = EventPrinter(*consoles())
        code = asyncio.run(
            follow_existing(
                api_url=api_url, token=token, run_id=run_id, after=after, printer=printer
            )
        )
    raise typer.Exit(code)


def agents(
    as_json: JsonOption = False, api_url: ApiUrlOption = DEFAULT_API_URL, token: TokenOption = None
) -> None:
    """The agents the API runs, with what each one does."""
    from runstream.cli.main import reported_errors
    from runstream.cli.output import consoles

    async def fetch() -> list[dict[str, Any]]:
        async with _client(api_url, token) as client:
            return await client.agents()

    with reported_errors():
        found = asyncio.run(fetch())
        out, _ = consoles()
        if as_json:
            for item in found:
                out.print(_json(item))
            return
        table = Table("agent", "description", "input")
        for item in found:
            properties = item["input_schema"].get("properties", {})
            table.add_row(item["name"], item["description"], ", ".join(properties) or "any object")
        out.print(table)
