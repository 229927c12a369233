"""runstream: run AI agents in background workers and stream their events live over SSE,
through Redis, on a small, constant number of connections per process."""

from __future__ import annotations

__version__ = "0.1.0"
