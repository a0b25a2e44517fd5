"""Signal histories: time-bounded, count-bounded, sorted, and cheap to query."""

from __future__ import annotations

from agent.schemes.history import MAX_HISTORY_SAMPLES, History, SignalSlot


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
