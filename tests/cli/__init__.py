"""Helpers for the CLI tests: the real ``runstream`` executable in real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from runstream.cli.embedded_redis import free_port  # noqa: F401 (used and re-exported)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_SCRIPT = Path(sys.executable).parent / "runstream"
RUNSTREAM: list[str] = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "runstream.cli.main"]
)
"""The command that runs the CLI as a user would: the installed console script."""


def cli_env(**variables: str) -> dict[str, str]:
    """The test's environment without any RUNSTREAM_* setting, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(variables)
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``runstream *args`` to its end and capture its output."""
    return subprocess.run(
        [*RUNSTREAM, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


@dataclass
class Background:
    """A ``runstream`` process running in the background, its output in files."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_output(self, text: str, timeout: float = 20) -> None:
        """Wait until ``text`` appears on stdout (fails early if the process exits)."""

        def seen() -> bool:
            if text in self.stdout:
                return True
            if not self.alive():
                raise AssertionError(
                    f"process exited ({self.process.returncode}) before printing {text!r}:\n"
                    f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
                )
            return False

        wait_for(seen, timeout, f"{text!r} on stdout")

    def signal_and_wait(self, sig: signal.Signals, timeout: float) -> int:
        """Send ``sig`` and wait for the exit code; fails if it takes over ``timeout``."""
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {timeout} s after {sig.name}:\nstderr:\n{self.stderr}"
            ) from None


@contextmanager
def background(*args: str, env: dict[str, str], workdir: Path) -> Iterator[Background]:
    """Start ``runstream *args``; kill it on exit if the test left it running."""
    workdir.mkdir(parents=True, exist_ok=True)
    name = "-".join(a for a in args[:1])
    stdout_path = workdir / f"{name}-{os.getpid()}-{time.monotonic_ns()}.out"
    stderr_path = stdout_path.with_suffix(".err")
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [*RUNSTREAM, *args],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield Background(process, stdout_path, stderr_path)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def healthy(base_url: str) -> bool:
    """Whether ``GET /healthz`` answers 200 now."""
    try:
        return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wait_healthy(base_url: str, server: Background, timeout: float = 30) -> None:
    """Wait for the API to be healthy, failing early with its log if it exits."""

    def ready() -> bool:
        if not server.alive():
            raise AssertionError(f"server exited ({server.process.returncode}):\n{server.stderr}")
        return healthy(base_url)

    wait_for(ready, timeout, f"{base_url}/healthz is 200")


def accepts_connections(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class CuttableProxy:
    """A TCP proxy on loopback whose open connections the test can cut at will.

    It stands between ``runstream run`` and the API so a test can drop the event stream
    mid-flight (as a flaky network or a load balancer would) while new connections still
    get through.
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # lets the accept loop notice close()
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def __enter__(self) -> CuttableProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def cut(self) -> None:
        """Break every connection open now; later ones are proxied as usual."""
        with self._lock:
            doomed, self._open = self._open, []
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join(5)
        self._listener.close()
        self.cut()
        for thread in self._threads:
            thread.join(5)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            with self._lock:
                self.accepted += 1
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=_pump, args=(src, dst), daemon=True)
                self._threads.append(thread)
                thread.start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes from ``src`` to ``dst`` until either side is closed."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
