"""A private, throwaway redis-server for ``runstream dev``.

No persistence, loopback only, a free port, a temporary directory; it is stopped on
every exit path of :func:`embedded_redis` (and, on Linux, dies with its parent even if
the parent is killed without a chance to clean up).
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from runstream.errors import ConfigError, RunstreamError
from runstream.streams.keys import client_name

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0
PORT_ATTEMPTS: Final = 3
CLIENT_NAME: Final = client_name("cli", "dev", "probe")

NOT_FOUND: Final = (
    "redis-server not found on PATH: install it (e.g. apt-get install redis-server) "
    "or set RUNSTREAM_REDIS_URL"
)


class EmbeddedRedisError(RunstreamError):
    """The private redis-server could not be started; the message is one line."""


def find_redis_server() -> str:
    """The path of ``redis-server``, or ConfigError with a one-line fix-it message."""
    path = shutil.which("redis-server")
    if path is None:
        raise ConfigError(NOT_FOUND)
    return path


@contextmanager
def embedded_redis(binary: str | None = None) -> Iterator[str]:
    """Start a private redis-server and yield its URL; stop it on exit, whatever happens.

    Raises ConfigError when redis-server is not installed, EmbeddedRedisError when it
    does not answer PING within :data:`START_TIMEOUT_S`.
    """
    binary = binary or find_redis_server()
    with tempfile.TemporaryDirectory(prefix="runstream-redis-") as workdir:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port()
            with _server_process(binary, port, Path(workdir)) as process:
                if _wait_ready(process, port, START_TIMEOUT_S):
                    yield f"redis://127.0.0.1:{port}/0"
                    return
            # Another process may have taken the port between our probe and the
            # server's bind: try a fresh one before giving up.
            if attempt == PORT_ATTEMPTS:
                raise EmbeddedRedisError(_failure(Path(workdir)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _server_process(binary: str, port: int, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--logfile", str(workdir / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: a Ctrl-C in the terminal goes to runstream, which then stops
        # the API and the worker *before* their Redis, not to all three at once.
        start_new_session=True,
        # Only a prctl call: safe between fork and exec (no threads exist yet in dev).
        preexec_fn=_die_with_parent(),
    )
    try:
        yield process
    finally:
        stop_process(process, STOP_TIMEOUT_S)


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate ``process``, wait up to ``timeout``, then kill it; always reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def _wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """True once the server answers PING; False if it exits or stays silent too long."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if _pings(port):
            return True
        time.sleep(0.02)  # the server needs a moment to bind; there is nothing to wait on
    return False


def _pings(port: int) -> bool:
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        client_name=CLIENT_NAME,
        socket_connect_timeout=1,
        # No retries: redis-py's default backs off for seconds on a refused connection,
        # and a server that is still starting is exactly that; the caller polls instead.
        retry=Retry(NoBackoff(), 0),
    )
    with client, contextlib.suppress(redis.RedisError):
        return bool(client.ping())
    return False


def _failure(workdir: Path) -> str:
    """One line saying why the server did not start, from the end of its log."""
    reason = "no answer to PING"
    with contextlib.suppress(OSError):
        lines = [ln for ln in (workdir / "redis.log").read_text().splitlines() if ln.strip()]
        if lines:
            reason = lines[-1].split(" * ", 1)[-1].split(" # ", 1)[-1].strip()
    return f"the embedded redis-server did not start within {START_TIMEOUT_S:g} s: {reason}"


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook asking the kernel to SIGTERM the child when we die."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook
