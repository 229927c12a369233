"""The SQL database: run records and the archived events of finished runs."""

from __future__ import annotations

from runstream.store.database import open_store
from runstream.store.repository import RunStore

__all__ = ["RunStore", "open_store"]
