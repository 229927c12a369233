"""Agents: async generator functions that yield events, registered by name (docs/agents.md)."""

from __future__ import annotations

from runstream.agents.context import Agent, RunContext
from runstream.agents.declare import agent
from runstream.agents.registry import ENTRY_POINT_GROUP, AgentInfo, AgentRegistry, load_registry

__all__ = [
    "ENTRY_POINT_GROUP",
    "Agent",
    "AgentInfo",
    "AgentRegistry",
    "RunContext",
    "agent",
    "load_registry",
]
