"""Every test here runs an API and a worker and must leave nothing behind."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _leak_checked(no_system_leaks: None) -> None:
    """Makes the shared leak check apply to every test of the package."""
