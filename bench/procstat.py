"""CPU seconds and RSS of a process, read from /proc (psutil is not a dependency)."""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of ``pid`` so far, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


@dataclass
class CpuMeter:
    """CPU seconds one process spent between :meth:`start` and :meth:`stop`."""

    pid: int
    begin: float | None = None
    seconds: float | None = None
    peak_rss: int = 0

    def start(self) -> None:
        """Remember the CPU time so far."""
        self.begin = cpu_seconds(self.pid)

    def sample(self) -> None:
        """Track the peak RSS and the last CPU reading."""
        rss = rss_bytes(self.pid)
        if rss is not None:
            self.peak_rss = max(self.peak_rss, rss)
        now = cpu_seconds(self.pid)
        if now is not None and self.begin is not None:
            self.seconds = now - self.begin

    def stop(self) -> None:
        """Take the final reading."""
        self.sample()
