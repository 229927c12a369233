"""``runstream agents``, ``runstream runs list | get | stop | follow`` and ``--version``,
against a ``runstream dev`` that runs a custom agent from a module in its directory."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import orjson
import pytest

from runstream import __version__
from tests.cli import background, cli_env, free_port, run_cli, wait_healthy

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)

MY_AGENTS = """
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from runstream.agents import RunContext, agent


class ShoutInput(BaseModel):
    text: str


@agent(input=ShoutInput, description="Shouts the text, word by word.")
async def shout(ctx: RunContext, input: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for word in ShoutInput.model_validate(input).text.split():
        yield {"type": "token", "text": word.upper()}
"""


def test_the_runs_commands_against_a_custom_agent_found_in_the_current_directory(
    tmp_path: Path,
) -> None:
    (tmp_path / "my_agents.py").write_text(MY_AGENTS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = cli_env(
        RUNSTREAM_DATABASE_URL=f"sqlite:///{tmp_path / 'runstream.db'}",
        RUNSTREAM_AGENTS="shout=my_agents:shout",
    )
    with background("dev", "--port", str(port), env=env, workdir=tmp_path) as dev:
        wait_healthy(url, dev)
        api = ("--api", url)
        listed = run_cli("agents", "--json", *api, env=cli_env())
        assert listed.returncode == 0, listed.stderr
        agents = {a["name"]: a for a in map(orjson.loads, listed.stdout.splitlines())}
        assert agents["shout"]["description"] == "Shouts the text, word by word."
        assert "text" in agents["shout"]["input_schema"]["properties"]

        bad = run_cli("run", "shout", "--input", '{"txt": 5}', *api, env=cli_env())
        assert bad.returncode == 1 and "invalid_input" in bad.stderr

        ran = run_cli("run", "shout", "--input", '{"text": "hello there"}', *api, env=cli_env())
        assert ran.returncode == 0, ran.stderr
        assert "HELLO" in ran.stdout and "THERE" in ran.stdout

        runs = run_cli("runs", "list", "--json", *api, env=cli_env())
        assert runs.returncode == 0, runs.stderr
        newest = orjson.loads(runs.stdout.splitlines()[0])
        assert newest["agent"] == "shout" and newest["status"] == "completed"
        table = run_cli("runs", "list", *api, env=cli_env())
        assert newest["id"] in table.stdout

        got = run_cli("runs", "get", newest["id"], *api, env=cli_env())
        assert orjson.loads(got.stdout)["input"] == {"text": "hello there"}

        followed = run_cli("runs", "follow", newest["id"], "--after", "2", *api, env=cli_env())
        assert followed.returncode == 0, followed.stderr
        assert [line.split()[0] for line in followed.stdout.splitlines()] == ["3", "4"]

        stopped = run_cli("runs", "stop", newest["id"], *api, env=cli_env())
        assert stopped.returncode == 1 and "run_finished" in stopped.stderr
        missing = run_cli(
            "runs", "get", "00000000-0000-4000-8000-000000000000", *api, env=cli_env()
        )
        assert missing.returncode == 1 and "not_found" in missing.stderr
        assert dev.signal_and_wait(signal.SIGTERM, timeout=20) == 0, dev.stderr


def test_version() -> None:
    result = run_cli("--version", env=cli_env())
    assert result.returncode == 0 and result.stdout.strip() == f"runstream {__version__}"


def test_an_agent_that_cannot_be_imported_stops_the_command_with_one_line(tmp_path: Path) -> None:
    env = cli_env(RUNSTREAM_AGENTS="shout=nowhere_to_be_found:shout")
    for command in (["worker"], ["api"]):
        result = run_cli(*command, env=env)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot import module 'nowhere_to_be_found'" in lines[0]
