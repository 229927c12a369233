"""A short real soak: a private redis-server, ``runstream api`` and ``runstream worker`` as
processes, then ``runstream soak`` with every fault in the mix, as a user would run it."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.cli import background, cli_env, free_port, run_cli, wait_healthy
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)

API, WORKER = "sa", "sw"
MIX = "disconnect=0.25,stop=0.2,fail=0.15,pubsub_kill=0.1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_short_soak_with_every_fault_passes(private_redis: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = {
        "RUNSTREAM_REDIS_URL": private_redis.url,
        "RUNSTREAM_DATABASE_URL": f"sqlite:///{tmp_path / 'soak.db'}",
        # Idle command connections are trimmed back to the one warm connection quickly,
        # and a killed pub/sub connection is noticed and rebuilt quickly.
        "RUNSTREAM_REDIS_IDLE_S": "0.5",
        "RUNSTREAM_PUBSUB_PING_S": "0.5",
    }
    out = tmp_path / "report"
    with (
        background(
            "api",
            "--port",
            str(port),
            env=cli_env(**common, RUNSTREAM_INSTANCE=API),
            workdir=tmp_path,
        ) as api,
        background(
            "worker", env=cli_env(**common, RUNSTREAM_INSTANCE=WORKER), workdir=tmp_path
        ) as worker,
    ):
        wait_healthy(url, api)
        soak_args = [
            "soak",
            "--api", url,
            "--redis-url", private_redis.url,
            "--duration", "8",
            "--concurrency", "6",
            "--settle", "20",
            # A run takes well under 3 s here: 30 s without its end is a hung run, and
            # the test fails in time to say so.
            "--run-timeout", "30",
            "--mix", MIX,
            "--out", str(out),
        ]  # fmt: skip
        started = time.monotonic()
        with background(*soak_args, env=cli_env(), workdir=tmp_path) as soak:
            # The soak's own connections, watched from outside while it runs.
            own_peak = 0
            while soak.alive() and time.monotonic() - started < 100:
                own_peak = max(own_peak, len(private_redis.client_names("runstream:cli:")))
                time.sleep(0.1)
            code = soak.process.wait(10)
        took = time.monotonic() - started
        output = f"stdout:\n{soak.stdout}\nstderr:\n{soak.stderr}"
        assert code == 0, output
        assert worker.alive() and api.alive(), f"{output}\napi:\n{api.stderr}"
        for process in (worker, api):
            assert process.signal_and_wait(signal.SIGTERM, 30) == 0

    report = json.loads((out / "report.json").read_text())
    verdict = report["verdict"]
    assert list(report)[-1] == "verdict"
    assert verdict["passed"] is True, output
    assert verdict["back_to_baseline"] is True, output
    assert verdict["events_lost"] is False, output
    assert verdict["errors"] == 0 and report["errors"] == [], output
    assert (out / "connections.png").read_bytes()[:8] == PNG_MAGIC

    keys = {f"api:{API}", f"worker:{WORKER}"}
    assert set(report["baseline"]["totals"]) == keys
    assert all(keys <= set(s["totals"]) for s in report["samples"]), "a process went missing"
    phases = {s["phase"] for s in report["samples"]}
    assert phases == {"baseline", "load", "settle"}
    # Every fault was played, and pub/sub really was killed.
    for scenario, tally in report["scenarios"].items():
        assert tally["done"] > 0, (scenario, tally)
        assert tally["done"] == tally["passed"], (scenario, tally)
    assert report["scenarios"]["pubsub_kill"]["pubsub_kills"] > 0
    assert report["scenarios"]["disconnect"]["resumes"] > 0
    # The soak held one connection of its own, left it out of the counts and closed it.
    assert own_peak == 1, own_peak
    assert not any(k.startswith("cli:") for s in report["samples"] for k in s["totals"])
    assert private_redis.client_names("runstream:cli:") == []
    # The verdict is the last thing on the terminal.
    assert soak.stdout.rstrip().splitlines()[-1] == "passed: true", output

    total = report["total"]
    print(
        f"\nsoak in {took:.1f} s, seed {report['seed']}: {total['done']} runs "
        f"({json.dumps({k: v['done'] for k, v in report['scenarios'].items()})}), "
        f"{total['events']} events, {total['retries']} retries, {total['reconnects']} "
        f"reconnects, {total['pubsub_kills']} pub/sub kills, {report['stalls_total']} stalls "
        f"(longest wait {total['longest_wait_s']} s); baseline {report['baseline']['totals']}, "
        f"max { ({k: v['total'] for k, v in report['max_connections'].items()}) }, back to "
        f"baseline after {verdict['settled_after_s']} s"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mix", "bogus=0.1"], "--mix: unknown scenario 'bogus'"),
        (["--mix", "disconnect=0.6,stop=0.3,fail=0.2"], "add up to 1.1, more than 1"),
        (["--mix", "stop=lots"], "--mix: stop: 'lots' is not a number"),
        (["--mix", "stop=0.1,stop=0.2"], "--mix: stop is given twice"),
        (["--mix", "fail=-0.1"], "not a fraction between 0 and 1"),
        (["--duration", "0"], "--duration must be more than 0"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    # Nothing listens on port 1: the options must be refused before anything is contacted.
    result = run_cli(
        "soak", "--redis-url", "redis://127.0.0.1:1/0", "--out", str(tmp_path / "r"), *args,
        env=cli_env(), timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runstream: "), result.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / "r").exists()


def test_redis_url_is_required(tmp_path: Path) -> None:
    result = run_cli("soak", "--duration", "1", env=cli_env(), timeout=30)
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        "runstream: --redis-url (or RUNSTREAM_REDIS_URL) is required: the soak samples "
        "CLIENT LIST and kills pub/sub connections on the system's Redis"
    ]


def test_unreachable_redis_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = run_cli(
        "soak", "--redis-url", f"redis://127.0.0.1:{free_port()}/0", "--out",
        str(tmp_path / "r"), env=cli_env(), timeout=30,
    )  # fmt: skip
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runstream: cannot reach Redis at"), lines
