"""Signal histories: time-bounded, count-bounded, sorted, and cheap to query."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.schemes.history import MAX_HISTORY_SAMPLES, History, SignalSlot, WindowExtreme


def test_keeps_only_the_last_keep_seconds() -> None:
    h = History(keep=1.0)
    for k in range(50):
        h.add(k / 8, k)  # eighths: exact in binary, so the boundary is exact too
    # Samples at t >= 49/8 - 1.0 survive: k = 41 … 49.
    assert h.since(-1.0) == list(range(41, 50))
    assert len(h) == 9
    assert h.since(45 / 8) == [45, 46, 47, 48, 49]


def test_between_is_inclusive_and_sorted() -> None:
    h = History(keep=10.0)
    for k in range(20):
        h.add(k / 10, f"v{k}" if k % 2 else k)
    times, values = h.between(0.5, 0.8)
    assert times == [0.5, 0.6, 0.7, 0.8]
    assert values == ["v5", 6, "v7", 8]
    assert h.has_strings
    assert h.between(5.0, 6.0) == ([], [])


def test_count_cap_and_compaction() -> None:
    h = History(keep=1e9, cap=100)
    for k in range(10_000):
        h.add(float(k), k)
    assert len(h) == 100
    assert h.since(0.0) == list(range(9900, 10_000))
    # Compaction keeps the arrays from growing with the dead prefix.
    assert len(h.times) < 2 * 100 + 300
    assert MAX_HISTORY_SAMPLES >= 1000


def test_clear_and_slot_update() -> None:
    slot = SignalSlot("A", History(keep=5.0))
    assert (slot.value, slot.prev) == (None, None)
    slot.update(1.0, 3)
    slot.update(2.0, 4)
    assert (slot.prev, slot.prev_t, slot.value, slot.t) == (3, 1.0, 4, 2.0)
    assert slot.history is not None and len(slot.history) == 2
    slot.history.clear()
    assert len(slot.history) == 0 and not slot.history.has_strings
    assert "A=4" in repr(slot)


# --- running window extremes ------------------------------------------------------------------

_steps = st.lists(
    st.one_of(
        st.tuples(
            st.floats(0.0, 0.5),
            st.one_of(st.integers(-50, 50), st.floats(-1e6, 1e6), st.just("OFF")),
        ),
        st.just("clear"),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(_steps, st.sampled_from([0.05, 0.3, 1.0, 2.5]), st.integers(3, 64), st.booleans())
def test_running_extreme_equals_a_scan_of_the_window(
    steps: list[tuple[float, float | int | str] | str], span: float, cap: int, late: bool
) -> None:
    # The monotonic queue must answer exactly what max()/min() over the window's numeric samples
    # would, through count caps, compaction, value-table names and clears; *late* attaches the
    # extremes after some samples exist (a scheme replaced while the history is kept).
    h = History(keep=2.5, cap=cap)

    def attach() -> dict[bool, WindowExtreme]:
        return {True: h.extreme(span, largest=True), False: h.extreme(span, largest=False)}

    extremes = {} if late else attach()
    t = 0.0
    for i, step in enumerate(steps):
        if late and i == len(steps) // 2:
            extremes = attach()
        if step == "clear":
            h.clear()
            continue
        assert isinstance(step, tuple)
        dt, value = step
        t += dt
        h.add(t, value)
        window = [v for v in h.since(t - span) if not isinstance(v, str)]
        for largest, extreme in extremes.items():
            expected = (max if largest else min)(window) if window else None
            assert extreme.value(t) == expected


def test_running_extreme_skips_nan_and_is_shared() -> None:
    h = History(keep=5.0)
    top = h.extreme(5.0, largest=True)
    assert h.extreme(5.0, largest=True) is top
    h.add(0.0, 1.0)
    h.add(0.1, float("nan"))
    h.add(0.2, 0.5)
    assert top.value(0.2) == 1.0
    assert top.value(5.05) == 0.5  # the 1.0 aged out; the NaN never counted
    h.retain_extremes(set())
    assert h.extremes == []
