"""Aggregation, rate limits and forensic frames: bounded events with counts, frames around them."""

from __future__ import annotations

import time

import can
import pytest

from agent.proto.tbox.v1 import events_pb2
from security.aggregate import AggregationPolicy
from security.engine import EngineConfig, IdsEngine
from security.events import SecurityEvent, context_data
from security.rulefile import parse_rules
from security.rules import Severity
from tests.security.conftest import frame, periodic, rule, run

FLOOD_RULES = rule("allowlist", "ids = [0x100, 0x200]", rule_id="ids") + rule(
    "flood", "window_ms = 100\nmax_frames = 50", rule_id="load"
)


@pytest.mark.slow
def test_a_million_frame_flood_makes_a_bounded_number_of_events() -> None:
    ids = IdsEngine(parse_rules(FLOOD_RULES))
    background = periodic(0x100, 0.010, 0, 1)
    for f in background:
        ids.process(f)
    # 1,000,000 frames of id 0x000 at the wire's limit (~4,000 frames/s): 250 s of attack.
    message = frame(0, 0x000, bytes(8))
    events: list[SecurityEvent] = []
    started = time.process_time()
    for k in range(1_000_000):
        message.timestamp = 1.0 + k * 0.00025
        ids.process(message)
        if not k % 10_000:
            events += ids.pop_events()
    events += ids.finish()
    elapsed = time.process_time() - started
    by_rule: dict[str, list[SecurityEvent]] = {}
    for event in events:
        by_rule.setdefault(event.rule_id, []).append(event)
    # windows of 1, 2, 4, 8, 16, 32, then 60 s: 10 events per rule for 250 s of attack
    assert len(by_rule["ids"]) <= 12 and len(by_rule["load"]) <= 12
    assert sum(e.count for e in by_rule["ids"]) == 1_000_000
    assert sum(e.count for e in by_rule["load"]) >= 990_000
    windows = [(e.last_time_us - e.time_us) / 1e6 for e in by_rule["ids"]]
    assert windows[:6] == pytest.approx([1, 2, 4, 8, 16, 32], abs=0.01)
    assert elapsed < 60  # about 5 µs per flagged frame


def test_windows_start_over_after_a_quiet_window() -> None:
    ids = IdsEngine(parse_rules(rule("allowlist", "ids = [0x100]", rule_id="ids")))
    frames = [frame(t, 0x7FF) for t in (0.0, 0.5, 1.2, 1.5)]  # 1 s window, then a 2 s one
    frames += [frame(10.0, 0x7FF), frame(10.9, 0x7FF)]  # quiet for long: 1 s again
    _, events = run(ids, frames)
    assert [(e.time_us, e.count) for e in events] == [
        (0, 2),
        (1_200_000, 2),
        (10_000_000, 2),
    ]


def test_ids_beyond_the_limit_per_rule_share_one_overflow_event() -> None:
    config = EngineConfig(aggregation=AggregationPolicy(max_ids_per_rule=3))
    ids = IdsEngine(parse_rules(rule("allowlist", "ids = [0x100]", rule_id="ids")), config=config)
    frames = [frame(k * 0.001, 0x400 + k) for k in range(500)]  # fuzzing: 500 random ids
    verdicts, events = run(ids, frames)
    assert all(v == ("ids",) for v in verdicts)  # every frame is still flagged
    assert len(events) == 4
    own = [e for e in events if e.can_id is not None]
    assert sorted(e.can_id for e in own if e.can_id is not None) == [0x400, 0x401, 0x402]
    (overflow,) = [e for e in events if e.can_id is None]
    assert overflow.count == 497
    assert overflow.observed.startswith("497 findings on 497 more CAN ids (more than 3 at once)")


def test_events_keep_the_frames_around_the_first_occurrence() -> None:
    config = EngineConfig(forensic_before=3, forensic_after=2)
    ids = IdsEngine(parse_rules(rule("allowlist", "ids = [0x100]", rule_id="ids")), config=config)
    frames = periodic(0x100, 0.010, 0, 0.1)
    frames.insert(6, frame(0.055, 0x7FF, b"\xde\xad"))
    frames.insert(8, frame(0.066, 0x7FF, b"\xbe\xef"))
    _, events = run(ids, frames)
    (event,) = events
    assert event.count == 2 and event.time_us == 55_000
    assert [(f.can_id, f.time_delta_us, f.flagged) for f in event.frames] == [
        (0x100, -25_000, False),
        (0x100, -15_000, False),
        (0x100, -5_000, False),
        (0x7FF, 0, True),  # the offending frame
        (0x100, 5_000, False),
        (0x7FF, 11_000, True),
    ]
    assert event.frames[3].data == b"\xde\xad" and event.frames[3].channel == "can0"
    assert event.context_data == b"\x01\x00\x00\x07\xff\x02\xde\xad"


def test_events_wait_for_their_forensic_frames_then_give_up() -> None:
    config = EngineConfig(
        forensic_after=5, aggregation=AggregationPolicy(window_s=0.1, forensic_wait_s=0.5)
    )
    ids = IdsEngine(parse_rules(rule("allowlist", "ids = [0x100]", rule_id="ids")), config=config)
    ids.process(frame(0.0, 0x7FF))
    for t in (0.2, 0.3, 0.4):
        ids.process(frame(t, 0x100))
    assert ids.pop_events() == []  # window closed at 0.1 s, but frames are still coming
    ids.process(frame(0.6, 0x100))
    (event,) = ids.pop_events()  # waited long enough
    assert len(event.frames) == 4


def test_flagged_frames_before_an_event_are_marked() -> None:
    config = EngineConfig(forensic_before=4, forensic_after=0)
    rules = rule("allowlist", "ids = [0x100]", rule_id="ids") + rule(
        "dlc", "can_id = 0x100\ndlc = 8", rule_id="dlc"
    )
    ids = IdsEngine(parse_rules(rules), config=config)
    frames = [frame(0.0, 0x7FF), frame(0.01, 0x100), frame(0.02, 0x100, b"\x01")]
    _, events = run(ids, frames)
    dlc = next(e for e in events if e.rule_id == "dlc")
    assert [(f.can_id, f.flagged) for f in dlc.frames] == [
        (0x7FF, True),
        (0x100, False),
        (0x100, True),
    ]


def _event(**changes: object) -> SecurityEvent:
    fields: dict[str, object] = {
        "event_definition_id": 0xA001,
        "idsm_instance_id": 7,
        "sensor_instance_id": 1,
        "count": 3,
        "time_us": 1_700_000_000_000_000,
        "context_data": context_data(0x18DAF110, b"\x02\x10\x02", extended=True),
        "rule_id": "can0.allowlist",
        "severity": Severity.HIGH,
        "channel": "can0",
        "can_id": 0x18DAF110,
        "observed": "CAN id 0x18DAF110",
        "expected": "one of the 96 ids allowed on can0",
        "description": "only known ids",
        "last_time_us": 1_700_000_000_500_000,
        "frames": (),
    }
    fields.update(changes)
    return SecurityEvent(**fields)  # type: ignore[arg-type]


def test_conversion_to_the_proto_security_event() -> None:
    event = _event()
    message = event.to_proto()
    parsed = events_pb2.SecurityEvent.FromString(message.SerializeToString())
    assert parsed.event_definition_id == 0xA001 and parsed.idsm_instance_id == 7
    assert parsed.sensor_instance_id == 1 and parsed.count == 3
    assert parsed.time_us == 1_700_000_000_000_000
    assert parsed.last_time_us == 1_700_000_000_500_000
    assert parsed.context_data == b"\x01\x98\xda\xf1\x10\x03\x02\x10\x02"
    assert parsed.rule_id == "can0.allowlist" and parsed.severity == events_pb2.SEVERITY_HIGH
    assert parsed.channel == "can0" and parsed.HasField("can_id") and parsed.can_id == 0x18DAF110
    assert parsed.observed == "CAN id 0x18DAF110"
    assert parsed.expected == "one of the 96 ids allowed on can0"
    assert parsed.description == "only known ids"
    bus_level = _event(can_id=None).to_proto()
    assert not bus_level.HasField("can_id")


def test_engine_events_convert_with_their_frames() -> None:
    ids = IdsEngine(parse_rules(rule("allowlist", "ids = [0x100]", rule_id="ids")))
    frames: list[can.Message] = [frame(0.0, 0x100), frame(0.01, 0x7FF, b"\x01\x02")]
    _, (event,) = run(ids, frames)
    message = event.to_proto()
    assert [(f.can_id, f.time_delta_us, f.flagged, f.data) for f in message.frames] == [
        (0x100, -10_000, False, b"\x00" * 8),
        (0x7FF, 0, True, b"\x01\x02"),
    ]
    document = event.to_json()
    assert document["rule_id"] == "ids" and document["id"] == 0x7FF and document["t"] == 0.01
    assert document["severity"] == "high" and document["context_data"] == "01000007ff020102"
    assert document["frames"][1] == {
        "dt_us": 0,
        "channel": "can0",
        "id": 0x7FF,
        "extended": False,
        "fd": False,
        "data": "0102",
        "flagged": True,
    }
