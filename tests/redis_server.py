"""A private redis-server for the test session, which tests may kill, restart and inspect."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from runstream.cli.embedded_redis import free_port


@dataclass
class RedisServer:
    """One redis-server process on a free loopback port, without persistence."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (install the redis-server package)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.admin() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port (data is lost)."""
        self.stop()
        self.start()

    def admin(self) -> redis.Redis:
        """A short-lived synchronous client named so it is never counted as runstream's."""
        return redis.Redis(port=self.port, client_name="test-admin", socket_timeout=5)

    def clients(self, prefix: str = "runstream:") -> list[dict[str, str]]:
        """CLIENT LIST entries whose name starts with ``prefix``."""
        with self.admin() as client:
            entries = client.client_list()
        return [e for e in entries if str(e.get("name", "")).startswith(prefix)]

    def client_names(self, prefix: str = "runstream:") -> list[str]:
        return sorted(e["name"] for e in self.clients(prefix))

    def channels(self) -> list[str]:
        """PUBSUB CHANNELS: every channel with at least one subscriber on the server."""
        with self.admin() as client:
            return sorted(c.decode() for c in client.pubsub_channels())
