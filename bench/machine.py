"""What the results were measured on: CPU, RAM, Redis, Python, the runstream under test."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.systems import runstream_executable


def _run(argv: list[str]) -> str | None:
    """The first line the command prints, or None if it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0] if lines else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def describe() -> dict[str, Any]:
    """A dict of machine and software facts for the results file."""
    rs = runstream_executable()
    root = Path(rs).resolve().parent.parent.parent  # <repo>/.venv/bin/runstream
    redis = shutil.which("redis-server")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": _ram_gib(),
        "python": sys.version.split()[0],
        "redis_server": _run([redis, "--version"]) if redis else None,
        "runstream_executable": rs,
        "runstream_version": _run([rs, "--version"]),
        "runstream_commit": _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]),
        "runstream_repo": str(root),
        "load_average": os.getloadavg(),
    }
