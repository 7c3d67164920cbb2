"""Property tests of job-argument encoding: the fast path for flat scalar arguments gives exactly what
the full walk gives (the same JSON text and value, or the same error)."""

from __future__ import annotations

import enum
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nursery_worker._json import encode_args, encode_args_text, encode_args_value


class Colour(enum.IntEnum):
    RED = 1


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities included: both paths must refuse them
    st.text(),  # NUL characters included
    st.sampled_from(["\ud800", "a\\u0000b", "\x00", "tab\t", "\\"]),  # a lone surrogate, look-alikes
    st.just(Colour.RED),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
)
arguments = st.dictionaries(st.text(min_size=1, max_size=5), values, max_size=5)


def outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)


@given(arguments, st.sampled_from([40, 1_000_000]))
def test_the_fast_path_encodes_exactly_like_the_full_walk(kwargs: dict[str, Any], max_bytes: int) -> None:
    """encode_args_value returns encode_args's text and its decoded value, or raises the same error."""

    def full() -> tuple[str, Any]:
        text = encode_args(kwargs, max_bytes=max_bytes)
        return text, json.loads(text)

    got = outcome(lambda: encode_args_value(kwargs, max_bytes=max_bytes))
    want = outcome(full)
    assert got[0] == want[0]
    if got[0] == "ok":
        text, value = got[1]
        assert (text, value) == want[1]
        assert [type(v) for v in value.values()] == [type(v) for v in want[1][1].values()]
    else:
        assert got[1] == want[1]


@given(arguments, st.sampled_from([40, 1_000_000]))
def test_the_bulk_fast_path_encodes_exactly_like_the_full_walk(kwargs: dict[str, Any], max_bytes: int) -> None:
    """encode_args_text (defer_batch's encoder) returns encode_args's text, or raises the same error."""
    assert outcome(lambda: encode_args_text(kwargs, max_bytes=max_bytes)) == outcome(
        lambda: encode_args(kwargs, max_bytes=max_bytes)
    )
