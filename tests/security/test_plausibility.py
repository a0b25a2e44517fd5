"""Plausibility rules: a signal checked against the latest value of a partner signal of another
message — the rule file format and its errors, the detector (agreement, disagreement that
persists, a stale or condemned partner, noise), the carry-over across a rule update, and what
``tbox ids learn`` proposes."""

from __future__ import annotations

import random
from functools import cache
from typing import Any

import can
import pytest

from can_dbc import load_dbc_string
from security.errors import RuleBindingError, RuleFileError
from security.learn import learn_rules
from security.rulefile import format_rules, parse_rules
from security.rules import PlausibilityEntry, PlausibilitySpec
from tests.security.conftest import FAST, flagged, frame, run

# A vehicle speed (0x100, every 20 ms) and a wheel speed (0x200, every 10 ms), both in 0.01 km/h.
PAIR_DBC = """VERSION ""
NS_ :
BS_:
BU_: ESC ABS
BO_ 256 Speed: 8 ESC
 SG_ VehSpd : 0|16@1+ (0.01,0) [0|300] "km/h" Vector__XXX
BO_ 512 Wheels: 8 ABS
 SG_ WheelFL : 0|16@1+ (0.01,0) [0|300] "km/h" Vector__XXX
 SG_ WheelFR : 16|16@1+ (0.01,0) [0|300] "km/h" Vector__XXX
"""

HEADER = (
    '[[rule]]\nid = "p"\nkind = "plausibility"\nseverity = "high"\n'
    'description = "speed agrees with the wheels"\nbus = "can0"\n'
)
# Speed ≈ 1.02 × WheelFL ± 1 km/h; the wheel at most 30 ms old; 3 disagreeing checks in a row.
RULE = HEADER + (
    'signal = "Speed.VehSpd"\npartner = "Wheels.WheelFL"\nscale = 1.02\ntolerance = 1.0\n'
    "max_age_ms = 30\npersistence = 3\n"
)
SPEED, WHEELS = 0x100, 0x200


@cache
def _db() -> Any:
    return load_dbc_string(PAIR_DBC, "pair.dbc").database


def _speed(t: float, kph: float) -> can.Message:
    return frame(t, SPEED, round(kph / 0.01).to_bytes(2, "little") + b"\0" * 6)


def _wheels(t: float, kph: float) -> can.Message:
    raw = round(kph / 0.01).to_bytes(2, "little")
    return frame(t, WHEELS, raw + raw + b"\0" * 4)


def _drive(
    seconds: float, wheel: Any, speed: Any, *, wheels_until: float | None = None
) -> list[can.Message]:
    """Wheels every 10 ms (until *wheels_until*), the speed every 20 ms 5 ms after them; *wheel*
    and *speed* give each value from the time."""
    frames = []
    for k in range(round(seconds / 0.01)):
        t = 1.0 + k * 0.01
        if wheels_until is None or t < wheels_until:
            frames.append(_wheels(t, wheel(t)))
        if k % 2 == 0:
            frames.append(_speed(t + 0.005, speed(t + 0.005)))
    return frames


def _engine(text: str = RULE) -> Any:
    from security.engine import IdsEngine

    return IdsEngine(parse_rules(text, "test.toml"), databases={"can0": [_db()]}, config=FAST)


# -- the rule file --------------------------------------------------------------------------------


def test_one_pair_loads_with_its_defaults_and_round_trips() -> None:
    text = HEADER + 'signal = "Speed.VehSpd"\npartner = "WheelFL"\ntolerance = 2\nmax_age_ms = 50\n'
    rules = parse_rules(text, "test.toml")
    spec = rules.rules[0].spec
    assert isinstance(spec, PlausibilitySpec)
    assert spec.entries == (
        PlausibilityEntry("Speed.VehSpd", "WheelFL", 1.0, 0.0, 2.0, 0.0, 50.0, 3, 0.0, None),
    )
    assert rules.rules[0].sensor_id == 3
    assert parse_rules(format_rules(rules), "again.toml").rules == rules.rules


def test_one_signal_may_have_several_partners() -> None:
    text = HEADER + (
        "signals = [\n"
        '  { signal = "VehSpd", partner = "WheelFL", tolerance = 1, max_age_ms = 30 },\n'
        '  { signal = "VehSpd", partner = "WheelFR", relative = 0.03, max_age_ms = 30 },\n'
        '  { signal = "VehSpd", partner = "Speed", partner_bus = "can1", tolerance = 1, '
        "max_age_ms = 1000, persistence = 1, persistence_ms = 500 },\n"
        "]\n"
    )
    rules = parse_rules(text, "test.toml")
    assert parse_rules(format_rules(rules), "again.toml").rules == rules.rules
    spec = rules.rules[0].spec
    assert isinstance(spec, PlausibilitySpec)
    assert [e.partner_bus for e in spec.entries] == [None, None, "can1"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'signal = "VehSpd"\ntolerance = 1\nmax_age_ms = 30\n',
            "test.toml:1: rule[0].partner: is required: the signal of another message",
        ),
        (
            'signal = "VehSpd"\npartner = "WheelFL"\ntolerance = 1\n',
            "test.toml:1: rule[0].max_age_ms: is required",
        ),
        (
            'signal = "VehSpd"\npartner = "WheelFL"\nmax_age_ms = 30\n',
            "test.toml:1: rule[0].tolerance: give tolerance (absolute) or relative",
        ),
        (
            'signal = "VehSpd"\npartner = "WheelFL"\nscale = 0\ntolerance = 1\nmax_age_ms = 30\n',
            "test.toml:9: rule[0].scale: must not be 0",
        ),
        (
            'signal = "VehSpd"\npartner = "VehSpd"\ntolerance = 1\nmax_age_ms = 30\n',
            "test.toml:8: rule[0].partner: 'VehSpd' is the checked signal itself",
        ),
        (
            'signal = "VehSpd"\npartner = "WheelFL"\ntolerance = -1\nmax_age_ms = 30\n',
            "test.toml:9: rule[0].tolerance: -1 must be ≥ 0",
        ),
        (
            'signal = "VehSpd"\npartner = "WheelFL"\ntolerance = 1\nmax_age_ms = 30\n'
            "persistence = 0\n",
            "test.toml:11: rule[0].persistence: 0 is out of range [1, 100,000]",
        ),
        (
            'signal = "VehSpd"\npartner = "Wheel FL"\ntolerance = 1\nmax_age_ms = 30\n',
            "test.toml:8: rule[0].partner: 'Wheel FL' is not MESSAGE.SIGNAL or SIGNAL",
        ),
        (
            "signals = [\n"
            '  { signal = "VehSpd", partner = "WheelFL", tolerance = 1, max_age_ms = 30 },\n'
            '  { signal = "VehSpd", partner = "WheelFL", tolerance = 2, max_age_ms = 30 },\n'
            "]\n",
            "test.toml:9: rule[0].signals[1].signal: the pair 'VehSpd' ~ 'WheelFL' is already "
            "in signals[0]",
        ),
        (
            'signal = "VehSpd"\npartner = "WheelFL"\ntolerance = 1\nmax_age_ms = 30\nlag = 2\n',
            "test.toml:11: rule[0].lag: unknown key for a rule of kind 'plausibility'",
        ),
    ],
)
def test_errors_name_the_line_key_and_rule(body: str, expected: str) -> None:
    with pytest.raises(RuleFileError) as info:
        parse_rules(HEADER + body, "test.toml")
    assert str(info.value).startswith(expected), str(info.value)
    assert info.value.rule_id == "p"


def test_binding_errors_name_the_partner() -> None:
    text = HEADER + 'signal = "VehSpd"\npartner = "Wheels.WheelRR"\ntolerance = 1\nmax_age_ms = 9\n'
    with pytest.raises(RuleBindingError, match=r"test.toml:8: rule\[0\].partner: message Wheels"):
        _engine(text)


# -- the detector ---------------------------------------------------------------------------------


def test_signals_that_agree_raise_nothing() -> None:
    verdicts, events = run(
        _engine(), _drive(2.0, lambda t: 40 + 5 * t, lambda t: 1.02 * (40 + 5 * t))
    )
    assert events == [] and not any(verdicts)


def test_a_disagreement_is_flagged_once_it_persists_and_explained() -> None:
    # From 1.5 s the speed says 30 km/h while the wheels say 50: a plausible forged value.
    frames = _drive(1.0, lambda t: 50.0, lambda t: 51.0 if t < 1.5 else 30.0)
    verdicts, events = run(_engine(), frames)
    hits = flagged(verdicts, "p")
    forged = [i for i, f in enumerate(frames) if f.arbitration_id == SPEED and f.timestamp > 1.5]
    assert hits == forged[2:]  # the first two disagreeing checks are not yet a finding
    (event,) = events
    assert event.can_id == SPEED and event.count == len(hits)
    assert event.observed == (
        "Speed.VehSpd = 30 while Wheels.WheelFL = 50 (expected 50 … 52; "
        "3 disagreeing checks in 40 ms)"
    )
    assert event.expected == (
        "Speed.VehSpd = 1.02 × Wheels.WheelFL ± 1 (partner at most 30 ms old; "
        "flagged after 3 checks in a row)"
    )


def test_an_agreeing_check_ends_the_run_of_disagreements() -> None:
    # Every third speed frame is off: never three in a row.
    values = iter([30.0, 30.0, 51.0] * 40)
    verdicts, _ = run(_engine(), _drive(2.0, lambda t: 50.0, lambda t: next(values)))
    assert not any(verdicts)


def test_persistence_in_time_waits_for_the_span() -> None:
    text = RULE.replace("persistence = 3", "persistence = 2\npersistence_ms = 100")
    frames = _drive(1.0, lambda t: 50.0, lambda t: 51.0 if t < 1.5 else 30.0)
    verdicts, _ = run(_engine(text), frames)
    first = frames[flagged(verdicts, "p")[0]]
    assert first.timestamp == pytest.approx(1.505 + 0.100)


def test_a_stale_partner_is_ignored() -> None:
    # The wheels fall silent at 1.3 s; the speed then says anything, unjudged.
    frames = _drive(1.0, lambda t: 50.0, lambda t: 51.0 if t < 1.5 else 30.0, wheels_until=1.3)
    verdicts, events = run(_engine(), frames)
    assert events == [] and not any(verdicts)


def test_noise_within_the_tolerance_and_single_outliers_are_tolerated() -> None:
    rng = random.Random(7)
    outliers = {37, 38, 90}  # single and paired glitches of the speed

    def speed(t: float) -> float:
        k = round((t - 1.005) / 0.02)
        return 1.02 * 60 + (15.0 if k in outliers else rng.uniform(-0.9, 0.9))

    verdicts, events = run(_engine(), _drive(3.0, lambda t: 60.0, speed))
    assert events == [] and not any(verdicts)


def test_a_partner_frame_another_rule_condemns_is_no_partner_value() -> None:
    # A forged wheel speed of 250 km/h is out of its range; the genuine speed stays unflagged.
    text = RULE + (
        '\n[[rule]]\nid = "range"\nkind = "signal_range"\nseverity = "high"\n'
        'description = "wheel range"\nbus = "can0"\nsignal = "WheelFL"\nmin = 0\nmax = 200\n'
    )
    frames = _drive(1.0, lambda t: 50.0 if t < 1.5 else 250.0, lambda t: 51.0)
    verdicts, _ = run(_engine(text), frames)
    assert flagged(verdicts, "p") == []
    assert flagged(verdicts, "range")  # the forged wheel frames


def test_an_unchanged_rule_keeps_its_state_across_a_rule_update() -> None:
    ids = _engine()
    frames = _drive(1.0, lambda t: 50.0, lambda t: 51.0 if t < 1.5 else 30.0)
    first = [f for f in frames if f.timestamp < 1.53]  # two disagreeing speed checks, no finding
    rest = frames[len(first) :]
    verdicts, _ = run(ids, first)
    assert not any(verdicts)
    changes = ids.replace_rules(ids.prepare(parse_rules(RULE + "\n", "new.toml")))
    assert changes.kept == ("p",)
    after = [ids.process(f) for f in rest]
    speed_after = [i for i, f in enumerate(rest) if f.arbitration_id == SPEED]
    assert "p" in after[speed_after[0]]  # the third disagreeing check in a row
    # The partner's latest value carried over too: a swap right after a wheel frame.
    ids = _engine()
    run(ids, [_wheels(1.0, 50.0), *(_speed(1.001 + k * 0.001, 30.0) for k in range(2))])
    ids.replace_rules(ids.prepare(parse_rules(RULE, "new.toml")))
    assert ids.process(_speed(1.004, 30.0)) == ("p",)


# -- learning -------------------------------------------------------------------------------------


def test_learn_proposes_a_pair_of_linked_signals_and_skips_drifting_ones() -> None:
    rng = random.Random(3)

    def wheel(t: float) -> float:  # accelerating and braking, a little noise
        return 50 + 20 * ((t % 8) / 4 if t % 8 < 4 else 2 - (t % 8) / 4) + rng.gauss(0, 0.05)

    frames = _drive(30.0, wheel, lambda t: 1.02 * wheel(t - 0.005) + rng.gauss(0, 0.05))
    learned = learn_rules(frames, {"can0": [_db()]})
    rule = learned.get("can0.plausibility")
    assert rule is not None and isinstance(rule.spec, PlausibilitySpec)
    (entry,) = rule.spec.entries  # one direction per pair of messages: the slower one checked
    assert (entry.signal, entry.partner) in {
        ("Speed.VehSpd", "Wheels.WheelFL"),
        ("Speed.VehSpd", "Wheels.WheelFR"),
    }
    assert entry.scale == pytest.approx(1.02, abs=0.01)
    assert 0 < entry.tolerance < 2 and entry.persistence >= 2
    # The learned rule passes the traffic it was learned from.
    verdicts, events = run(_engine(format_rules([rule])), frames)
    assert events == [] and not any(verdicts)
    # Two speeds that only rise together (a drift) are no pair.
    drift = _drive(30.0, lambda t: 10 + t, lambda t: 20 + 2 * t)
    assert learn_rules(drift, {"can0": [_db()]}).get("can0.plausibility") is None
