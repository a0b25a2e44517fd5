"""Scoring an IDS against labelled attacks: per-frame precision, recall and F1, and latency.

Pure functions over what a run produces — the per-frame labels of an attacked stream
(:class:`sim.attacks.LabelledFrame`: injected or forged, or original), the engine's per-frame
verdicts (:meth:`security.engine.IdsEngine.process`: the ids of the rules that flagged each frame)
and its events — used by ``benchmarks/bench_ids_detection.py`` and the detection tests.

Which rules count per frame
    A verdict counts a frame as *flagged* when one of the ``counted`` rules is among its rule ids.
    :func:`frame_rules` gives the rules whose finding is about the frame itself: every kind but
    the windowed rate rules of :data:`WINDOW_KINDS`. ``flood`` flags the frames of the ids that
    fill a bus carrying too many frames, and ``timing`` the frames of an id that runs too fast or
    too slow — when a second stream of the id interleaves with the real sender's, only the frames
    off the sender's phase, but every frame where the two phases cannot be told apart (a replay
    of the sender's own frames, heavy jitter) and every frame of an id that runs too slow. So
    they may flag genuine frames: they say *that* a bus or id is under attack, which the latency
    measures, and not always *which* frames are injected. Every other rule (allowlist, unknown
    bursts, DLC, payload, signal ranges and rates, plausibility pairs, counters, replay,
    checksums, SecOC, context) judges the frame it flags, and a genuine frame it flags is a false
    positive — also when the rule is right that something is wrong (a genuine frame whose
    counter repeats the one a forged frame took is flagged by the counter rule and counted
    against precision; a genuine frame whose signal disagrees with a forged partner, by the
    plausibility rule). Scoring every rule
    instead (``counted`` None) gives the verdict ``tbox ids run --frames`` prints.

Detection latency
    The time from the attack's start to the first occurrence (``time_us``) of the first event at
    or after the start that concerns the attack: an event about one of its target ids, or any
    event when the attack has no target ids (flooding, fuzzing, a replay of the whole bus).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from security.events import SecurityEvent
from security.rules import RuleSet

__all__ = [
    "WINDOW_KINDS",
    "FrameScores",
    "detection_latency",
    "frame_rules",
    "frame_scores",
]

#: Rule kinds that flag every frame arriving while a window is over its limit (see above).
WINDOW_KINDS: Final = frozenset({"flood", "timing"})


def frame_rules(rules: RuleSet) -> frozenset[str]:
    """The ids of the rules of *rules* that judge the frame they flag (all but
    :data:`WINDOW_KINDS`)."""
    return frozenset(rule.id for rule in rules if rule.kind not in WINDOW_KINDS)


@dataclass(frozen=True, slots=True)
class FrameScores:
    """Per-frame confusion counts; positives are injected or forged frames."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    true_negatives: int = 0

    @property
    def positives(self) -> int:
        """Injected or forged frames."""
        return self.true_positives + self.false_negatives

    @property
    def flagged(self) -> int:
        """Frames flagged by a counted rule."""
        return self.true_positives + self.false_positives

    @property
    def precision(self) -> float | None:
        """Flagged frames that were injected (None when nothing was flagged)."""
        return self.true_positives / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        """Injected frames that were flagged (None when nothing was injected)."""
        return self.true_positives / self.positives if self.positives else None

    @property
    def f1(self) -> float | None:
        """Harmonic mean of precision and recall (None when either is undefined)."""
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0


def frame_scores(
    labels: Sequence[bool],
    verdicts: Sequence[Collection[str]],
    counted: Collection[str] | None = None,
) -> FrameScores:
    """Score *verdicts* against *labels* (True: injected or forged), frame by frame.

    A frame counts as flagged when a rule of *counted* is in its verdict (any rule when
    *counted* is None). Raises ValueError when the two sequences differ in length.
    """
    if len(labels) != len(verdicts):
        raise ValueError(f"{len(labels)} labels for {len(verdicts)} verdicts")
    tp = fp = fn = tn = 0
    for injected, verdict in zip(labels, verdicts, strict=True):
        hit = bool(verdict) if counted is None else any(r in counted for r in verdict)
        if injected:
            if hit:
                tp += 1
            else:
                fn += 1
        elif hit:
            fp += 1
        else:
            tn += 1
    return FrameScores(tp, fp, fn, tn)


def detection_latency(
    start: float,
    events: Iterable[SecurityEvent],
    target_ids: Collection[int] = (),
) -> tuple[float, SecurityEvent] | None:
    """Seconds from *start* to the first event concerning the attack, and that event.

    Events concern the attack when they occur at or after *start* and, if *target_ids* are
    given, name one of them. None when no event does.
    """
    start_us = round(start * 1e6)
    best: SecurityEvent | None = None
    for event in events:
        if event.time_us < start_us:
            continue
        if target_ids and event.can_id not in target_ids:
            continue
        if best is None or event.time_us < best.time_us:
            best = event
    if best is None:
        return None
    return (best.time_us - start_us) / 1e6, best
