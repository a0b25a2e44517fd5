"""Last-known state: published on change, rate-limited per signal, never losing the last value."""

from __future__ import annotations

import itertools
import math

import pytest

from agent.schemes import LastKnownState, Sample


def test_publishes_changes_rate_limited_and_catches_up() -> None:
    state = LastKnownState(["M.A", "can0:M.B", "C"], min_interval_ms=1000)
    assert state.signals_used() == {"M.A", "can0:M.B", "C"}
    assert state.feed(0.0, "can0", "M", {"A": 1, "B": 2}) == [
        Sample("M.A", 0.0, 1),
        Sample("can0:M.B", 0.0, 2),
    ]
    assert state.feed(0.1, "can0", "M", {"A": 1, "B": 2}) == []  # no change
    assert state.next_due() is None
    # A changes too soon: held back, not lost.
    assert state.feed(0.2, "can0", "M", {"A": 2}) == []
    assert state.feed(0.3, "can0", "M", {"A": 3}) == []
    assert state.next_due() == pytest.approx(1.0)
    assert state.poll(0.9) == []
    assert state.poll(1.0) == [Sample("M.A", 0.3, 3)]  # the newest value, with its own time
    assert state.poll(5.0) == []
    # The next frame after the interval publishes at once.
    assert state.feed(2.5, "can0", "M", {"A": 4}) == [Sample("M.A", 2.5, 4)]
    # A change that goes back to the published value before the interval passes says nothing.
    assert state.feed(2.6, "can0", "M", {"A": 5}) == []
    assert state.feed(2.7, "can0", "M", {"A": 4}) == []
    assert state.poll(10.0) == []
    # Bus-qualified names only see their bus; bare names see every message.
    assert state.feed(11.0, "can1", "M", {"B": 9, "C": "on"}) == [Sample("C", 11.0, "on")]
    assert state.snapshot() == {
        "M.A": Sample("M.A", 2.7, 4),
        "can0:M.B": Sample("can0:M.B", 0.1, 2),
        "C": Sample("C", 11.0, "on"),
    }


def test_flicker_costs_one_publication_per_interval() -> None:
    state = LastKnownState(["M.A"], min_interval_ms=500)
    published = []
    for k in range(1000):  # 10 s of a value flickering every 10 ms
        published += state.feed(k / 100, "can0", "M", {"A": k % 2})
        published += state.poll(k / 100)
    assert 19 <= len(published) <= 21
    assert all(b.t - a.t >= 0.49 for a, b in itertools.pairwise(published))


def test_nan_and_a_new_clock() -> None:
    state = LastKnownState(["A"], min_interval_ms=1000)
    assert len(state.feed(100.0, "can0", "M", {"A": math.nan})) == 1
    assert state.feed(200.0, "can0", "M", {"A": math.nan}) == []  # NaN again is no change
    # The clock steps back an hour: old publication times must not hold values back.
    assert state.feed(200.0 - 3600, "can0", "M", {"A": 1}) == [Sample("A", 200.0 - 3600, 1)]
    with pytest.raises(ValueError):
        LastKnownState(["A"], min_interval_ms=-1)
    with pytest.raises(ValueError):
        LastKnownState(["A..B"])
