"""Detection of the simulator's attacks by learned rules on the sample vehicle, and the metrics.

The rules are learned from clean generated traffic (seed 1) and judge other traffic (seed 2)
with one attack injected — what ``benchmarks/bench_ids_detection.py`` measures on both vehicles,
here kept to the sample vehicle and the issue's targets, so that a detector losing recall fails
the suite. Which rules count per frame: :mod:`security.detection_metrics`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import can
import pytest

from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
from security.detection_metrics import (
    FrameScores,
    detection_latency,
    frame_rules,
    frame_scores,
)
from security.engine import IdsEngine
from security.events import SecurityEvent
from security.learn import LearnOptions, learn_rules
from security.rulefile import format_rules, parse_rules
from security.rules import PlausibilitySpec, RuleSet, Severity
from sim.attacks import Attack, AttackStream, Flooding, Fuzzing, Masquerade, Spoofing, Suspension
from tests.security.conftest import run

TARGET = 0.99
SPEED_ID = 0x0B0  # ESC_VehicleSpeed: counter and CRC declared, 10 ms
ESC_IDS = (0x0A0, 0x0B0, 0x0C0, 0x0D0)  # every message the ESC node sends
START = 10.0  # the attacks run from 10 s to 20 s of the 30 s test traffic
DURATION = 10.0


@cache
def _sample() -> tuple[Any, RuleSet, tuple[can.Message, ...]]:
    from sim import TrafficGenerator, VehicleModel, load_scenario

    database = load_dbc(SAMPLE_VEHICLE_DBC).database

    def traffic(seed: int, seconds: float) -> list[can.Message]:
        model = VehicleModel(load_scenario("city"))
        return TrafficGenerator(
            {"can0": [database]}, model, seed=seed, start_time=1000.0
        ).frames_until(seconds)

    learned = learn_rules(traffic(1, 60.0), {"can0": [database]})
    rules = parse_rules(format_rules(learned), "learned.toml")
    return database, rules, tuple(traffic(2, 30.0))


def _attacked(
    attack: Attack,
) -> tuple[list[bool], list[tuple[str, ...]], list[SecurityEvent], float]:
    """Labels, verdicts, events and the attack's absolute start."""
    database, rules, clean = _sample()
    stream = AttackStream(attack)
    labelled = list(stream.apply(clean))
    verdicts, events = run(
        IdsEngine(rules, databases={"can0": [database]}), [x.frame for x in labelled]
    )
    assert stream.origin is not None and stream.injected + stream.removed > 0
    return [x.attack is not None for x in labelled], verdicts, events, stream.origin + attack.start


def _speed_message() -> Any:
    return _sample()[0].get_message_by_frame_id(SPEED_ID)


def test_no_event_on_clean_traffic_of_another_seed() -> None:
    database, rules, clean = _sample()
    verdicts, events = run(IdsEngine(rules, databases={"can0": [database]}), clean)
    assert events == [] and not any(verdicts)


@pytest.mark.parametrize("kind", ["flooding", "fuzzing"])
def test_flooding_and_fuzzing_meet_the_precision_and_recall_targets(kind: str) -> None:
    attack = (
        Flooding(start=START, duration=DURATION)
        if kind == "flooding"
        else Fuzzing(start=START, duration=DURATION)
    )
    labels, verdicts, events, start = _attacked(attack)
    scores = frame_scores(labels, verdicts, frame_rules(_sample()[1]))
    assert scores.positives > 1000
    assert scores.recall is not None and scores.recall >= TARGET, scores
    assert scores.precision is not None and scores.precision >= TARGET, scores
    found = detection_latency(start, events)
    assert found is not None and found[0] < 0.01


def test_spoofing_every_forged_frame_is_flagged_and_the_range_rule_pinpoints_them() -> None:
    labels, verdicts, events, start = _attacked(
        Spoofing(start=START, duration=DURATION, target_id=SPEED_ID, message=_speed_message())
    )
    rules = _sample()[1]
    scores = frame_scores(labels, verdicts, frame_rules(rules))
    assert scores.positives == 1000  # one forged frame per real one, 10 s at 10 ms
    assert scores.recall is not None and scores.recall >= TARGET, scores
    # The signal range rule flags the forged frames and only them.
    ranges = frame_scores(labels, verdicts, {"can0.signal-range"})
    assert ranges.recall is not None and ranges.recall >= TARGET, ranges
    assert ranges.precision is not None and ranges.precision >= TARGET, ranges
    found = detection_latency(start, events, (SPEED_ID,))
    assert found is not None and found[0] < 0.05


def test_spoofing_meets_the_precision_and_recall_targets() -> None:
    # Each forged frame takes the counter the real sender's next frame carries: the counter and
    # replay rules must not judge that frame against the forgery (the range rule condemns it).
    labels, verdicts, _, _ = _attacked(
        Spoofing(start=START, duration=DURATION, target_id=SPEED_ID, message=_speed_message())
    )
    # The counted rules, and every rule (timing included: the verdict `--frames` prints).
    for counted in (frame_rules(_sample()[1]), None):
        scores = frame_scores(labels, verdicts, counted)
        assert scores.positives == 1000
        assert scores.precision is not None and scores.precision >= TARGET, scores
        assert scores.recall is not None and scores.recall >= TARGET, scores


def test_a_suspended_ecu_is_detected_within_one_second() -> None:
    _, _, events, start = _attacked(Suspension(start=START, duration=DURATION, target_ids=ESC_IDS))
    found = detection_latency(start, events, ESC_IDS)
    assert found is not None, events
    latency, event = found
    assert latency <= 1.0 and event.rule_id == "can0.suspension"
    silent = {e.can_id for e in events if e.rule_id == "can0.suspension"}
    assert silent == set(ESC_IDS)  # every silenced id is named


def test_a_masquerade_is_detected_within_one_second() -> None:
    labels, verdicts, events, start = _attacked(
        Masquerade(start=START, duration=DURATION, target_id=SPEED_ID, message=_speed_message())
    )
    found = detection_latency(start, events, (SPEED_ID,))
    assert found is not None, events
    assert found[0] <= 1.0
    scores = frame_scores(labels, verdicts, frame_rules(_sample()[1]))
    assert scores.recall is not None and scores.recall >= TARGET, scores


def test_learning_proposes_a_plausibility_pair_for_the_vehicle_speed() -> None:
    rule = _sample()[1].get("can0.plausibility")
    assert rule is not None and isinstance(rule.spec, PlausibilitySpec)
    assert len(rule.spec.entries) <= LearnOptions().plausibility_pairs
    pairs = {(e.signal, e.partner) for e in rule.spec.entries}
    assert ("ESC_VehicleSpeed.ESC_VehSpd", "MCU_Speed.MCU_MotorSpeed") in pairs


def test_a_masquerade_with_a_plausible_value_is_detected_within_one_second() -> None:
    # 30 km/h is inside the learned range: only the plausibility rule sees that the motor
    # speed says otherwise.
    labels, verdicts, events, start = _attacked(
        Masquerade(
            start=START,
            duration=DURATION,
            target_id=SPEED_ID,
            message=_speed_message(),
            value=30.0,
        )
    )
    found = detection_latency(start, events, (SPEED_ID,))
    assert found is not None, events
    latency, event = found
    assert latency <= 1.0 and event.rule_id == "can0.plausibility", (latency, event)
    assert "ESC_VehSpd = 30 while MCU_Speed.MCU_MotorSpeed = " in event.observed
    scores = frame_scores(labels, verdicts, frame_rules(_sample()[1]))
    assert scores.precision is not None and scores.precision >= TARGET, scores


# -- the metrics ----------------------------------------------------------------------------------


def test_frame_scores_count_only_the_rules_given() -> None:
    labels = [True, True, False, False, False]
    verdicts: list[tuple[str, ...]] = [("a",), (), ("t",), ("a", "t"), ()]
    every = frame_scores(labels, verdicts)
    assert every == FrameScores(
        true_positives=1, false_positives=2, false_negatives=1, true_negatives=1
    )
    assert every.precision == pytest.approx(1 / 3) and every.recall == 0.5
    assert every.f1 == pytest.approx(0.4)
    counted = frame_scores(labels, verdicts, {"a"})
    assert (counted.precision, counted.recall) == (0.5, 0.5)
    nothing = frame_scores([False, False], [(), ()])
    assert nothing.precision is None and nothing.recall is None and nothing.f1 is None
    with pytest.raises(ValueError, match="2 labels for 1 verdicts"):
        frame_scores([True, False], [()])


def test_frame_rules_leave_out_the_windowed_rate_rules() -> None:
    rules = _sample()[1]
    counted = frame_rules(rules)
    assert "can0.allowlist" in counted and "can0.signal-range" in counted
    assert "can0.flood" not in counted and "can0.timing" not in counted


def _event(t: float, can_id: int | None, rule_id: str = "r") -> SecurityEvent:
    return SecurityEvent(
        event_definition_id=1,
        idsm_instance_id=1,
        sensor_instance_id=1,
        count=1,
        time_us=round(t * 1e6),
        context_data=b"",
        rule_id=rule_id,
        severity=Severity.HIGH,
        channel="can0",
        can_id=can_id,
        observed="",
        expected="",
        description="",
        last_time_us=round(t * 1e6),
    )


def test_detection_latency_takes_the_first_event_of_the_attack() -> None:
    events = [_event(9.0, 0x10, "early"), _event(10.5, 0x20, "other"), _event(10.2, 0x10, "hit")]
    found = detection_latency(10.0, events, (0x10,))
    assert found is not None and found[1].rule_id == "hit"
    assert found[0] == pytest.approx(0.2)
    untargeted = detection_latency(10.0, events)
    assert untargeted is not None and untargeted[1].rule_id == "hit"
    assert detection_latency(11.0, events) is None
    assert detection_latency(10.0, events, (0x30,)) is None
