"""The soak's pure parts: the mix, the per-run checks, CLIENT LIST grouping, the verdict."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from runstream.client.events import StreamEvent
from runstream.soak.checks import RunCheck
from runstream.soak.connections import make_sample, process_key
from runstream.soak.mix import DEFAULT_MIX, Scenario, parse_mix
from runstream.soak.report import baseline_diff, judge
from runstream.soak.state import Problem, SoakState


def test_cli_default_mix_is_the_soak_default() -> None:
    assert parse_mix(DEFAULT_MIX).as_text() == DEFAULT_MIX


def test_mix_leaves_the_rest_to_normal_runs() -> None:
    mix = parse_mix(" disconnect=0.3, stop=0.2 ")
    assert mix.fractions[Scenario.NORMAL] == pytest.approx(0.5)
    assert mix.fractions[Scenario.FAIL] == 0.0
    assert parse_mix("").fractions[Scenario.NORMAL] == 1.0
    # Decimal fractions that add up to exactly 1 on paper are accepted.
    assert parse_mix("disconnect=0.7,stop=0.1,fail=0.1,pubsub_kill=0.1").fractions[
        Scenario.NORMAL
    ] == pytest.approx(0.0)


def test_mix_choices_follow_the_fractions() -> None:
    mix = parse_mix("disconnect=0.5,pubsub_kill=0.25")
    rng = random.Random(7)
    counts = Counter(mix.choose(rng) for _ in range(20_000))
    assert counts[Scenario.DISCONNECT] / 20_000 == pytest.approx(0.5, abs=0.02)
    assert counts[Scenario.PUBSUB_KILL] / 20_000 == pytest.approx(0.25, abs=0.02)
    assert counts[Scenario.NORMAL] / 20_000 == pytest.approx(0.25, abs=0.02)
    assert counts[Scenario.STOP] == counts[Scenario.FAIL] == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus=0.1", "unknown scenario 'bogus'"),
        ("normal=0.1", "unknown scenario 'normal'"),
        ("stop", "expected name=fraction"),
        ("stop=x", "'x' is not a number"),
        ("stop=nan", "not a fraction between 0 and 1"),
        ("stop=1.5", "not a fraction between 0 and 1"),
        ("stop=0.5,stop=0.1", "stop is given twice"),
        ("stop=0.6,fail=0.6", "add up to 1.2, more than 1"),
    ],
)
def test_bad_mixes_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
        parse_mix(text)
    assert "\n" not in str(info.value)


def event(seq: int, type: str = "tick", **data: object) -> StreamEvent:
    return StreamEvent(seq=seq, type=type, data={"type": type, "seq": seq, **data})


def running(seq: int = 1) -> StreamEvent:
    return event(seq, "status", status="running")


def final(seq: int, status: str = "completed") -> StreamEvent:
    return event(seq, "status", status=status)


def test_check_accepts_a_clean_run() -> None:
    check = RunCheck("r")
    for e in [running(), event(2, n=1), event(3, n=2), final(4)]:
        check.accept(e)
    assert check.losses == [] and check.ticks == [1, 2] and check.status == "completed"
    assert check.cursor == 4


def test_check_sees_missing_duplicate_gap_and_late_events() -> None:
    check = RunCheck("r")
    check.accept(running())
    check.accept(event(3, n=2))  # seq 2 never came
    check.accept(event(3, n=2))  # and 3 came twice
    check.accept(event(6, "gap", **{"from": 4, "to": 6}))
    check.accept(final(7))
    check.accept(event(8, n=9))  # after the terminal event
    assert check.losses == [
        "missing seqs 2..2 (next came 3)",
        "duplicate seq 3 (already had up to 3)",
        "gap event: seqs 4..6 exist nowhere any more",
        "event seq 8 (tick) after the terminal event",
    ]
    assert check.gaps == [(4, 6)]


def test_samples_group_by_process_and_leave_out_the_soak() -> None:
    entries = [
        {"name": "runstream:api:a1:cmd"},
        {"name": "runstream:api:a1:cmd"},
        {"name": "runstream:api:a1:pubsub"},
        {"name": "runstream:worker:w1:queue"},
        {"name": "runstream:cli:x:soak"},
        {"name": "runstream:broken"},
        {"name": ""},
        {"name": "someone-else"},
    ]
    sample = make_sample(entries, t=1.0, phase="load", exclude="runstream:cli:x:soak")
    assert sample.processes == {"api:a1": {"cmd": 2, "pubsub": 1}, "worker:w1": {"queue": 1}}
    assert sample.totals == {"api:a1": 3, "worker:w1": 1}
    assert sample.other == {"(unnamed)": 1, "runstream:broken": 1, "someone-else": 1}
    assert process_key("runstream:api:a1:cmd") == ("api:a1", "cmd")
    assert process_key("runstream::a1:cmd") is None


def test_verdict_diff_names_the_process_and_purposes() -> None:
    base = make_sample(
        [{"name": "runstream:worker:w:queue"}, {"name": "runstream:api:a:cmd"}],
        t=0, phase="baseline", exclude="",
    )  # fmt: skip
    after = make_sample(
        [{"name": "runstream:worker:w:queue"}] * 2 + [{"name": "runstream:api:a:cmd"}],
        t=9, phase="settle", exclude="",
    )  # fmt: skip
    assert baseline_diff(base, after) == {
        "worker:w": {"baseline": 1, "now": 2, "purposes": {"queue": {"baseline": 1, "now": 2}}}
    }
    state = SoakState()
    verdict = judge(state, base, after)
    assert not verdict.back_to_baseline and not verdict.passed
    assert "  worker:w: 1 before the load, 2 after the settle (queue 1 -> 2)" in verdict.lines()
    state.settled_after = 1.5
    state.record_loss(Problem(1.0, "normal", "r", "gap"))
    verdict = judge(state, base, base)
    assert verdict.back_to_baseline and verdict.events_lost and not verdict.passed
    assert verdict.lines()[-1] == "passed: false"
