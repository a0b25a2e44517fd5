"""The engine with one rule of each kind: what it flags, what it leaves alone, what events say."""

from __future__ import annotations

import math

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from security.engine import EngineConfig, IdsEngine
from security.errors import RuleBindingError
from security.rulefile import parse_rules
from security.secoc import SecOcProfile, SecOcSender, secure
from tests.security.conftest import (
    FAST,
    drive_frame,
    engine,
    flagged,
    frame,
    periodic,
    rule,
    run,
    small_db,
)

# ---- ids, lengths ------------------------------------------------------------------------------


def test_allowlist_flags_unknown_ids_frame_by_frame() -> None:
    ids = engine(rule("allowlist", "ids = [0x100, 0x200]", rule_id="ids"))
    frames = [frame(0.0, 0x100), frame(0.01, 0x7FF), frame(0.02, 0x200), frame(0.03, 0x7FF)]
    verdicts, events = run(ids, frames)
    assert verdicts == [(), ("ids",), (), ("ids",)]
    (event,) = events
    assert (event.rule_id, event.channel, event.can_id, event.count) == ("ids", "can0", 0x7FF, 2)
    assert event.observed == "CAN id 0x7FF"
    assert event.expected == "one of the 2 ids allowed on can0"
    assert event.time_us == 10_000 and event.last_time_us == 30_000


def test_other_buses_and_error_frames_are_not_judged_by_an_allowlist() -> None:
    ids = engine(rule("allowlist", "ids = [0x100]", rule_id="ids"))
    verdicts, events = run(
        ids, [frame(0.0, 0x7FF, channel="can1"), frame(0.1, 0x7FF, is_error_frame=True)]
    )
    assert verdicts == [(), ()] and events == []


def test_unknown_burst_flags_many_distinct_unknown_ids_not_one_repeated() -> None:
    rules = rule("allowlist", "ids = [0x100]", rule_id="ids") + rule(
        "unknown_burst", "window_ms = 100\nmax_ids = 3", rule_id="fuzz"
    )
    repeated = [frame(i * 0.001, 0x7DF) for i in range(50)]
    verdicts, _ = run(engine(rules), repeated)
    assert not flagged(verdicts, "fuzz") and len(flagged(verdicts, "ids")) == 50
    fuzz = [frame(1 + i * 0.001, 0x300 + i) for i in range(10)]
    verdicts, events = run(engine(rules), fuzz)
    assert flagged(verdicts, "fuzz") == [3, 4, 5, 6, 7, 8, 9]  # the 4th distinct id on
    burst = next(e for e in events if e.rule_id == "fuzz")
    assert burst.can_id is None and burst.observed == "4 distinct unknown ids in 100 ms"
    slow = [frame(2 + i * 0.2, 0x300 + i) for i in range(10)]  # spread out: no burst
    verdicts, _ = run(engine(rules), slow)
    assert not flagged(verdicts, "fuzz")


def test_dlc_rule() -> None:
    ids = engine(
        rule("dlc", "messages = [{ can_id = 0x100, dlc = 8 }, { can_id = 0x101, dlc = [2, 3] }]")
    )
    frames = [frame(0, 0x100), frame(0, 0x100, b"\1"), frame(0, 0x101, b"ab"), frame(0, 0x101, b"")]
    verdicts, events = run(ids, frames)
    assert flagged(verdicts, "r") == [1, 3]
    assert sorted((e.can_id, e.observed, e.expected) for e in events) == [
        (0x100, "DLC 1", "DLC 8"),
        (0x101, "DLC 0", "DLC 2 or 3"),
    ]


# ---- timing --------------------------------------------------------------------------------------


def _jittered(
    can_id: int, period: float, start: float, end: float, jitter: float, seed: int
) -> list[can.Message]:
    """A periodic sender on a fixed grid, each frame late by up to *jitter* periods."""
    import random

    rng = random.Random(seed)
    out = []
    k = 0
    while start + k * period < end:
        out.append(frame(start + k * period + rng.random() * jitter * period, can_id))
        k += 1
    return out


TIMING = rule(
    "timing",
    "can_id = 0x100\nperiod_ms = 10\nwindow_periods = 10\nmin_count = 8\nmax_count = 12",
    rule_id="t",
)


def test_timing_tolerates_40_percent_jitter_and_single_early_frames() -> None:
    frames = _jittered(0x100, 0.010, 0, 10, 0.4, seed=1)
    verdicts, events = run(engine(TIMING), frames)
    assert not flagged(verdicts, "t") and not events
    # one extra frame squeezed in now and then: a short interval, not a rate change
    frames = sorted(
        [*frames, *(frame(t + 0.003, 0x100) for t in (1.0, 3.0, 5.0))], key=lambda f: f.timestamp
    )
    verdicts, _ = run(engine(TIMING), frames)
    assert not flagged(verdicts, "t")


def test_timing_flags_an_injected_stream_at_the_same_rate() -> None:
    real = _jittered(0x100, 0.010, 0, 4, 0.3, seed=2)
    injected = [frame(2.0 + 0.005 + k * 0.010, 0x100) for k in range(100)]  # 2.0 s … 3.0 s
    frames = sorted([*real, *injected], key=lambda f: f.timestamp)
    verdicts, events = run(engine(TIMING), frames)
    hits = [frames[i].timestamp for i in flagged(verdicts, "t")]
    assert hits and 2.0 < min(hits) < 2.1  # within a few periods
    assert max(hits) < 3.11  # and over once the injection stops
    # Only the injected frames: the real sender's keep their phase (more in test_detectors.py).
    forged = {id(f) for f in injected}
    assert all(id(frames[i]) in forged for i in flagged(verdicts, "t"))
    for e in events:
        assert e.observed.startswith("more than 12 frames in 100 ms; this one ")
        assert e.observed.endswith(" off the sender's phase")
    assert events[0].expected == "8–12 frames in 100 ms (10 periods of 10 ms)"


def test_timing_flags_a_rate_that_drops() -> None:
    frames = periodic(0x100, 0.010, 0, 1) + periodic(0x100, 0.020, 1, 2)
    verdicts, events = run(engine(TIMING), frames)
    hits = [frames[i].timestamp for i in flagged(verdicts, "t")]
    assert hits and 1.0 < min(hits) < 1.1
    assert events[0].observed.endswith("frames in 100 ms")
    # not at start-up: the first window is not complete yet
    verdicts, _ = run(engine(TIMING), periodic(0x100, 0.010, 5, 5.05))
    assert not flagged(verdicts, "t")


# ---- flooding, suspension ---------------------------------------------------------------------


def test_flood_of_the_bus_and_of_high_priority_ids() -> None:
    rules = rule("flood", "window_ms = 100\nmax_frames = 60", rule_id="load") + rule(
        "flood", "window_ms = 100\nmax_frames = 5\nmax_id = 0x0FF", rule_id="prio"
    )
    normal = [f for i in range(4) for f in periodic(0x300 + i, 0.010, i * 0.001, 1)]
    normal.sort(key=lambda f: f.timestamp)  # 40 frames per window, 10 of each id
    verdicts, _ = run(engine(rules), normal)
    assert not any(verdicts)
    flood = sorted(normal + periodic(0x000, 0.001, 0.5, 0.6), key=lambda f: f.timestamp)
    verdicts, events = run(engine(rules), flood)
    assert len(flagged(verdicts, "prio")) == 100 - 5
    load = flagged(verdicts, "load")
    assert len(load) > 50
    assert all(flood[i].arbitration_id == 0 for i in load)  # the flood, not the real traffic
    # share = 0: every frame over the limit
    every = rule("flood", "window_ms = 100\nmax_frames = 60\nshare = 0", rule_id="load")
    verdicts, _ = run(engine(every), flood)
    assert {flood[i].arbitration_id for i in flagged(verdicts, "load")} > {0}
    prio = next(e for e in events if e.rule_id == "prio")
    assert prio.can_id is None
    assert prio.observed == "more than 5 frames in 100 ms, 5 of the last 5 with id 0x0"
    assert prio.expected == "at most 5 frames with ids up to 0xFF in 100 ms"


def test_suspension_reports_a_silent_id_once_per_silence() -> None:
    rules = rule("suspension", "can_id = 0x100\nmax_silence_ms = 50", rule_id="s")
    frames = (
        periodic(0x100, 0.010, 0, 1) + periodic(0x200, 0.010, 1, 2) + periodic(0x100, 0.010, 2, 3)
    )
    frames.sort(key=lambda f: f.timestamp)
    ids = IdsEngine(parse_rules(rules), config=FAST)
    verdicts, events = run(ids, frames)
    assert not any(verdicts)  # a silence flags no frame
    (event,) = events
    assert event.rule_id == "s" and event.can_id == 0x100 and event.count == 1
    assert 1.04 <= event.time_us / 1e6 <= 1.07  # detected within the scan interval
    assert (
        event.observed.startswith("silent for ")
        and event.expected == "a frame at least every 50 ms"
    )
    assert event.context_data == b"\x01"  # no frame to show


def test_suspension_counts_from_the_first_frame_of_the_bus_and_tick_advances_time() -> None:
    rules = rule("suspension", "can_id = 0x100\nmax_silence_ms = 50", rule_id="s")
    ids = IdsEngine(parse_rules(rules), config=FAST)
    ids.process(frame(10.0, 0x200))
    assert ids.pop_events() == []
    ids.tick(10.2)  # nothing on the bus, but time passes (a live agent's clock)
    ids.tick(11.5)
    (event,) = ids.pop_events()
    assert event.rule_id == "s" and event.time_us == 10_200_000


# ---- payload -----------------------------------------------------------------------------------


def test_payload_patterns_required_and_forbidden() -> None:
    required = engine(rule("payload", 'can_id = 0x100\nmask = "FF 0F"\nvalue = "A5 01"'))
    verdicts, events = run(
        required,
        [frame(0, 0x100, b"\xa5\xf1\x00"), frame(0, 0x100, b"\xa5\x02"), frame(0, 0x100, b"\xa5")],
    )
    assert flagged(verdicts, "r") == [1, 2]  # a short payload reads as zero-padded
    assert events[0].observed == "payload A502" and events[0].expected == "payload & FF0F == A501"
    forbidden = engine(rule("payload", 'forbid = true\ncan_id = 0x100\nmask = "FF"\nvalue = "3E"'))
    verdicts, _ = run(forbidden, [frame(0, 0x100, b"\x3e\x80"), frame(0, 0x100, b"\x02")])
    assert flagged(verdicts, "r") == [0]


# ---- signals -------------------------------------------------------------------------------------


def test_signal_range() -> None:
    ids = engine(rule("signal_range", 'signals = [{ signal = "Drive.Speed", min = 0, max = 200 }]'))
    frames = [drive_frame(0, 50.0, 0), drive_frame(0.01, 250.0, 1), drive_frame(0.02, 199.99, 2)]
    verdicts, events = run(ids, frames)
    assert flagged(verdicts, "r") == [1]
    assert (
        events[0].observed == "Drive.Speed = 250"
        and events[0].expected == "Drive.Speed in [0, 200]"
    )


def test_signal_rate_flags_a_jump_not_a_drive() -> None:
    ids = engine(rule("signal_rate", 'signal = "Speed"\nmax_rate = 40\nmax_step = 0.5'))
    smooth = [drive_frame(k * 0.01, 50 + 0.3 * k, k) for k in range(100)]  # 30 km/h/s
    verdicts, _ = run(ids, smooth)
    assert not any(verdicts)
    ids = engine(rule("signal_rate", 'signal = "Speed"\nmax_rate = 40\nmax_step = 0.5'))
    frames = [drive_frame(k * 0.01, 50.0, k) for k in range(10)]
    frames.insert(5, drive_frame(0.045, 100.0, 0))  # +50 km/h in 5 ms, between real frames
    verdicts, events = run(ids, frames)
    assert flagged(verdicts, "r") == [5]  # the real frames around it are fine
    assert events[0].observed == "Speed 50 → 100 in 5 ms"


def test_signal_rate_resynchronises_after_a_takeover() -> None:
    ids = engine(rule("signal_rate", 'signal = "Speed"\nmax_rate = 40\nmax_step = 0.5'))
    frames = [drive_frame(k * 0.01, 50.0, k) for k in range(10)]
    frames += [drive_frame(0.1 + k * 0.01, 120.0, k) for k in range(10)]  # a new sender
    verdicts, _ = run(ids, frames)
    assert flagged(verdicts, "r") == [10]  # the jump, then the new level is the reference


# ---- counters, checksums, replay --------------------------------------------------------------


def test_counter_continuity_and_restart() -> None:
    ids = engine(rule("counter", "can_id = 0x100"))
    counters = [0, 1, 2, 3, 5, 6, 7, 0, 1]  # a gap (4 lost), then a restart at 0
    verdicts, events = run(ids, [drive_frame(k * 0.01, 50, c) for k, c in enumerate(counters)])
    assert flagged(verdicts, "r") == [4, 7]
    assert events[0].observed == "counter 5 after 3" and events[0].expected == "counter + 1"
    # wrap-around is not a gap
    ids = engine(rule("counter", "can_id = 0x100"))
    verdicts, _ = run(ids, [drive_frame(k * 0.01, 50, k) for k in range(40)])
    assert not any(verdicts)


def test_counter_with_injected_frames_flags_the_injected_ones_only() -> None:
    ids = engine(rule("counter", "can_id = 0x100\nmax_step = 1"))
    frames = []
    for k in range(20):
        frames.append(drive_frame(k * 0.01, 50, k))
        if k % 5 == 2:
            frames.append(drive_frame(k * 0.01 + 0.005, 80, 9))  # forged, fixed counter
    verdicts, _ = run(ids, frames)
    forged = [i for i, f in enumerate(frames) if f.data[:2] == frames[3].data[:2]]
    assert len(forged) == 4
    assert set(flagged(verdicts, "r")) <= set(forged)
    assert flagged(verdicts, "r") == forged  # the real frames in between are fine


def test_replay_flags_repeated_and_stale_counters() -> None:
    ids = engine(rule("replay", "can_id = 0x100"))
    counters = [0, 1, 2, 3, 3, 4, 1, 5, 6]
    verdicts, events = run(ids, [drive_frame(k * 0.01, 50, c) for k, c in enumerate(counters)])
    assert flagged(verdicts, "r") == [4, 6]
    assert [e.observed for e in events] == ["counter 3 repeated"]  # one window, count 2
    assert events[0].count == 2
    assert events[0].expected == "a fresh counter (not a repeat, not back by up to 7)"


def test_checksum() -> None:
    ids = engine(rule("checksum", "can_id = 0x100"))
    good = drive_frame(0, 50, 1)
    bad = drive_frame(0.01, 50, 2)
    bad.data[7] ^= 0x01
    verdicts, events = run(ids, [good, bad])
    assert flagged(verdicts, "r") == [1]
    assert events[0].observed.startswith("checksum 0x") and "computed" in events[0].observed
    assert events[0].expected == "a valid crc8_sae_j1850 checksum"


# ---- context -------------------------------------------------------------------------------------

UDS_WHILE_MOVING = rule(
    "context",
    'can_ids = [0x7E0, 0x7DF]\nuds = ["10 02", "27"]\ncondition = "Drive.Speed > 5"',
    rule_id="uds",
)


def test_programming_session_request_while_driving() -> None:
    frames = [
        drive_frame(0.00, 0.0, 0),
        frame(0.01, 0x7E0, b"\x02\x10\x02\x00\x00\x00\x00\x00"),  # standing: fine
        drive_frame(0.02, 30.0, 1),
        frame(0.03, 0x7E0, b"\x02\x10\x02\x00\x00\x00\x00\x00"),  # programming session
        frame(0.04, 0x7E0, b"\x02\x10\x03\x00\x00\x00\x00\x00"),  # extended session: allowed
        frame(0.05, 0x7DF, b"\x02\x27\x01\x00\x00\x00\x00\x00"),  # SecurityAccess
        frame(0.06, 0x7E0, b"\x10\x0a\x27\x02\x00\x00\x00\x00"),  # first frame of a long request
        frame(0.07, 0x7E0, b"\x21\x27\x01\x00\x00\x00\x00\x00"),  # consecutive frame: data only
    ]
    verdicts, events = run(engine(UDS_WHILE_MOVING), frames)
    assert flagged(verdicts, "uds") == [3, 5, 6]
    first = min(events, key=lambda e: e.time_us)
    assert first.observed == "request 02 10 02 00 00 00 00 00"
    assert first.expected == "no such request while Drive.Speed > 5"


def test_context_conditions_may_read_another_bus() -> None:
    text = rule("context", 'can_ids = [0x7E0]\nuds = ["10 02"]\ncondition = "can1:Drive.Speed > 5"')
    ids = engine(text, databases={"can0": [small_db()], "can1": [small_db()]})
    moving = drive_frame(0.0, 30.0, 0)
    moving.channel = "can1"
    request = frame(0.01, 0x7E0, b"\x02\x10\x02")
    verdicts, _ = run(ids, [drive_frame(0.0, 0.0, 0), moving, request])
    assert verdicts == [(), (), ("r",)]


def test_context_without_a_known_speed_is_not_flagged() -> None:
    verdicts, _ = run(engine(UDS_WHILE_MOVING), [frame(0, 0x7E0, b"\x02\x10\x02")])
    assert verdicts == [()]


# ---- SecOC -------------------------------------------------------------------------------

KEY = bytes(range(16))
SECOC = rule(
    "secoc",
    'can_id = 0x0B0\nkey = "brake"\ndata_id = 0x0123\npayload_bytes = 4\nfreshness_bits = 32\n'
    "freshness_tx_bits = 8\nmac_bits = 24",
    rule_id="auth",
)


def test_secoc_good_forged_and_replayed_frames() -> None:
    profile = SecOcProfile(0x0123, 4, 32, 8, 24)
    sender = SecOcSender(profile, KEY, freshness=1)
    good = [frame(k * 0.01, 0x0B0, sender.next_frame(bytes((k, 0, 0, 0)))) for k in range(5)]
    forged = frame(0.05, 0x0B0, secure(profile, bytes(16), b"\xff\0\0\0", 6))
    replayed = frame(0.06, 0x0B0, good[2].data)
    later = frame(0.07, 0x0B0, sender.next_frame(b"\x07\0\0\0"))
    ids = engine(SECOC, keys={"brake": KEY})
    verdicts, events = run(ids, [*good, forged, replayed, later])
    assert flagged(verdicts, "auth") == [5, 6]
    assert sorted(e.observed for e in events) == ["SecOC: bad MAC"]  # one window: count 2
    assert events[0].count == 2


def test_secoc_needs_its_key() -> None:
    with pytest.raises(RuleBindingError, match=r"test.toml:8: rule\[0\].key: no key file"):
        engine(SECOC)
    with pytest.raises(RuleBindingError, match="the key file has no key 'brake'"):
        engine(SECOC, keys={"other": KEY})


# ---- binding errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            rule("signal_range", 'signal = "Drive.Nope"\nmax = 1'),
            "message Drive has no signal Nope",
        ),
        (rule("signal_range", 'signal = "Nope"\nmax = 1'), "no message on can0 has a signal Nope"),
        (rule("counter", "can_id = 0x7E1"), "no DBC file given for can0 has CAN id 0x7E1"),
        (
            rule("counter", "can_id = 0x7E0"),
            "test.toml:7: rule[0].can_id: message DiagReq declares no counter",
        ),
        (
            rule("replay", 'can_id = 0x100\nsignal = "Nope"'),
            "test.toml:8: rule[0].signal: message Drive has no signal Nope",
        ),
        (rule("checksum", "can_id = 0x7E1"), "no DBC file given for can0 has CAN id 0x7E1"),
        (rule("checksum", "can_id = 0x7E0"), "message DiagReq has no checksum signal in the DBC"),
        (rule("checksum", 'can_id = 0x100\nalgorithm = "xor8"'), "the DBC declares crc8_sae_j1850"),
        (
            rule("context", 'can_ids = [0x7E0]\nuds = ["27"]\ncondition = "Nope > 1"'),
            "no message on can0 has a signal Nope",
        ),
    ],
)
def test_rules_that_need_what_the_dbc_lacks(text: str, message: str) -> None:
    with pytest.raises(RuleBindingError) as info:
        engine(text)
    assert message in str(info.value) and "(rule 'r')" in str(info.value)


def test_signal_rules_without_a_dbc() -> None:
    with pytest.raises(RuleBindingError, match=r"needs the DBC files of bus 'can0' \(--dbc\)"):
        engine(rule("signal_range", 'signal = "Speed"\nmax = 1'), databases={})


# ---- arbitrary frames ---------------------------------------------------------------------------

EVERYTHING = (
    rule("allowlist", "ids = [0x100, 0x7E0, 0x0B0]", rule_id="ids")
    + rule("unknown_burst", "max_ids = 2", rule_id="fuzz")
    + rule("flood", "window_ms = 10\nmax_frames = 4\nshare = 0", rule_id="load")
    + rule("dlc", "can_id = 0x100\ndlc = 8", rule_id="dlc")
    + TIMING
    + rule("suspension", "can_id = 0x100\nmax_silence_ms = 20", rule_id="s")
    + rule("payload", 'can_id = 0x100\nmask = "00 00 F0"\nvalue = "00 00 00"', rule_id="p")
    + rule("signal_range", 'signal = "Speed"\nmin = 0\nmax = 200', rule_id="range")
    + rule("signal_rate", 'signal = "Speed"\nmax_rate = 40', rule_id="rate")
    + rule("counter", "can_id = 0x100", rule_id="counter")
    + rule("replay", "can_id = 0x100", rule_id="replay")
    + rule("checksum", "can_id = 0x100", rule_id="crc")
    + UDS_WHILE_MOVING
    + SECOC
)

_FRAMES = st.builds(
    lambda t, can_id, data, channel, flags: can.Message(
        timestamp=t,
        arbitration_id=can_id,
        data=data,
        dlc=len(data),
        channel=channel,
        is_extended_id=can_id > 0x7FF,
        is_error_frame=flags == 1,
        is_remote_frame=flags == 2,
        is_fd=len(data) > 8,
        check=False,
    ),
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(0, 10),
    ),
    st.sampled_from([0x100, 0x7E0, 0x0B0, 0x7DF, 0x000, 0x1FFFFFFF]) | st.integers(0, 0x1FFFFFFF),
    st.binary(max_size=64),
    st.sampled_from(["can0", "can1", None, 0, 1]),
    st.integers(0, 2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(_FRAMES, max_size=40), forensic=st.integers(0, 3))
def test_the_engine_never_raises_on_arbitrary_frames(
    frames: list[can.Message], forensic: int
) -> None:
    ids = engine(
        EVERYTHING,
        keys={"brake": KEY},
        config=EngineConfig(
            scan_interval_s=0.005, forensic_before=forensic, forensic_after=forensic
        ),
    )
    for f in frames:
        verdict = ids.process(f)
        assert isinstance(verdict, tuple) and all(isinstance(r, str) for r in verdict)
        for event in ids.pop_events():
            event.to_proto()
    ids.tick(math.inf)
    for event in ids.finish():
        assert event.count >= 1
        event.to_proto().SerializeToString()
        event.to_json()
