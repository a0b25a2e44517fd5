"""Replacing the rules of a running engine: unchanged rules keep what they learned, changed and
new rules start fresh, removed rules go, pending events survive; the rule-set revision."""

from __future__ import annotations

import threading
from functools import cache

import can
import pytest

from security.detectors import Detector
from security.engine import IdsEngine, RuleChanges, diff_rules
from security.errors import RuleBindingError, RuleFileError
from security.events import SecurityEvent
from security.learn import learn_rules
from security.rulefile import format_rules, parse_rules, rollback_problem
from security.rules import RuleSet
from tests.security.conftest import (
    FAST,
    drive_frame,
    frame,
    periodic,
    rav4_db,
    rav4_frames,
    rule,
    small_db,
)

TIMING = rule(
    "timing", "can_id = 0x100\nperiod_ms = 10\nmin_count = 8\nmax_count = 12", rule_id="t"
)
SILENCE = rule("suspension", "can_id = 0x100\nmax_silence_ms = 50", rule_id="s")
DLC = rule("dlc", "can_id = 0x200\ndlc = 8", rule_id="d")
COUNTER = rule("counter", "can_id = 0x100", rule_id="c")


def _engine(text: str) -> IdsEngine:
    return IdsEngine(parse_rules(text, "old.toml"), databases={"can0": [small_db()]}, config=FAST)


def _swap(ids: IdsEngine, text: str) -> RuleChanges:
    return ids.replace_rules(ids.prepare(parse_rules(text, "new.toml")))


def _feed(
    ids: IdsEngine, frames: list[can.Message]
) -> tuple[list[tuple[str, ...]], list[SecurityEvent]]:
    verdicts: list[tuple[str, ...]] = []
    events: list[SecurityEvent] = []
    for f in sorted(frames, key=lambda f: f.timestamp):
        verdicts.append(ids.process(f))
        events += ids.pop_events()
    return verdicts, events


def _gap_after(t: float) -> list[can.Message]:
    """0x100 every 10 ms, silent for 60 ms after *t*, then on again for 0.2 s."""
    return periodic(0x100, 0.010, t + 0.065, t + 0.265)


# ---- timing state ----------------------------------------------------------------------------


def test_an_unchanged_timing_rule_keeps_its_window_across_the_swap() -> None:
    ids = _engine(TIMING)
    verdicts, _ = _feed(ids, periodic(0x100, 0.010, 0.0, 1.0))
    assert not any(verdicts)
    changes = _swap(ids, TIMING + DLC)
    assert changes == RuleChanges(kept=("t",), added=("d",))
    # The first frame after a gap is judged against the window filled before the swap.
    verdicts, _ = _feed(ids, _gap_after(0.99))
    assert verdicts[0] == ("t",)


def test_a_changed_timing_rule_starts_fresh() -> None:
    ids = _engine(TIMING)
    _feed(ids, periodic(0x100, 0.010, 0.0, 1.0))
    changes = _swap(ids, TIMING.replace("min_count = 8", "min_count = 7"))
    assert changes == RuleChanges(changed=("t",))
    # A fresh window needs a whole window of its own before it may find too few frames.
    verdicts, _ = _feed(ids, _gap_after(0.99))
    assert verdicts[0] == ()


def test_no_event_right_after_a_swap_while_traffic_goes_on() -> None:
    rules = TIMING + SILENCE + COUNTER
    ids = _engine(rules)
    before = [drive_frame(k * 0.01, 30.0, k % 16) for k in range(100)]
    after = [drive_frame(1.0 + k * 0.01, 30.0, (100 + k) % 16) for k in range(100)]
    verdicts, events = _feed(ids, before)
    assert not any(verdicts) and not events
    # Every rule kept, and one more: the swap itself must not look like an attack.
    assert _swap(ids, rules + DLC).kept == ("t", "s", "c")
    verdicts, events = _feed(ids, after)
    ids.tick(2.0)  # the suspension scan runs after the swap too
    assert not any(verdicts)
    assert events + ids.finish() == []


def test_silence_is_measured_from_before_the_swap_and_reported_once() -> None:
    ids = _engine(SILENCE)
    frames = periodic(0x100, 0.010, 0.0, 1.0) + periodic(0x200, 0.010, 0.0, 1.02)
    _feed(ids, frames)
    _swap(ids, SILENCE + DLC)
    _feed(ids, periodic(0x200, 0.010, 1.02, 1.5))
    ids.tick(1.6)
    (event,) = ids.finish()
    assert event.rule_id == "s" and event.count == 1
    # Silent since 0.99 (the last frame before the swap): found at 1.04 … 1.06, not 50 ms later.
    assert 1.04 <= event.time_us / 1e6 <= 1.06
    # Reported before a second swap: the same silence is not reported again after it.
    ids.tick(1.7)
    _swap(ids, SILENCE)
    ids.tick(2.5)
    assert ids.finish() == []


def test_a_new_suspension_rule_measures_silence_from_the_swap() -> None:
    ids = _engine(DLC)
    _feed(ids, periodic(0x200, 0.010, 0.0, 1.0))  # 0x100 never appears
    _swap(ids, DLC + SILENCE)
    _feed(ids, periodic(0x200, 0.010, 1.0, 1.2))
    ids.tick(1.3)
    (event,) = ids.finish()
    assert event.rule_id == "s"
    assert 1.04 <= event.time_us / 1e6 <= 1.07, event.time_us  # 50 ms after the swap


def test_an_unchanged_counter_rule_judges_the_first_frame_after_the_swap() -> None:
    ids = _engine(COUNTER)
    _feed(ids, [drive_frame(k * 0.01, 30.0, k) for k in range(5)])  # counters 0 … 4
    _swap(ids, COUNTER + DLC)
    verdicts, _ = _feed(ids, [drive_frame(0.05, 30.0, 9)])  # 5 … 8 lost
    assert verdicts == [("c",)]
    # A fresh counter rule would take the first frame as its reference.
    _swap(ids, COUNTER.replace('"high"', '"medium"'))
    verdicts, _ = _feed(ids, [drive_frame(0.06, 30.0, 14)])
    assert verdicts == [()]


def test_condition_signals_carry_over_to_changed_context_rules() -> None:
    def uds(condition: str) -> str:
        body = f'can_ids = [0x7E0]\nuds = ["10 02"]\ncondition = "{condition}"'
        return rule("context", body, rule_id="uds")

    ids = _engine(uds("Drive.Speed > 5"))
    _feed(ids, [drive_frame(0.0, 30.0, 0)])
    assert _swap(ids, uds("Drive.Speed > 10")).changed == ("uds",)
    # The speed was decoded before the swap; the changed rule knows it without a new frame.
    verdicts, _ = _feed(ids, [frame(0.01, 0x7E0, b"\x02\x10\x02")])
    assert verdicts == [("uds",)]


# ---- what changes ------------------------------------------------------------------------------


def test_removed_rules_stop_and_added_rules_start() -> None:
    ids = _engine(DLC)
    assert _feed(ids, [frame(0.0, 0x200, b"\x01")])[0] == [("d",)]
    changes = _swap(ids, COUNTER)
    assert changes == RuleChanges(added=("c",), removed=("d",))
    assert changes.summary() == ("1 rules (0 changed, 1 added, 1 removed; timing state kept for 0)")
    verdicts, _ = _feed(
        ids, [frame(0.1, 0x200, b"\x01"), drive_frame(0.2, 1, 0), drive_frame(0.3, 1, 5)]
    )
    assert verdicts == [(), (), ("c",)]
    assert ids.rules.get("d") is None and ids.rules.get("c") is not None


def test_events_pending_at_the_swap_are_not_lost() -> None:
    ids = _engine(DLC + TIMING)
    _feed(ids, [frame(0.0, 0x200, b"\x01"), frame(0.01, 0x200, b"\x01\x02")])
    _swap(ids, TIMING)  # the dlc rule goes while its event is being aggregated
    _feed(ids, periodic(0x100, 0.010, 0.02, 0.2))
    (event,) = ids.finish()
    assert (event.rule_id, event.count, event.can_id) == ("d", 2, 0x200)
    # Its forensic capture went on collecting the frames that came after, across the swap.
    assert sum(f.time_delta_us > 0 for f in event.frames) == FAST.forensic_after


def test_a_rule_moved_in_its_file_is_unchanged() -> None:
    old = parse_rules(TIMING + DLC)
    new = parse_rules("# a comment\n\n" + DLC + TIMING + COUNTER)
    assert diff_rules(old, new) == RuleChanges(kept=("d", "t"), added=("c",))


def test_a_rule_set_binding_errors_leave_the_engine_untouched() -> None:
    ids = _engine(TIMING)
    bad = rule("signal_range", 'signal = "Drive.NoSuch"\nmax = 1', rule_id="bad")
    with pytest.raises(RuleBindingError, match=r"new.toml:\d+: .*NoSuch.*rule 'bad'"):
        ids.prepare(parse_rules(TIMING + bad, "new.toml"))
    assert ids.rules.get("bad") is None


def test_prepared_rules_swap_in_once_into_their_own_engine() -> None:
    ids, other = _engine(TIMING), _engine(TIMING)
    prepared = ids.prepare(parse_rules(DLC))
    with pytest.raises(ValueError, match="another engine"):
        other.replace_rules(prepared)
    ids.replace_rules(prepared)
    with pytest.raises(ValueError, match="already"):
        ids.replace_rules(prepared)


def test_prepare_runs_in_a_thread_while_frames_are_judged() -> None:
    ids = _engine(TIMING + COUNTER)
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(ids.prepare(parse_rules(TIMING + DLC))))
    worker.start()
    verdicts, _ = _feed(ids, [drive_frame(k * 0.01, 30.0, k % 16) for k in range(300)])
    worker.join()
    assert not any(verdicts)
    assert ids.replace_rules(done[0]).kept == ("t",)  # type: ignore[arg-type]


# ---- revision ----------------------------------------------------------------------------------


def test_revision_is_read_checked_and_written_back() -> None:
    rules = parse_rules("version = 1\nrevision = 42\n" + TIMING)
    assert rules.revision == 42
    assert parse_rules(format_rules(rules)) == rules
    assert parse_rules(TIMING).revision is None
    assert "revision" not in format_rules(parse_rules(TIMING))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('revision = "7"\n', "bad.toml:1: revision: must be a whole number, not a string"),
        ("revision = 7.0\n", "bad.toml:1: revision: must be a whole number, not a number"),
        ("revision = -1\n", "bad.toml:1: revision: -1 is out of range [0, 2**63 - 1]"),
        ("revision = true\n", "bad.toml:1: revision: must be a whole number, not a boolean"),
    ],
)
def test_revision_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(RuleFileError) as info:
        parse_rules(text + TIMING, "bad.toml")
    assert str(info.value).startswith(message)


def test_rollback_problems() -> None:
    def at(revision: int | None, text: str = TIMING) -> RuleSet:
        head = "" if revision is None else f"revision = {revision}\n"
        return parse_rules(head + text)

    assert rollback_problem(at(None), at(1)) is None  # nothing applied had a revision
    assert rollback_problem(at(3), at(4, DLC)) is None
    assert rollback_problem(at(3), at(3)) is None  # the same rules again: harmless
    assert rollback_problem(at(3), at(2)) == (
        "revision 2 is older than the applied revision 3 (a rollback)"
    )
    assert rollback_problem(at(3), at(3, DLC)) == (
        "revision 3 is applied already, with other rules: a changed rule set needs a higher "
        "revision"
    )
    assert rollback_problem(at(3), at(None)) == (
        "the rule set has no revision; the applied one is revision 3"
    )


def test_after_a_swap_every_list_of_a_node_holds_the_detectors_its_checks_run() -> None:
    # The compiler may keep detectors in more lists than the checks (the sequence detectors a
    # flagged frame is taken back from); a carried-over detector must replace its twin in all.
    text = COUNTER + rule("replay", "can_id = 0x100", rule_id="rp") + TIMING
    ids = _engine(text)
    _feed(ids, [drive_frame(k * 0.01, 30.0, k) for k in range(5)])
    _swap(ids, text + DLC)
    for plan in {id(p): p for p in ids._buses.values()}.values():
        for node in plan.nodes.values():
            judging = {id(d) for d, _ in node.checks} | {id(d) for _, d, _ in node.signal_checks}
            for name in type(node).__slots__:
                for d in _detectors(getattr(node, name)):
                    assert id(d) in judging, (name, d.rule.id)


def _detectors(value: object) -> list[Detector]:
    if isinstance(value, Detector):
        return [value]
    if isinstance(value, tuple):
        return [d for item in value for d in _detectors(item)]
    return []


# ---- on real traffic -----------------------------------------------------------------------------


@cache
def _rav4_case() -> tuple[str, list[can.Message]]:
    """Rules learned on the RAV4 log's first half (as text) and its second half with a speed
    spoof (a forged SPEED frame after each of 100 real ones) and a 0x0B4 silence."""
    from can_dbc import Decoder

    frames = rav4_frames()
    half = len(frames) // 2
    learned = learn_rules(frames[:half], {"can0": [rav4_db()]})
    second = frames[half:]
    decoder = Decoder(rav4_db())
    message = rav4_db().get_message_by_frame_id(0x0B4)
    speed = [f for f in second if f.channel == "can0" and f.arbitration_id == 0x0B4]
    forged = []
    for real in speed[400:500]:
        decoded = decoder.decode(0x0B4, real.data)
        assert decoded is not None
        forged.append(
            frame(
                real.timestamp + 0.004, 0x0B4, message.encode({**decoded.signals, "SPEED": 180.0})
            )
        )
    quiet_from = speed[800].timestamp
    attacked = [
        f
        for f in second
        if not (f.arbitration_id == 0x0B4 and quiet_from < f.timestamp < quiet_from + 1)
    ]
    return format_rules(learned), sorted([*attacked, *forged], key=lambda f: f.timestamp)


def _run_with_swaps(
    text: str, frames: list[can.Message], every: int, swap_to: str | None
) -> tuple[list[tuple[str, ...]], list[SecurityEvent]]:
    ids = IdsEngine(parse_rules(text), databases={"can0": [rav4_db()]})
    verdicts: list[tuple[str, ...]] = []
    events: list[SecurityEvent] = []
    for i, f in enumerate(frames):
        if swap_to is not None and i and i % every == 0:
            ids.replace_rules(ids.prepare(parse_rules(swap_to)))
        verdicts.append(ids.process(f))
        events += ids.pop_events()
    return verdicts, events + ids.finish()


def test_swapping_in_the_same_rules_during_an_attack_changes_nothing() -> None:
    text, frames = _rav4_case()
    verdicts, events = _run_with_swaps(text, frames, 0, None)
    assert {"can0.signal-range", "can0.timing"} <= {r for v in verdicts for r in v}
    assert "can0.suspension" in {e.rule_id for e in events}
    # Equal rules, parsed anew: every detector carries over, so the verdicts and events are
    # exactly those of an engine that never had its rules replaced.
    assert _run_with_swaps(text, frames, 3000, text) == (verdicts, events)
    # An added rule leaves the others' verdicts and events alone too.
    extra = rule("dlc", "can_id = 0x7FF\ndlc = 8", rule_id="extra")
    swapped, swapped_events = _run_with_swaps(text, frames, 3000, text + extra)
    assert [tuple(r for r in v if r != "extra") for v in swapped] == verdicts
    assert [e for e in swapped_events if e.rule_id != "extra"] == events
