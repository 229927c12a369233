"""``GET /agents``: the agents a run may name, what they do and what input they take."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from runstream.api.deps import Principal, State
from runstream.api.schemas import AgentList, errors, ok

router = APIRouter(tags=["agents"])


@router.get("/agents", response_model=None, responses=ok(AgentList) | errors(401))
async def list_agents(state: State, _: Principal) -> dict[str, Any]:
    """Each agent's name, description and input JSON schema, sorted by name."""
    return {
        "agents": [
            {"name": a.name, "description": a.description, "input_schema": a.input_schema}
            for a in state.resources.agents.describe()
        ]
    }
