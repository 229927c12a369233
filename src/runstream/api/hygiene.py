"""What a request body may hold before anything is stored: bounded, finite, printable.

JSON parsers accept more than the store and the stream can carry back: NaN and Infinity
(not JSON at all, so a stored run could not be served again), integers beyond 64 bits
(orjson cannot write them), NUL characters
(PostgreSQL's JSON refuses them), nesting deeper than orjson's 255 levels (a run stored
that way breaks every later listing). Each is a 422 here, before the run exists.
"""

from __future__ import annotations

import math
from typing import Any, Final

import orjson

from runstream.api.errors import ApiError

MAX_DEPTH: Final = 32
"""How deeply ``input`` and ``metadata`` may nest (objects and arrays)."""
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**64 - 1
"""The integers orjson (the store's and the stream's encoder) can write."""


def check_json_value(value: Any, where: str, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise a 422 ApiError when ``value`` nests deeper than ``max_depth``, holds a
    non-finite number, or holds a NUL character in a key or a string."""
    # Iterative, so a hostile depth cannot reach Python's recursion limit here.
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise _invalid(where, f"nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            if isinstance(item, dict):
                for key in item:
                    _check_text(key, where)
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, float) and not math.isfinite(item):
            raise _invalid(where, "NaN and Infinity are not JSON numbers")
        elif isinstance(item, int) and not MIN_INT <= item <= MAX_INT:
            raise _invalid(where, "integers must fit in 64 bits")


def check_metadata(metadata: dict[str, Any], max_bytes: int) -> None:
    """Raise a 422 ApiError when ``metadata`` is invalid (see :func:`check_json_value`) or
    over ``max_bytes`` (``RUNSTREAM_MAX_METADATA_BYTES``) once serialized."""
    check_json_value(metadata, "metadata")
    size = len(orjson.dumps(metadata))
    if size > max_bytes:
        raise _invalid(
            "metadata", f"{size} bytes serialized, over RUNSTREAM_MAX_METADATA_BYTES={max_bytes}"
        )


def check_text(value: str | None, where: str) -> None:
    """Raise a 422 ApiError when ``value`` holds a NUL character."""
    if value is not None:
        _check_text(value, where)


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise _invalid(where, "NUL characters are not accepted")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"): no UTF-8 can carry it
            raise _invalid(where, "text must be valid Unicode (no lone surrogates)") from None


def _invalid(where: str, problem: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{where}: {problem}")
