"""Agent registration: built-ins, entry points, RUNSTREAM_AGENTS, and input validation."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from importlib.metadata import EntryPoint
from typing import TYPE_CHECKING

import pytest

from runstream.agents import registry as registry_module
from runstream.agents.context import RunContext
from runstream.agents.registry import ENTRY_POINT_GROUP, AgentRegistry, load_registry
from runstream.errors import AgentError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

AGENT_SOURCE = """
async def agent(ctx, input):
    yield {"type": "greeting", "run": ctx.run_id, "input": input}

class Holder:
    @staticmethod
    async def agent(ctx, input):
        yield {"type": "nested"}

async def coroutine(ctx, input):
    return None

def plain(ctx, input):
    return iter(())
"""


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a uniquely named module on sys.path; return a function giving its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(source: str) -> str:
        name = f"rs_test_agents_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()  # the finder may have cached the directory listing
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, *points: tuple[str, str]) -> None:
    """Make the registry see ``points`` (name, value) as installed entry points."""
    installed = [
        EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP) for name, value in points
    ]

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [point for point in installed if point.group == group]

    monkeypatch.setattr(registry_module, "entry_points", entry_points)


def config_error(spec: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_registry(spec)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_registry_always_has_builtins() -> None:
    registry = load_registry({})
    assert "echo" in registry
    assert "scripted" in registry
    assert registry.names() == sorted(registry.names())


async def test_registry_loads_agent_from_spec(write_module: Callable[[str], str]) -> None:
    module = write_module(AGENT_SOURCE)
    registry = load_registry({"greeter": f"{module}:agent", "nested": f"{module}:Holder.agent"})
    assert registry.names() == ["echo", "greeter", "nested", "scripted"]
    events = [event async for event in registry.get("greeter")(RunContext(run_id="r1"), {"a": 1})]
    assert events == [{"type": "greeting", "run": "r1", "input": {"a": 1}}]
    assert registry.get("nested") is sys.modules[module].Holder.agent


def test_registry_rejects_unimportable_spec_with_one_line() -> None:
    assert config_error({"x": "nope.mod:fn"}) == (
        "RUNSTREAM_AGENTS: agent 'x' = 'nope.mod:fn': "
        "cannot import module 'nope.mod' (No module named 'nope')"
    )


def test_registry_reports_module_that_fails_at_import(write_module: Callable[[str], str]) -> None:
    module = write_module("1 / 0\n")
    assert config_error({"x": f"{module}:fn"}).endswith(
        f"cannot import module '{module}' (ZeroDivisionError: division by zero)"
    )


def test_registry_rejects_missing_attribute(write_module: Callable[[str], str]) -> None:
    module = write_module(AGENT_SOURCE)
    assert config_error({"x": f"{module}:missing"}) == (
        f"RUNSTREAM_AGENTS: agent 'x' = '{module}:missing': "
        f"module '{module}' has no attribute 'missing'"
    )


@pytest.mark.parametrize("target", ["just_a_module", ":fn", "mod:"])
def test_registry_rejects_malformed_spec(target: str) -> None:
    assert "expected 'module:attribute'" in config_error({"x": target})


@pytest.mark.parametrize("attr", ["coroutine", "plain", "Holder"])
def test_registry_rejects_non_generator(write_module: Callable[[str], str], attr: str) -> None:
    module = write_module(AGENT_SOURCE)
    message = config_error({"x": f"{module}:{attr}"})
    assert message.startswith(f"RUNSTREAM_AGENTS: agent 'x' = '{module}:{attr}': ")
    assert "not an async generator function" in message


def test_registry_rejects_spec_reusing_builtin_name(write_module: Callable[[str], str]) -> None:
    module = write_module(AGENT_SOURCE)
    assert "'echo' is a built-in agent" in config_error({"echo": f"{module}:agent"})


def test_registry_loads_entry_point(
    write_module: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(AGENT_SOURCE)
    fake_entry_points(monkeypatch, ("plugin", f"{module}:agent"))
    assert load_registry({}).get("plugin") is sys.modules[module].agent


def test_registry_rejects_broken_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("plugin", "gone.mod:agent"))
    assert config_error({}) == (
        "runstream.agents entry point 'plugin' = 'gone.mod:agent': "
        "cannot import module 'gone.mod' (No module named 'gone')"
    )


def test_registry_spec_overrides_entry_point_without_loading_it(
    write_module: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(AGENT_SOURCE)
    fake_entry_points(monkeypatch, ("plugin", "gone.mod:agent"))
    assert load_registry({"plugin": f"{module}:agent"}).get("plugin") is sys.modules[module].agent


def test_registry_rejects_entry_point_defined_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("plugin", "a:agent"), ("plugin", "b:agent"))
    assert "'plugin' is defined more than once" in config_error({})


def test_registry_rejects_entry_point_reusing_builtin_name(
    write_module: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(AGENT_SOURCE)
    fake_entry_points(monkeypatch, ("scripted", f"{module}:agent"))
    assert "'scripted' is a built-in agent" in config_error({})


def test_unknown_agent_raises_agent_error() -> None:
    registry = load_registry({})
    assert "nope" not in registry
    with pytest.raises(AgentError, match=r"^unknown agent 'nope'; the agents are: echo, scripted"):
        registry.get("nope")
    with pytest.raises(AgentError, match=r"^unknown agent 'nope'; the agents are: echo, scripted"):
        registry.validate_input("nope", {})


def test_register_rejects_non_generator() -> None:
    async def coroutine(ctx: RunContext, input: dict[str, object]) -> None:
        return None

    with pytest.raises(TypeError, match="async generator function"):
        AgentRegistry().register("x", coroutine)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("input", "message"),
    [
        ({"count": "3"}, "scripted: count: Input should be a valid integer"),
        ({"count": 2.5}, "scripted: count: Input should be a valid integer"),
        ({"count": True}, "scripted: count: Input should be a valid integer"),
        ({}, "scripted: count: Field required"),
        ({"count": 1, "bogus": 1}, "scripted: bogus: Extra inputs are not permitted"),
        ({"count": -1}, "scripted: count: Input should be greater than or equal to 0"),
        ({"count": 100_001}, "scripted: count: Input should be less than or equal to 100000"),
        (
            {"count": 1, "payload_bytes": 1_000_001},
            "scripted: payload_bytes: Input should be less than or equal to 1000000",
        ),
        (
            {"count": 1, "interval_ms": 60_001},
            "scripted: interval_ms: Input should be less than or equal to 60000",
        ),
        (
            {"count": 1, "fail_after": -1},
            "scripted: fail_after: Input should be greater than or equal to 0",
        ),
        ({"count": 1, "hang": "yes"}, "scripted: hang: Input should be a valid boolean"),
        (
            {"count": "x", "hang": "y"},
            "scripted: count: Input should be a valid integer (and 1 more error)",
        ),
    ],
)
def test_validate_input_rejects_bad_scripted_input(input: dict[str, object], message: str) -> None:
    with pytest.raises(AgentError) as caught:
        load_registry({}).validate_input("scripted", input)
    assert str(caught.value) == message


def test_validate_input_rejects_bad_echo_input() -> None:
    registry = load_registry({})
    with pytest.raises(AgentError, match=r"^echo: text: Input should be a valid string$"):
        registry.validate_input("echo", {"text": 5})
    with pytest.raises(AgentError, match=r"^echo: text: String should have at most"):
        registry.validate_input("echo", {"text": "x" * 1_000_001})


def test_validate_input_fills_defaults_for_builtins() -> None:
    registry = load_registry({})
    assert registry.validate_input("scripted", {"count": 2, "interval_ms": 5}) == {
        "count": 2,
        "interval_ms": 5,
        "payload_bytes": 0,
        "fail_after": None,
        "hang": False,
        "ignore_stop": False,
    }
    assert registry.validate_input("echo", {"text": "hi"}) == {"text": "hi", "interval_ms": 0}


def test_validate_input_passes_any_dict_for_configured_agents(
    write_module: Callable[[str], str],
) -> None:
    module = write_module(AGENT_SOURCE)
    registry = load_registry({"greeter": f"{module}:agent"})
    given = {"anything": [1, 2], "count": "not checked"}
    assert registry.validate_input("greeter", given) == given
