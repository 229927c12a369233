"""Property tests of what the API decodes from clients: cursors, Last-Event-ID, signed
values and JSON bodies. Whatever the input, the answer is a value or a 422, never
another exception."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstream.api.errors import ApiError
from runstream.api.hygiene import MAX_DEPTH, check_json_value
from runstream.api.runs import decode_cursor, encode_cursor
from runstream.api.signing import sign, unsign
from runstream.api.stream import MAX_CURSOR, parse_start
from runstream.config import load_settings
from runstream.models import Run, RunStatus

SETTINGS = load_settings(api_keys="a-key-of-sixteen-chars=alice")
KEY = b"k" * 32

moments = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(moment=moments, run_id=st.uuids())
def test_a_cursor_decodes_to_the_run_it_was_made_from(moment: datetime, run_id: uuid.UUID) -> None:
    run = Run(
        id=str(run_id),
        principal="p",
        agent="echo",
        status=RunStatus.QUEUED,
        input={},
        created_at=moment,
    )
    assert decode_cursor(SETTINGS, encode_cursor(SETTINGS, run)) == (moment, str(run_id))


@given(text=st.text(max_size=300))
def test_any_other_cursor_is_a_422(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_cursor(SETTINGS, text)
    assert caught.value.status == 422


@given(
    value=st.recursive(
        st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(), st.lists, max_leaves=5
    )
)
def test_a_signed_value_comes_back_and_a_changed_one_does_not(value: Any) -> None:
    signed = sign(KEY, value)
    assert unsign(KEY, signed) == value
    with pytest.raises(ValueError):
        unsign(b"another-key", signed)


@given(text=st.text(max_size=200))
def test_unsign_of_anything_is_a_value_error_or_a_value(text: str) -> None:
    with contextlib.suppress(ValueError):
        unsign(KEY, text)


@given(header=st.text(max_size=40), after=st.none() | st.integers(0, MAX_CURSOR).map(str))
def test_last_event_id_is_a_cursor_in_range_or_a_422(header: str, after: str | None) -> None:
    try:
        start = parse_start(header, after, None)
    except ApiError as exc:
        assert exc.status == 422
        return
    assert 0 <= start.seq <= MAX_CURSOR and not start.now
    if header.strip():
        assert start.seq == int(header.strip())
    else:
        assert start.seq == int(after or 0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=200)
@given(value=json_values)
def test_a_body_that_passes_the_checks_can_be_stored_and_served(value: Any) -> None:
    try:
        check_json_value(value, "input")
    except ApiError as exc:
        assert exc.status == 422
        return
    assert orjson.loads(orjson.dumps(value)) is not None or value is None


@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1, 10_000])
def test_nesting_is_checked_without_recursion(depth: int) -> None:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    if depth <= MAX_DEPTH:
        check_json_value(value, "input")
    else:
        with pytest.raises(ApiError):
            check_json_value(value, "input")
