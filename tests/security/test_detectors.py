"""Detectors that follow a sequence, with a forger interleaving frames with the real sender: the
forged frames are flagged, the real sender's are not (see the module docstring of
:mod:`security.detectors`)."""

from __future__ import annotations

import random
from typing import Any

import can
import pytest

from security.compiler import compile_rules
from security.detectors import Crowd
from security.rulefile import parse_rules
from tests.security.conftest import drive_frame, engine, flagged, rule, run, small_db

COUNTER = rule("counter", "can_id = 0x100\nmax_step = 1", rule_id="counter")
REPLAY = rule("replay", "can_id = 0x100", rule_id="replay")
RANGE = rule(
    "signal_range", 'signals = [{ signal = "Drive.Speed", min = 0, max = 200 }]', rule_id="range"
)
RATE = rule("signal_rate", 'signal = "Speed"\nmax_rate = 40\nmax_step = 0.5', rule_id="rate")
TIMING = rule(
    "timing",
    "can_id = 0x100\nperiod_ms = 10\nwindow_periods = 10\nmin_count = 8\nmax_count = 12",
    rule_id="timing",
)


def _spoofed(
    forged_speed: float, *, lead: float = 0.001, jitter: float = 0.0002, seed: int = 1
) -> tuple[list[can.Message], set[int]]:
    """3 s of a 10 ms sender (counter k, 50 km/h, a little jitter) and, from 1 s to 2 s, a
    forged frame *lead* seconds before each real one, taking the counter that real frame carries
    (the last one seen + 1), as ``sim.attacks.Spoofing`` does; and the ids of the forged frames."""
    rng = random.Random(seed)
    frames = []
    forged = set()
    for k in range(300):
        t = k * 0.010 + rng.uniform(-jitter, jitter)
        if 100 <= k < 200:
            fake = drive_frame(t - lead, forged_speed, k % 16)
            forged.add(id(fake))
            frames.append(fake)
        frames.append(drive_frame(t, 50.0, k % 16))
    return frames, forged


def _split(frames: list[can.Message], forged: set[int], hits: list[int]) -> tuple[int, list[float]]:
    """How many forged frames *hits* holds, and the genuine ones it holds (their times)."""
    mine = [frames[i] for i in hits]
    return sum(id(f) in forged for f in mine), [f.timestamp for f in mine if id(f) not in forged]


def test_a_condemned_forgery_is_no_reference_for_counters_rates_and_timing() -> None:
    frames, forged = _spoofed(250.0)  # out of range: the range rule condemns each forged frame
    verdicts, events = run(engine(COUNTER + REPLAY + RANGE + RATE + TIMING), frames)
    for f, verdict in zip(frames, verdicts, strict=True):
        if id(f) in forged:
            # the counter, replay and rate rules took the frame back: it never became the
            # reference the real frame after it is judged by
            assert "range" in verdict and not {"counter", "replay"} & set(verdict), verdict
        else:
            assert verdict == (), (f.timestamp, verdict)
    # The timing rule counts the condemned frames apart: the real sender's frames are not too
    # many, the forged ones are — the id runs at twice its rate.
    caught, genuine = _split(frames, forged, flagged(verdicts, "timing"))
    assert genuine == [] and caught >= 95
    timing = [e.observed for e in events if e.rule_id == "timing"]
    assert timing[0] == "13 frames in 100 ms, 3 of them flagged by other rules"


def test_timing_flags_the_frames_off_the_senders_phase_and_they_are_no_reference() -> None:
    # A plausible speed: only the timing rule can tell, by phase, which frame is the intruder.
    frames, forged = _spoofed(50.2)
    verdicts, events = run(engine(COUNTER + REPLAY + TIMING), frames)
    caught, genuine = _split(frames, forged, flagged(verdicts, "timing"))
    assert genuine == [] and caught >= 95  # the count goes over after a few forged frames
    # Until then a forged frame is the counter's reference and the real one repeats its counter;
    # once timing condemns them, the counter and replay rules leave the real frames alone.
    for rule_id in ("counter", "replay"):
        _, genuine = _split(frames, forged, flagged(verdicts, rule_id))
        assert all(t < 1.1 for t in genuine), genuine
    observed = [e.observed for e in events if e.rule_id == "timing"]
    assert observed and all(o.endswith("ms off the sender's phase") for o in observed)


def test_timing_flags_every_frame_when_the_phases_cannot_tell_the_streams_apart() -> None:
    # The intruder on the sender's own phase (a replay of its frames): too many frames, and no
    # telling which are extra — every frame is flagged while the count is over, and no finding
    # condemns a frame, so the counter keeps judging the sequence as it comes.
    frames, forged = _spoofed(50.0, lead=0.00001, jitter=0.001)
    verdicts, events = run(engine(TIMING), frames)
    caught, genuine = _split(frames, forged, flagged(verdicts, "timing"))
    assert caught >= 95 and len(genuine) >= 90
    assert {e.observed for e in events} == {"more than 12 frames in 100 ms"}


def test_two_forged_frames_between_two_real_ones_do_not_take_over_the_rate() -> None:
    def f(t: float, speed: float) -> can.Message:
        return drive_frame(t, speed, 0)

    real = [f(k * 0.010, 50.0 + 0.1 * k) for k in range(30)]
    # forged at 250 km/h: alone between two real frames, then two in a row, then alone again
    fakes = [f(0.105, 250.0), f(0.155, 250.0), f(0.158, 250.0), f(0.205, 250.0)]
    frames = sorted(real + fakes, key=lambda m: m.timestamp)
    verdicts, _ = run(engine(RATE + RANGE), frames)
    fake_times = [0.105, 0.155, 0.158, 0.205]
    assert [frames[i].timestamp for i in flagged(verdicts, "range")] == fake_times
    # Alone, the rate rule would take the second of the pair as a restarted sender, and flag
    # the real frame after it; the range rule condemns both, so they are taken back.
    assert [frames[i].timestamp for i in flagged(verdicts, "rate")] == fake_times
    verdicts, _ = run(engine(RATE), frames)
    assert [frames[i].timestamp for i in flagged(verdicts, "rate")] == [0.105, 0.155, 0.16, 0.205]


def test_counter_resynchronises_after_a_restart_and_falls_back_for_an_interleaver() -> None:
    def counters(values: list[int]) -> list[int]:
        frames = [drive_frame(k * 0.01, 50.0, c) for k, c in enumerate(values)]
        return flagged(run(engine(COUNTER), frames)[0], "counter")

    assert counters([0, 1, 2, 3, 9, 10, 11, 12]) == [4]  # restarted at 9: one frame flagged
    assert counters([0, 1, 2, 9, 10, 3, 4, 5]) == [3]  # 9, 10 interleaved: 3 goes on from 2


def _detectors(text: str) -> dict[str, Any]:
    node = compile_rules(parse_rules(text, "t.toml"), {"can0": [small_db()]}).buses["can0"]
    found = {d.rule.id: d for d, _ in node.nodes[0x100].checks}
    found.update({d.rule.id: d for _, d, _ in node.nodes[0x100].signal_checks})
    return found


def test_forget_takes_the_last_frame_back() -> None:
    d = _detectors(COUNTER + RATE + TIMING)
    counter, rate, timing = d["counter"], d["rate"], d["timing"]
    for k in range(3):
        counter.check(drive_frame(k * 0.01, 50, k), k * 0.01)
        rate.check_value(50.0, k * 0.01)
    assert counter.check(drive_frame(0.03, 50, 3), 0.03) is None
    counter.forget()
    assert counter.check(drive_frame(0.031, 50, 3), 0.031) is None  # 3 after 2 again: fine
    assert rate.check_value(90.0, 0.03) is not None  # flagged, and a resync candidate …
    rate.forget()
    assert rate.check_value(90.2, 0.04) is not None  # … no more once taken back
    times = sorted([k * 0.010 for k in range(12)] + [0.095, 0.105])
    assert all(timing.check(None, t) is None for t in times)
    detail = timing.check(None, 0.114)  # 13 frames in 100 ms, this one 4 ms off the phase
    assert isinstance(detail, Crowd) and detail.frames is None
    assert detail.offset == pytest.approx(0.004)
    assert timing.count_since(0.112) == 1
    # Out of the sender's count, counted apart: with it, the window holds too many frames.
    assert timing.forget() == Crowd(13, None, 1)
    assert timing.count_since(0.112) == 0
    assert (
        timing.observed(Crowd(13, None, 1))
        == "13 frames in 100 ms, 1 of them flagged by other rules"
    )


def test_which_findings_condemn_the_frame_itself() -> None:
    d = _detectors(COUNTER + REPLAY + RANGE + RATE + TIMING)
    assert d["range"].condemns(250.0)
    assert not d["counter"].condemns((2, 5)) and not d["replay"].condemns((3, 3))
    assert not d["rate"].condemns((50.0, 120.0, 0.01))
    assert d["timing"].condemns(Crowd(None, 0.004))  # off the sender's phase
    assert not d["timing"].condemns(Crowd(None))  # too many, no telling which
    assert not d["timing"].condemns(Crowd(14, None, 2))  # too many with condemned frames
    assert not d["timing"].condemns(3)  # too few
