"""Processes the bench starts: private redis-servers and the systems' API and worker.

Everything is a context manager: a process started is terminated (then killed) and
waited on the way out, on success, exception and Ctrl-C alike.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A free TCP port on the loopback interface (never 6379)."""
    while True:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port != 6379:
            return port


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by every child) as far as allowed; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        return wanted
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Proc:
    """A started child process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The end of its log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_process(proc: Proc, grace_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; always waits for the child."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.kill()
            proc.popen.wait()


@contextlib.contextmanager
def started(
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    log_dir: Path,
    grace_s: float = 10.0,
    cwd: Path | None = None,
) -> Iterator[Proc]:
    """Start ``argv`` with ``env`` added to the environment; stop it on exit."""
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )
    proc = Proc(name, popen, log)
    try:
        yield proc
    finally:
        stop_process(proc, grace_s)


@dataclass
class RedisServer:
    """A private redis-server on a loopback port."""

    port: int
    proc: Proc

    @property
    def url(self) -> str:
        """Its URL, database 0."""
        return f"redis://{LOOPBACK}:{self.port}/0"


@contextlib.contextmanager
def redis_server(
    name: str, log_dir: Path, maxclients: int, extra_args: Sequence[str] = ()
) -> Iterator[RedisServer]:
    """A redis-server with no persistence and room for ``maxclients``, killed on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=log_dir))
    argv = [
        binary,
        "--bind",
        LOOPBACK,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxclients",
        str(maxclients),
        "--dir",
        str(workdir),
        "--protected-mode",
        "yes",
        "--tcp-backlog",
        "4096",
        *extra_args,
    ]
    try:
        with started(name, argv, {}, log_dir, grace_s=5) as proc:
            wait_tcp(port, proc, timeout_s=10)
            yield RedisServer(port, proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def wait_tcp(port: int, proc: Proc, timeout_s: float) -> None:
    """Wait until ``port`` accepts a connection (or the process died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start:\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout_s} s")


def wait_http_ok(url: str, proc: Proc, timeout_s: float) -> float:
    """Wait until GET ``url`` answers 200; return the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start:\n{proc.tail()}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return time.monotonic() - start
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s ({last})\n{proc.tail()}")
