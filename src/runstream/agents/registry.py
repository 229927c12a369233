"""Agents by name: the built-ins, installed entry points, then ``RUNSTREAM_AGENTS``.

Agent code is only ever imported from configuration (the entry-point group
``runstream.agents`` or the ``RUNSTREAM_AGENTS`` setting), never by a name taken from a
request: a request can only pick among the names registered here.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, cast

from runstream.agents.builtin import BUILTINS, parse_input
from runstream.agents.declare import declared_input, description_of
from runstream.errors import AgentError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from pydantic import BaseModel

    from runstream.agents.context import Agent

ENTRY_POINT_GROUP = "runstream.agents"


@dataclass(frozen=True, slots=True)
class _Registered:
    agent: Agent
    input_model: type[BaseModel] | None


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What ``GET /agents`` shows of one agent."""

    name: str
    description: str
    input_schema: dict[str, Any]


class AgentRegistry:
    """A mapping from agent names to agents, each with an optional input model."""

    def __init__(self) -> None:
        self._agents: dict[str, _Registered] = {}

    def register(self, name: str, agent: Agent, input_model: type[BaseModel] | None = None) -> None:
        """Register ``agent`` under ``name`` (replacing any previous one).

        ``input_model``, when given, is how :meth:`validate_input` checks its input.
        """
        if not inspect.isasyncgenfunction(agent):
            raise TypeError(f"agent {name!r} must be an async generator function")
        self._agents[name] = _Registered(agent, input_model)

    def get(self, name: str) -> Agent:
        """Return the agent called ``name``; raise AgentError if there is none."""
        return self._lookup(name).agent

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._agents)

    def describe(self) -> list[AgentInfo]:
        """Every agent, sorted by name, with its description and input JSON schema."""
        return [
            AgentInfo(
                name=name,
                description=description_of(entry.agent),
                input_schema=(
                    entry.input_model.model_json_schema()
                    if entry.input_model is not None
                    else {"type": "object"}
                ),
            )
            for name, entry in sorted(self._agents.items())
        ]

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def validate_input(self, name: str, input: dict[str, Any]) -> dict[str, Any]:
        """Check ``input`` for agent ``name`` before a run is queued.

        Return the input to store: normalised by the agent's model (defaults filled in)
        when it has one, otherwise a copy of ``input`` unchanged. Raise AgentError with
        one line (e.g. ``"scripted: count: Input should be a valid integer"``) if the
        agent is unknown or the input is invalid.
        """
        registered = self._lookup(name)
        if registered.input_model is None:
            if not isinstance(input, dict):
                raise AgentError(f"{name}: input: must be a JSON object")
            return dict(input)
        return parse_input(name, registered.input_model, input).model_dump()

    def _lookup(self, name: str) -> _Registered:
        try:
            return self._agents[name]
        except KeyError:
            known = ", ".join(self.names())
            raise AgentError(f"unknown agent {name!r}; the agents are: {known}") from None


def load_registry(spec: Mapping[str, str]) -> AgentRegistry:
    """Build the registry: built-ins, then entry points, then ``spec`` (RUNSTREAM_AGENTS).

    ``spec`` maps names to ``"module:attr"``. A name in ``spec`` overrides an entry point
    of the same name (which is then not even loaded); no source may reuse a built-in's
    name. Raise ConfigError with one fix-it line for anything that cannot be loaded.
    """
    registry = AgentRegistry()
    for name, (agent, model) in BUILTINS.items():
        registry.register(name, agent, model)
    for name, point in _entry_points(skip=spec.keys()).items():
        where = f"{ENTRY_POINT_GROUP} entry point {name!r} = {point.value!r}"
        found = _resolve(where, name, point.value.partition("[")[0])
        registry.register(name, found, declared_input(found))
    for name, target in spec.items():
        where = f"RUNSTREAM_AGENTS: agent {name!r} = {target!r}"
        found = _resolve(where, name, target)
        registry.register(name, found, declared_input(found))
    return registry


def _entry_points(skip: Collection[str]) -> dict[str, EntryPoint]:
    """The group's entry points by name, minus those in ``skip``; reject ambiguous names."""
    by_name: defaultdict[str, list[EntryPoint]] = defaultdict(list)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name not in skip:
            by_name[point.name].append(point)
    chosen: dict[str, EntryPoint] = {}
    for name, points in by_name.items():
        if len(points) > 1:
            values = ", ".join(repr(point.value) for point in points)
            raise ConfigError(
                f"{ENTRY_POINT_GROUP} entry point {name!r} is defined more than once "
                f"({values}); uninstall one or choose with RUNSTREAM_AGENTS"
            )
        chosen[name] = points[0]
    return chosen


def _resolve(where: str, name: str, target: str) -> Agent:
    """Import ``target`` ("module:attr") as agent ``name``, or raise ConfigError."""
    if name in BUILTINS:
        raise ConfigError(f"{where}: {name!r} is a built-in agent; choose another name")
    module_name, sep, attr_path = (part.strip() for part in target.partition(":"))
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"{where}: expected 'module:attribute', e.g. 'mypkg.agents:my_agent'")
    try:
        obj: object = _import(module_name)
    except Exception as exc:
        raise ConfigError(
            f"{where}: cannot import module {module_name!r} ({_one_line(exc)})"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"{where}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not inspect.isasyncgenfunction(obj):
        raise ConfigError(
            f"{where}: not an async generator function (got {type(obj).__name__}); "
            "define it with 'async def' and 'yield'"
        )
    return cast("Agent", obj)


def _import(module_name: str) -> object:
    """Import ``module_name`` from the Python path or, failing that, from the current
    directory (as ``python -m`` and uvicorn do), so ``my_agents.py`` next to where
    ``runstream`` starts is found without setting PYTHONPATH."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module_name.partition(".")[0] or here in sys.path:
            raise
        sys.path.insert(0, here)
        return importlib.import_module(module_name)


def _one_line(exc: Exception) -> str:
    """An exception as one short line (an import error's own text says enough)."""
    text = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__
