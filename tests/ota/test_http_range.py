"""Range and Content-Range parsing (RFC 9110 §14): examples and properties over any input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota.http_range import (
    NOT_SATISFIABLE,
    ByteRange,
    ContentRange,
    parse_content_range,
    parse_range,
)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-99", 1000, ByteRange(0, 100)),
        ("bytes=100-199", 1000, ByteRange(100, 200)),
        ("bytes=900-", 1000, ByteRange(900, 1000)),
        ("bytes=900-5000", 1000, ByteRange(900, 1000)),  # clamped to the end
        ("bytes=-100", 1000, ByteRange(900, 1000)),
        ("bytes=-5000", 1000, ByteRange(0, 1000)),
        ("bytes=999-999", 1000, ByteRange(999, 1000)),
        ("BYTES=1-2", 1000, ByteRange(1, 3)),
        ("bytes= 1-2 ,", 1000, ByteRange(1, 3)),  # empty list elements are allowed
        ("bytes=1000-", 1000, NOT_SATISFIABLE),
        ("bytes=5000-6000", 1000, NOT_SATISFIABLE),
        ("bytes=-0", 1000, NOT_SATISFIABLE),
        ("bytes=0-", 0, NOT_SATISFIABLE),
        ("bytes=-1", 0, NOT_SATISFIABLE),
        (None, 1000, None),
        ("bytes=5-2", 1000, None),  # malformed: ignored, the whole file is sent
        ("bytes=-", 1000, None),
        ("bytes=0-1,5-9", 1000, None),  # several ranges: served whole
        ("items=0-1", 1000, None),
        ("bytes 0-1", 1000, None),
        ("bytes=1_000-", 5000, None),  # int() would take it
        ("bytes=١-٢", 1000, None),  # so would it these (Arabic-Indic digits)
        ("bytes=+1-2", 1000, None),
        ("bytes=0x10-", 1000, None),
        ("bytes=" + "9" * 30 + "-", 1000, None),
    ],
)
def test_examples(header: str | None, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


def test_content_range_text() -> None:
    assert ByteRange(100, 200).content_range(1000) == "bytes 100-199/1000"
    assert ByteRange(100, 200).length == 100


@given(st.one_of(st.none(), st.text(max_size=60)), st.integers(min_value=0, max_value=2**40))
def test_any_header_gives_a_valid_answer(header: str | None, size: int) -> None:
    answer = parse_range(header, size)
    if isinstance(answer, ByteRange):
        assert 0 <= answer.start < answer.stop <= size


_POS = st.integers(min_value=0, max_value=10**6).map(str)


@given(
    st.one_of(
        st.tuples(_POS, _POS).map(lambda p: f"{p[0]}-{p[1]}"),
        _POS.map(lambda p: f"{p}-"),
        _POS.map(lambda p: f"-{p}"),
    ),
    st.integers(min_value=0, max_value=2 * 10**6),
)
def test_well_formed_single_ranges_follow_the_rfc(spec: str, size: int) -> None:
    answer = parse_range(f"bytes={spec}", size)
    first, last = spec.split("-")
    if first and last and int(last) < int(first):
        assert answer is None
    elif not first:
        suffix = int(last)
        expected = (
            NOT_SATISFIABLE if suffix == 0 or size == 0 else ByteRange(max(0, size - suffix), size)
        )
        assert answer == expected
    elif int(first) >= size:
        assert answer is NOT_SATISFIABLE
    else:
        stop = size if not last else min(int(last) + 1, size)
        assert answer == ByteRange(int(first), stop)


@given(st.integers(min_value=1, max_value=2**50), st.data())
def test_content_range_round_trip(size: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(min_value=0, max_value=size - 1))
    stop = data.draw(st.integers(min_value=start + 1, max_value=size))
    text = ByteRange(start, stop).content_range(size)
    assert parse_content_range(text) == ContentRange(start, stop, size)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-9/10", ContentRange(0, 10, 10)),
        ("bytes 5-9/*", ContentRange(5, 10, None)),
        (" bytes 1-1/2 ", ContentRange(1, 2, 2)),
        ("bytes */10", None),
        ("bytes 9-5/10", None),
        ("bytes 0-10/10", None),
        ("bytes 0-9", None),
        ("bits 0-9/10", None),
        (None, None),
    ],
)
def test_content_range_examples(value: str | None, expected: ContentRange | None) -> None:
    assert parse_content_range(value) == expected


@given(st.text(max_size=60))
def test_any_content_range_gives_a_valid_answer(value: str) -> None:
    answer = parse_content_range(value)
    if answer is not None:
        assert 0 <= answer.start < answer.stop
        assert answer.size is None or answer.stop <= answer.size
