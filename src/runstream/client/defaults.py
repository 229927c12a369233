"""What a client of the API assumes when it is told nothing (no httpx: the command line
imports it for its option defaults, ``runstream api`` included)."""

from __future__ import annotations

from typing import Final

DEFAULT_API_URL: Final = "http://127.0.0.1:8000"
"""The API ``runstream api`` serves by default."""
