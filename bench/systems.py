"""The two implementations under test and how to start one: Redis, database, API, worker.

Each started system gets its own private redis-server (no persistence) and a fresh
database (a new SQLite file, or a new PostgreSQL database dropped afterwards); API and
worker are child processes of the bench, stopped on the way out.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import pg
from bench.procs import LOOPBACK, Proc, RedisServer, free_port, redis_server, started, wait_http_ok

IMPLEMENTATIONS = ("pattern", "runstream")
REPO_ROOT = Path(__file__).resolve().parent.parent

# Per-principal limits a newer runstream may enforce (DESIGN.md section 6); a load test
# from one anonymous principal must not be refused by them. Unknown ones are ignored.
RUNSTREAM_LOAD_ENV: Mapping[str, str] = {
    "RUNSTREAM_MAX_STREAMS_PER_PRINCIPAL": "100000",
    "RUNSTREAM_MAX_ACTIVE_RUNS_PER_PRINCIPAL": "100000",
    "RUNSTREAM_LOG_LEVEL": "warning",
}


def runstream_executable() -> str:
    """The ``runstream`` script of the venv the bench runs from."""
    beside = Path(sys.executable).parent / "runstream"
    if beside.exists():
        return str(beside)
    found = shutil.which("runstream")
    if found is None:
        raise RuntimeError("no runstream executable next to this Python or on PATH")
    return found


@dataclass(frozen=True)
class Spec:
    """One implementation: its commands and its environment."""

    kind: str
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def api_argv(self, port: int) -> list[str]:
        """The API's command line."""
        if self.kind == "runstream":
            return [runstream_executable(), "api", "--host", LOOPBACK, "--port", str(port)]
        return [
            sys.executable,
            "-m",
            "bench.pattern",
            "api",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
        ]

    def worker_argv(self) -> list[str]:
        """The worker's command line."""
        if self.kind == "runstream":
            return [runstream_executable(), "worker"]
        return [sys.executable, "-m", "bench.pattern", "worker"]

    def env(self, redis_url: str, database_url: str) -> dict[str, str]:
        """The environment both processes get."""
        if self.kind == "runstream":
            base = {"RUNSTREAM_REDIS_URL": redis_url, "RUNSTREAM_DATABASE_URL": database_url}
            return {**RUNSTREAM_LOAD_ENV, **base, **self.extra_env}
        return {
            "PATTERN_REDIS_URL": redis_url,
            "PATTERN_DATABASE_URL": database_url,
            "PYTHONPATH": str(REPO_ROOT),
            **self.extra_env,
        }


class Running:
    """A started system; the worker may be started later (:meth:`start_worker`)."""

    def __init__(
        self, spec: Spec, redis: RedisServer, api: Proc, api_url: str, env: dict[str, str]
    ) -> None:
        self.spec, self.redis, self.api, self.api_url, self.env = spec, redis, api, api_url, env
        self.worker: Proc | None = None
        self.api_ready_s = 0.0
        self._stack = contextlib.ExitStack()
        self._log_dir = api.log.parent

    def start_worker(self) -> Proc:
        """Start the worker (once)."""
        if self.worker is None:
            name = f"{self.spec.kind}-worker"
            self.worker = self._stack.enter_context(
                started(name, self.spec.worker_argv(), self.env, self._log_dir, cwd=REPO_ROOT)
            )
        return self.worker

    def close(self) -> None:
        """Stop the worker if started (the API and Redis are stopped by their managers)."""
        self._stack.close()


@contextlib.contextmanager
def database(kind: str, log_dir: Path, pg_url: str) -> Iterator[str]:
    """A fresh database URL: a new SQLite file, or a new PostgreSQL database."""
    if kind == "sqlite":
        path = log_dir / f"bench-{secrets.token_hex(4)}.db"
        try:
            yield f"sqlite+aiosqlite:///{path.resolve()}"
        finally:
            for leftover in log_dir.glob(path.name + "*"):
                leftover.unlink(missing_ok=True)
        return
    with pg.fresh_database(pg_url) as url:
        yield url


@contextlib.contextmanager
def running_system(
    spec: Spec,
    database_kind: str,
    log_dir: Path,
    *,
    pg_url: str,
    maxclients: int,
    with_worker: bool,
    redis: RedisServer | None = None,
) -> Iterator[Running]:
    """Redis (``redis``, or a private one), a fresh database and the API (and the
    worker), all stopped on exit."""
    with contextlib.ExitStack() as stack:
        if redis is None:
            redis = stack.enter_context(redis_server(f"{spec.kind}-redis", log_dir, maxclients))
        db_url = stack.enter_context(database(database_kind, log_dir, pg_url))
        env = spec.env(redis.url, db_url)
        port = free_port()
        api_cm = started(f"{spec.kind}-api", spec.api_argv(port), env, log_dir, cwd=REPO_ROOT)
        with api_cm as api:
            url = f"http://{LOOPBACK}:{port}"
            system = Running(spec, redis, api, url, env)
            try:
                system.api_ready_s = wait_http_ok(f"{url}/healthz", api, timeout_s=60)
                if with_worker:
                    system.start_worker()
                yield system
            finally:
                system.close()
