"""Attack transforms (sim.attacks): invariants of every kind, then each kind's own promises."""

from __future__ import annotations

import functools
import itertools
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.canlog import read_log
from agent.errors import UsageError
from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
from can_dbc.integrity import IntegritySpec
from sim import TrafficGenerator, VehicleModel, load_scenario
from sim.attacks import (
    ATTACK_KINDS,
    Attack,
    AttackStream,
    DiagnosticAbuse,
    Flooding,
    Fuzzing,
    LabelledFrame,
    Masquerade,
    Replay,
    Spoofing,
    Suspension,
    attack_frames,
)
from sim.errors import SimError
from sim.wire import frame_bits

RAV4 = Path(__file__).resolve().parents[1] / "data" / "rav4-2018-comma2k19"
T0 = 1_700_000_000.0
# id → (period s, channel) of the synthetic stream; 0x100 is on both buses.
SYNTHETIC = {
    (0x100, "can0"): 0.010,
    (0x200, "can0"): 0.020,
    (0x300, "can0"): 0.100,
    (0x100, "can1"): 0.050,
}


def synthetic(seed: int, seconds: float = 4.0) -> list[can.Message]:
    """Periodic frames with late jitter (up to 30 % of the period) and a counter in byte 0."""
    rng = random.Random(seed)
    frames: list[can.Message] = []
    for (frame_id, channel), period in SYNTHETIC.items():
        phase = rng.uniform(0, period)
        k = 0
        while (t := phase + k * period) < seconds:
            data = bytes((k & 0xFF, frame_id >> 8, rng.randrange(256), 0, 0, 0, 0, 0))
            jittered = t + rng.uniform(0, 0.3 * period)
            frames.append(
                can.Message(
                    timestamp=T0 + jittered,
                    arbitration_id=frame_id,
                    is_extended_id=False,
                    data=data,
                    channel=channel,
                )
            )
            k += 1
    frames.sort(key=lambda m: m.timestamp)
    return frames


@functools.cache
def sample_db() -> Any:
    return load_dbc(SAMPLE_VEHICLE_DBC).database


@functools.cache
def sample_traffic(seconds: float = 12.0) -> tuple[can.Message, ...]:
    """The sample vehicle driving the city scenario (its frames are never modified by attacks)."""
    model = VehicleModel(load_scenario("city"), seed=2)
    gen = TrafficGenerator({"can0": [sample_db()]}, model, seed=2, start_time=T0)
    return tuple(gen.frames_until(seconds))


def run(frames: Sequence[can.Message], attack: Attack) -> tuple[list[LabelledFrame], AttackStream]:
    stream = AttackStream(attack)
    return list(stream.apply(frames)), stream


def key(frame: can.Message) -> tuple[Any, ...]:
    return (frame.timestamp, frame.channel, frame.arbitration_id, bytes(frame.data))


def check_invariants(
    frames: Sequence[can.Message], attack: Attack, out: list[LabelledFrame], stream: AttackStream
) -> None:
    origin = frames[0].timestamp
    start, end = origin + attack.start, origin + attack.end
    times = [f.frame.timestamp for f in out]
    assert times == sorted(times), "time order"
    originals = [f.frame for f in out if f.attack is None]
    injected = [f.frame for f in out if f.attack is not None]
    # Originals come out as the very objects that went in, in their order, minus removed ones.
    ids_in = {id(m) for m in frames}
    assert all(id(m) in ids_in for m in originals)
    assert not any(id(m) in ids_in for m in injected)
    positions = {id(m): i for i, m in enumerate(frames)}
    order = [positions[id(m)] for m in originals]
    assert order == sorted(order)
    kept = {id(o) for o in originals}
    removed = [m for m in frames if id(m) not in kept]
    assert all(start <= m.timestamp < end for m in removed), "removed only inside the window"
    assert len(removed) == stream.removed
    # Labels point exactly at the injected frames, all inside the window and the stream.
    assert all(f.attack == attack.kind for f in out if f.attack is not None)
    assert len(injected) == stream.injected
    assert all(start - 1e-9 <= m.timestamp < end for m in injected)
    assert all(m.timestamp <= frames[-1].timestamp for m in injected)
    assert stream.frames_in == len(frames)
    assert stream.frames_out == len(out)


def synthetic_attack(kind: str, start: float, duration: float, seed: int) -> Attack:
    common: dict[str, Any] = {"start": start, "duration": duration, "seed": seed}
    if kind == "flooding":
        return Flooding(**common, load=0.3)
    if kind == "fuzzing":
        return Fuzzing(**common, rate=500.0)
    if kind == "spoofing":
        return Spoofing(**common, target_id=0x200)
    if kind == "replay":
        return Replay(**common, target_ids=(0x100,), source_start=start / 2)
    if kind == "suspension":
        return Suspension(**common, target_ids=(0x100, 0x300))
    if kind == "masquerade":
        return Masquerade(**common, target_id=0x200)
    return DiagnosticAbuse(**common, interval=0.25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(ATTACK_KINDS)),
    stream_seed=st.integers(0, 1000),
    start=st.floats(0.3, 3.0),
    duration=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**32),
)
def test_every_kind_keeps_the_invariants(
    kind: str, stream_seed: int, start: float, duration: float, seed: int
) -> None:
    frames = synthetic(stream_seed)
    attack = synthetic_attack(kind, start, duration, seed)
    out, stream = run(frames, attack)
    check_invariants(frames, attack, out, stream)
    # Deterministic: the same stream, attack and seed give the same output.
    again, _ = run(synthetic(stream_seed), attack)
    assert [(key(f.frame), f.attack) for f in again] == [(key(f.frame), f.attack) for f in out]


@settings(max_examples=40, deadline=None)
@given(
    stream_seed=st.integers(0, 1000),
    start=st.floats(0.0, 3.5),
    duration=st.floats(0.01, 3.0),
    ids=st.sets(st.sampled_from([0x100, 0x200, 0x300, 0x555]), min_size=1),
)
def test_suspension_removes_exactly_the_targets_frames_in_the_window(
    stream_seed: int, start: float, duration: float, ids: set[int]
) -> None:
    frames = synthetic(stream_seed)
    attack = Suspension(start=start, duration=duration, target_ids=tuple(sorted(ids)))
    out, stream = run(frames, attack)
    origin = frames[0].timestamp
    # Without a channel, a target id is matched on the bus it is first seen on (0x100 is on both).
    first_bus: dict[int, str] = {}
    for m in frames:
        first_bus.setdefault(m.arbitration_id, str(m.channel))
    expected = [
        m
        for m in frames
        if m.arbitration_id in ids
        and m.channel == first_bus[m.arbitration_id]
        and start <= m.timestamp - origin < start + duration  # as the stream computes it
    ]
    kept = {id(f.frame) for f in out}
    assert [m for m in frames if id(m) not in kept] == expected
    assert stream.injected == 0
    assert all(f.attack is None for f in out)


@settings(max_examples=40, deadline=None)
@given(
    start=st.floats(1.0, 5.0),
    duration=st.floats(0.5, 5.0),
    seed=st.integers(0, 2**32),
    jitter=st.floats(0.0, 0.5),
)
def test_masquerade_keeps_period_counter_and_checksum(
    start: float, duration: float, seed: int, jitter: float
) -> None:
    frames = sample_traffic()
    db = sample_db()
    message = db.get_message_by_frame_id(0xB0)
    attack = Masquerade(
        start=start, duration=duration, seed=seed, target_id=0xB0, message=message, jitter=jitter
    )
    out, stream = run(frames, attack)
    check_invariants(frames, attack, out, stream)
    spec = IntegritySpec.for_message(message)
    assert spec is not None and spec.algorithm == "crc8_sae_j1850"
    origin = frames[0].timestamp
    lo, hi = origin + start, origin + start + duration
    real = [m for m in frames if m.arbitration_id == 0xB0]
    before = [m for m in real if m.timestamp < lo]
    # Every real frame of the id inside the window is gone; nothing else is.
    assert stream.removed == sum(1 for m in real if lo <= m.timestamp < hi)
    after = [f.frame for f in out if f.frame.arbitration_id == 0xB0 and lo <= f.frame.timestamp]
    after = [m for m in after if m.timestamp < hi]
    forged_ids = {id(f.frame) for f in out if f.attack == "masquerade"}
    assert after and all(id(m) in forged_ids for m in after)
    period = (before[-1].timestamp - before[0].timestamp) / (len(before) - 1)
    assert period == pytest.approx(0.010, rel=0.01)  # GenMsgCycleTime 10 ms, late jitter 3 %
    # Its own timing: each forged frame sits in its slot of the real sender's grid, late by at
    # most half a period (and by about the jitter asked for).
    grid0 = before[-1].timestamp
    slots = [(m.timestamp - grid0) / period for m in after]
    for i, slot in enumerate(slots):
        assert round(slot - 0.25) == round(slots[0] - 0.25) + i
        assert -1e-4 <= slot - round(slot - 0.25) <= 0.5 + 1e-4
    intervals = [b.timestamp - a.timestamp for a, b in itertools.pairwise(after)]
    if len(intervals) > 20:
        assert statistics.mean(intervals) == pytest.approx(period, rel=0.05)
    # Counter: continues the real sender's, one per slot; checksum valid; value forged.
    last_counter = spec.read_counter(before[-1].data)
    assert last_counter is not None
    first_slot = round(slots[0] - 0.25)
    for i, m in enumerate(after):
        assert spec.read_counter(m.data) == (last_counter + first_slot + i) % 16
        assert spec.verify(m.data) is True
        assert db.decode_message(0xB0, bytes(m.data))["ESC_VehSpd"] == pytest.approx(300.0)


def test_masquerade_needs_the_sender_seen_before_the_start() -> None:
    frames = synthetic(1)
    with pytest.raises(SimError, match=r"masquerade: id 0x555 sent no frame before"):
        run(frames, Masquerade(start=1.0, target_id=0x555))
    with pytest.raises(SimError, match="sent no frame before the attack starts at 0 s"):
        run(frames, Masquerade(start=0.0, target_id=0x100))


def test_spoofing_interleaves_with_the_real_sender_and_forges_the_speed() -> None:
    frames = sample_traffic()
    db = sample_db()
    message = db.get_message_by_frame_id(0xB0)
    attack = Spoofing(start=2.0, duration=4.0, target_id=0xB0, message=message, value=180.0)
    out, stream = run(frames, attack)
    check_invariants(frames, attack, out, stream)
    spec = IntegritySpec.for_message(message)
    assert spec is not None
    of_id = [f for f in out if f.frame.arbitration_id == 0xB0]
    real = [f.frame for f in of_id if f.attack is None]
    assert real == [m for m in frames if m.arbitration_id == 0xB0]  # the sender is untouched
    forged = [f.frame for f in of_id if f.attack == "spoofing"]
    assert len(forged) == pytest.approx(400, abs=2)  # the real sender's rate (100/s) for 4 s
    # Two streams of one id interleave: forged and real alternate inside the window.
    inside = [f.attack for f in of_id if 2.0 <= f.frame.timestamp - frames[0].timestamp < 6.0]
    switches = sum(1 for a, b in itertools.pairwise(inside) if a != b)
    assert switches > 300
    last_real: can.Message | None = None
    for f in of_id:
        if f.attack is None:
            last_real = f.frame
            continue
        assert db.decode_message(0xB0, bytes(f.frame.data))["ESC_VehSpd"] == 180.0
        assert spec.verify(f.frame.data) is True
        assert last_real is not None
        previous = spec.read_counter(last_real.data)
        assert previous is not None
        assert spec.read_counter(f.frame.data) == (previous + 1) % 16


def test_flooding_fills_its_share_of_the_bus() -> None:
    frames = synthetic(3)
    attack = Flooding(start=1.0, duration=2.0, load=0.25)
    out, stream = run(frames, attack)
    check_invariants(frames, attack, out, stream)
    flood = [f.frame for f in out if f.attack]
    bits = frame_bits(0, False, bytes(8))[0]
    assert len(flood) == pytest.approx(0.25 * 500_000 / bits * 2.0, abs=1)
    assert {(m.arbitration_id, bytes(m.data), m.channel) for m in flood} == {(0, bytes(8), "can0")}
    assert stream.describe()["parameters"]["rate"] == pytest.approx(0.25 * 500_000 / bits)


def test_flooding_rejects_more_than_the_wire_carries() -> None:
    with pytest.raises(UsageError, match="more than the 500 kbit/s bus"):
        Flooding(rate=10_000)
    with pytest.raises(UsageError, match=r"load 1.5 must be in \(0, 1\]"):
        Flooding(load=1.5)


def test_fuzzing_sends_random_ids_and_data_in_range() -> None:
    frames = synthetic(4)
    attack = Fuzzing(start=0.5, duration=2.0, rate=400, id_min=0x600, id_max=0x6FF, seed=9)
    out, stream = run(frames, attack)
    check_invariants(frames, attack, out, stream)
    fuzz = [f.frame for f in out if f.attack]
    assert len(fuzz) == 800
    assert all(0x600 <= m.arbitration_id <= 0x6FF and len(m.data) == m.dlc <= 8 for m in fuzz)
    assert len({m.arbitration_id for m in fuzz}) > 200
    assert {m.dlc for m in fuzz} == set(range(9))
    other, _ = run(frames, Fuzzing(start=0.5, duration=2.0, rate=400, seed=10))
    assert [key(f.frame) for f in other if f.attack] != [key(m) for m in fuzz]


def test_replay_resends_the_earlier_window_shifted() -> None:
    frames = synthetic(5)
    attack = Replay(start=2.5, duration=1.0, source_start=0.5, target_ids=(0x200,))
    out, stream = run(frames, attack)
    check_invariants(frames, attack, out, stream)
    origin = frames[0].timestamp
    source = [
        m
        for m in frames
        if m.arbitration_id == 0x200 and 0.5 <= m.timestamp - origin < 1.5 and m.channel == "can0"
    ]
    replayed = [f.frame for f in out if f.attack]
    assert [bytes(m.data) for m in replayed] == [bytes(m.data) for m in source]
    for old, new in zip(source, replayed, strict=True):
        assert new.timestamp - old.timestamp == pytest.approx(2.0)
        assert new.arbitration_id == 0x200 and new is not old


def test_replay_of_every_id_defaults_to_the_window_before() -> None:
    frames = synthetic(6)
    out, stream = run(frames, Replay(start=2.0, duration=1.0))
    origin = frames[0].timestamp
    assert stream.describe()["parameters"]["source_start"] == 1.0
    source = [m for m in frames if 1.0 <= m.timestamp - origin < 2.0]
    assert stream.injected == len(source)
    assert {f.frame.channel for f in out if f.attack} == {"can0", "can1"}


def test_diagnostic_abuse_requests_programming_session_and_security_access() -> None:
    frames = synthetic(7)
    attack = DiagnosticAbuse(start=1.0, duration=1.5, interval=0.5, seed=3)
    out, stream = run(frames, attack)
    check_invariants(frames, attack, out, stream)
    diag = [f.frame for f in out if f.attack]
    assert len(diag) == 9  # three cycles of session control, requestSeed, sendKey
    assert {m.arbitration_id for m in diag} == {0x7DF}
    data = [bytes(m.data) for m in diag]
    assert data[0] == bytes.fromhex("021002AAAAAAAAAA")
    assert data[1] == bytes.fromhex("022701AAAAAAAAAA")
    assert data[2][:3] == bytes.fromhex("062702") and data[2][7] == 0xAA
    assert data[3:6][:2] == data[:2]
    assert data[2] != data[5]  # a fresh random key each cycle
    rel = [m.timestamp - frames[0].timestamp for m in diag]
    assert rel[:3] == pytest.approx([1.0, 1.01, 1.02])
    physical = DiagnosticAbuse(start=1.0, duration=0.5, target_id=0x7E0, send_key=False)
    out, _ = run(frames, physical)
    assert [bytes(f.frame.data)[:3] for f in out if f.attack] == [
        bytes.fromhex("021002"),
        bytes.fromhex("022701"),
    ]


def test_injections_never_outlast_the_stream() -> None:
    frames = synthetic(8, seconds=2.0)
    out, stream = run(frames, Flooding(start=1.0, duration=10.0))
    assert max(f.frame.timestamp for f in out if f.attack) <= frames[-1].timestamp
    assert stream.describe()["end"] == pytest.approx(frames[0].timestamp + 11.0)


def test_push_and_pull_give_the_same_stream() -> None:
    """feed() + flush() (a live source) emit what apply() emits on the same frames."""
    frames = synthetic(9)
    attack = Spoofing(start=1.0, duration=2.0, target_id=0x100, seed=4)
    pulled = [(key(f.frame), f.attack) for f in attack_frames(frames, attack)]
    stream = AttackStream(attack, origin=frames[0].timestamp)
    pushed: list[tuple[Any, str | None]] = []
    for frame in frames:
        pushed += [(key(f.frame), f.attack) for f in stream.feed(frame)]
        pushed += [(key(f.frame), f.attack) for f in stream.flush(frame.timestamp)]
    assert pushed == pulled


def test_channel_option_targets_the_other_bus() -> None:
    frames = synthetic(10)
    out, stream = run(
        frames, Suspension(start=1.0, duration=1.0, target_ids=(0x100,), channel="can1")
    )
    assert stream.removed > 0
    origin = frames[0].timestamp
    kept = {id(f.frame) for f in out}
    removed = [m for m in frames if id(m) not in kept]
    assert all(m.channel == "can1" for m in removed)
    assert len(removed) == sum(
        1
        for m in frames
        if m.channel == "can1" and m.arbitration_id == 0x100 and 1.0 <= m.timestamp - origin < 2.0
    )


def test_forging_the_rav4_speed_keeps_toyotas_checksum() -> None:
    """opendbc names the checksum but not its algorithm: it is inferred (sum8 + length)."""
    db: Any = load_dbc(RAV4 / "toyota_new_mc_pt_generated.dbc").database
    frames = [m for m in read_log(RAV4 / "rav4_60s.log") if m.timestamp < 1533245295.6 + 12]
    message = db.get_message_by_frame_id(0xB4)
    attack = Masquerade(start=3.0, duration=5.0, target_id=0xB4, message=message, value=42.0)
    out, stream = run(frames, attack)
    check_invariants(frames, attack, out, stream)
    forged = [f.frame for f in out if f.attack]
    assert len(forged) == pytest.approx(5.0 / 0.0241, abs=3)
    for m in forged:
        d = bytes(m.data)
        assert d[7] == (sum(d[:7]) + 0xB4 + len(d)) & 0xFF  # Toyota's checksum
        assert db.decode_message(0xB4, d)["SPEED"] == pytest.approx(42.0)
    described = stream.describe()["parameters"]["forged"]
    assert described["checksum"] == "sum8+0x08 (inferred) (CHECKSUM)"


def test_bad_parameters_are_one_line_usage_errors() -> None:
    with pytest.raises(UsageError, match="duration 0 must be a finite number > 0"):
        Flooding(duration=0)
    with pytest.raises(UsageError, match="does not fit in 11 bits"):
        Flooding(target_id=0x800)
    with pytest.raises(UsageError, match="suspension: give the ids"):
        Suspension(target_ids=())
    with pytest.raises(UsageError, match="replay: source-start 3 must be"):
        Replay(start=2.0, source_start=3.0)
    with pytest.raises(UsageError, match="odd requestSeed level"):
        DiagnosticAbuse(security_level=2)
    with pytest.raises(UsageError, match="no DBC message has this id"):
        AttackStream(Spoofing(target_id=0x123, signal="X"))
    with pytest.raises(UsageError, match="has no signal 'NOPE'"):
        AttackStream(
            Spoofing(
                target_id=0xB0, signal="NOPE", message=sample_db().get_message_by_frame_id(0xB0)
            )
        )
