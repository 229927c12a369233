"""docs/settings.md documents every setting, with its real default, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runstream.config import Settings

REFERENCE = Path(__file__).parents[1] / "docs" / "settings.md"
CLI_ONLY = {"RUNSTREAM_API_URL", "RUNSTREAM_TOKEN", "RUNSTREAM_LOG_JSON", "RUNSTREAM_LOG_LEVEL"}
# Settings whose default is computed, or none: the reference says so in words.
UNSET = {
    "api_keys",
    "agents",
    "metrics_port",
    "cors_origins",
    "jwt_secret",
    "jwt_audience",
    "jwt_issuer",
    "http_max_connections",
    "queue_redis_url",
}


def documented() -> dict[str, str]:
    """Each setting's row in the reference: name -> its default cell."""
    rows = re.findall(r"^\| `(RUNSTREAM_[A-Z_]+)` \| ([^|]+) \|", REFERENCE.read_text(), re.M)
    return {name: default.strip() for name, default in rows}


def test_every_setting_is_documented_once_and_nothing_else_is() -> None:
    rows = re.findall(r"^\| `(RUNSTREAM_[A-Z_]+)` \|", REFERENCE.read_text(), re.M)
    fields = {f"RUNSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert sorted(rows) == sorted(set(rows)), "a setting is documented twice"
    assert set(rows) == fields | CLI_ONLY


@pytest.mark.parametrize("name", sorted(set(Settings.model_fields) - UNSET - {"instance"}))
def test_the_documented_default_is_the_real_one(name: str) -> None:
    field = Settings.model_fields[name]
    default = field.default
    shown = documented()[f"RUNSTREAM_{name.upper()}"]
    if name == "database_url":  # documented as the user writes it, before the driver is added
        default = default.replace("sqlite+aiosqlite", "sqlite")
    expected = str(default).lower() if isinstance(default, bool) else str(default)
    assert shown == f"`{expected}`", f"{name}: documented {shown}, real {expected}"


def test_settings_without_a_default_say_so() -> None:
    rows = documented()
    for name in UNSET | {"instance"}:
        assert rows[f"RUNSTREAM_{name.upper()}"].startswith(("(none", "random")), name
