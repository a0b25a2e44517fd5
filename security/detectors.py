"""The IDS detectors: one small object per rule entry, judging frames or signal values.

A detector's verdict is a plain return value: ``None`` when all is well, otherwise a *detail*
(the offending count, value, length…) that :meth:`Detector.observed` turns into words when an
event is built. Detectors never raise on what traffic brings (odd lengths, NaN values, clocks
going backwards), never emit events and never do I/O; the engine decides what a verdict means.
Some keep the state their decision needs (a timing window, the last good counter value), so
each engine compiles its own.

Three shapes: frame detectors have ``check(frame, t)``, signal detectors ``check_value(value,
t)`` (the engine decodes once per frame for all of them), the suspension detector
``silent(now, last_seen)`` (called by the engine's periodic scan). Every check is written for the
per-frame path: no container is built unless something is flagged, no work is done that the rule
does not ask for.

Detectors that follow a sequence (counters, replay, signal rates, and the timing windows) judge
each frame against a reference taken from earlier frames, so a forged frame must never become
that reference — else the real sender's next frame is judged against the forgery and flagged in
its place. Two safeguards:

* *Taking back* (:meth:`Detector.forget`): when another rule whose finding is about the frame
  itself (:meth:`Detector.condemns`: a value out of range, a bad checksum…) flags a frame,
  the engine has the node's sequence detectors forget it, as if it had never arrived: the real
  sender's next frame is then judged against the real sender's previous one.
* *Resynchronisation*: after a flagged value, the next value that follows on from the flagged
  one without a good value between them is taken as the new reference (a sender that
  restarted, a masquerade that took over), so a single bad frame does not make every later real
  frame look bad. Counters keep the old reference until the new sequence has gone on once more:
  if the old sequence goes on first, two streams interleave (two forged frames happened to come
  between two real ones), and the frame that continues the established sequence is the genuine
  one — the reference returns to it and the intruding stream stays flagged (signal rates do not,
  see :class:`SignalRateDetector`).

Timing windows say that an id runs too fast, not which of its frames is extra; the detector
decides that by phase (see :class:`TimingDetector`): the real sender's frames keep the grid of
periods they had before, the extra frames do not.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Final, NamedTuple

from can_dbc.integrity import IntegritySpec, SignalField
from security.rules import (
    BytePattern,
    DlcEntry,
    FloodSpec,
    PlausibilityEntry,
    Rule,
    SignalRangeEntry,
    SignalRateEntry,
    SuspensionEntry,
    TimingEntry,
    UnknownBurstSpec,
)
from security.secoc import SecOcVerdict, SecOcVerifier

__all__ = [
    "AllowlistDetector",
    "ChecksumDetector",
    "ContextDetector",
    "CounterDetector",
    "Crowd",
    "Detector",
    "DlcDetector",
    "FloodDetector",
    "PayloadDetector",
    "PlausibilityDetector",
    "ReplayDetector",
    "SecOcDetector",
    "SignalRangeDetector",
    "SignalRateDetector",
    "SuspensionDetector",
    "TimingDetector",
    "UnknownBurstDetector",
]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.4g} ms"


def _num(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class Detector:
    """What every detector has: its rule, the CAN id it watches (None: the bus, or for the
    allowlist the id of each flagged frame) and what the rule expects, in words (for events)."""

    __slots__ = ("can_id", "expected", "rule")

    #: Whether the detector judges frames against a reference taken from earlier frames and can
    #: take the last frame back (:meth:`forget`).
    follows_sequence: ClassVar[bool] = False

    def __init__(self, rule: Rule, can_id: int | None, expected: str) -> None:
        self.rule = rule
        self.can_id = can_id
        self.expected = expected

    def observed(self, detail: Any) -> str:
        """What a flagged frame showed, in words."""
        return str(detail)

    def condemns(self, detail: Any) -> bool:
        """Whether the finding *detail* says that the flagged frame itself is bad, whatever came
        before it (its id, length, payload, value, checksum…), so that it must be no reference
        for the detectors that follow a sequence. Not so for the findings that compare a frame
        with earlier ones or count frames: they may be about its neighbours (the frame after a
        forged one, a sender's first frame after a restart, any frame while an id runs too
        fast)."""
        return True

    def forget(self) -> object | None:
        """Undo what the last check learned from its frame (another rule condemned the frame,
        so it is no reference for the next ones). Only for detectors that follow a sequence, and
        only right after their check of that frame. Returns a finding about the frame that
        taking it back brings to light (a timing window that holds too many frames with the
        condemned ones), else None."""
        return None


# ---- frame-id detectors --------------------------------------------------------------------


class AllowlistDetector(Detector):
    """Flags frames whose id is not on the bus's allowlist (called for those frames only)."""

    __slots__ = ()

    def __init__(self, rule: Rule, allowed: int) -> None:
        super().__init__(rule, None, f"one of the {allowed} ids allowed on {rule.bus}")

    def check(self, frame: Any, t: float) -> object | None:
        can_id: int = frame.arbitration_id  # reaching here means the id is unknown
        return can_id

    def observed(self, detail: Any) -> str:
        return f"CAN id 0x{detail:X}"


class UnknownBurstDetector(Detector):
    """Flags a frame of an unknown id when more than ``max_ids`` distinct unknown ids were seen
    in the last ``window_ms`` (called for unknown frames only)."""

    __slots__ = ("counts", "max_ids", "recent", "window")

    def __init__(self, rule: Rule, spec: UnknownBurstSpec) -> None:
        self.window = spec.window_ms / 1000
        self.max_ids = spec.max_ids
        super().__init__(rule, None, f"at most {spec.max_ids} unknown ids in {_ms(self.window)}")
        self.recent: deque[tuple[float, int]] = deque()
        self.counts: dict[int, int] = {}

    def check(self, frame: Any, t: float) -> object | None:
        recent, counts = self.recent, self.counts
        lo = t - self.window
        while recent and not recent[0][0] > lo:  # "not >" also drops NaN times
            _, old = recent.popleft()
            n = counts[old] - 1
            if n:
                counts[old] = n
            else:
                del counts[old]
        can_id = frame.arbitration_id
        recent.append((t, can_id))
        counts[can_id] = counts.get(can_id, 0) + 1
        if len(counts) > self.max_ids:
            return len(counts)
        return None

    def observed(self, detail: Any) -> str:
        return f"{detail} distinct unknown ids in {_ms(self.window)}"


class DlcDetector(Detector):
    """Flags frames whose data length is not one the rule allows."""

    __slots__ = ("dlcs",)

    def __init__(self, rule: Rule, entry: DlcEntry) -> None:
        self.dlcs = entry.dlcs
        shown = " or ".join(map(str, sorted(entry.dlcs)))
        super().__init__(rule, entry.can_id, f"DLC {shown}")

    def check(self, frame: Any, t: float) -> object | None:
        dlc = frame.dlc
        return None if dlc in self.dlcs else dlc

    def observed(self, detail: Any) -> str:
        return f"DLC {detail}"


# ---- timing and load -----------------------------------------------------------------------


class _WindowCounter(Detector):
    """The times of the last ``size`` counted frames in a ring, for O(1) sliding-window counts.

    With the ring full, the slot about to be overwritten holds the frame ``size`` frames back: if
    that one is inside the window, the window holds more than ``size`` frames.
    """

    __slots__ = ("pos", "ring", "size", "window")

    def __init__(
        self, rule: Rule, can_id: int | None, expected: str, size: int, window: float
    ) -> None:
        super().__init__(rule, can_id, expected)
        self.size = size
        self.ring = [-math.inf] * size
        self.pos = 0
        self.window = window

    def count_since(self, lo: float) -> int:
        """How many of the remembered frames are after *lo* (at most ``size``)."""
        return sum(1 for x in self.ring if x > lo)


#: How far a phase anchor moves towards each frame that keeps it: smooths the anchor over a few
#: periods of jitter, and still follows a grid whose period differs a little from the rule's.
_PHASE_GAIN: Final = 0.25
#: Two phases tell two streams apart frame by frame when they are this many mean absolute
#: deviations of the sender's jitter apart (with normal jitter, 2.4 standard deviations: a frame
#: is assigned to the wrong stream about one time in nine at worst, one in fifty at twice that).
_SEPARATION: Final = 3.0
#: The share of the sender's frames that may seem not one period after its previous one (a
#: running average over about eight frames) before the two streams count as mixed up.
_CONFUSION_LIMIT: Final = 0.3
_CONFUSION_GAIN: Final = 0.125


class Crowd(NamedTuple):
    """A timing finding of too many frames: ``frames`` in the window (None: more than the
    maximum, the exact number is beyond the ring), how far the flagged one lies off the
    sender's phase (None: not known, the phases cannot tell the streams apart) and how many of
    the window's frames other rules condemned (see :meth:`TimingDetector.forget`)."""

    frames: int | None
    offset: float | None = None
    condemned: int = 0


#: Too many frames, no telling which are extra.
_CROWD: Final = Crowd(None)


def _phase_offset(delta: float, period: float) -> float:
    """How far *delta* is from the nearest whole number of periods, in (-period/2, period/2]
    (NaN when *delta* is not finite)."""
    return math.remainder(delta, period) if math.isfinite(delta) else math.nan


class TimingDetector(_WindowCounter):
    """Counts an id's frames in a sliding window of ``window_periods`` periods (see
    :class:`~security.rules.TimingEntry`); flags a frame that makes the count too high, or
    — once a whole window has passed since the id's first frame — too low.

    Too many frames mean a second stream of the id interleaves with the sender's, and which of
    the two is the sender's is a matter of phase: its frames keep the grid of periods they had
    before the window overflowed. When the count first goes over, that grid is the median phase
    of the older half of the window, and of the new frame and the one before it (the pair too
    many), the one further off the grid is the intruder; from then on each frame is the sender's
    or the intruder's by the phase it is closer to, both phases following their frames. Only
    the intruder's frames are flagged while the count is over — the sender's are not, also when
    the intruder's came first. The intruder's phase is dropped when it sent nothing for a window.
    """

    __slots__ = (
        "anchor",
        "condemned",
        "confusion",
        "first",
        "intruder",
        "max_count",
        "min_count",
        "overwritten",
        "period",
        "separated",
        "spread",
    )

    follows_sequence = True

    def __init__(self, rule: Rule, window_periods: int, entry: TimingEntry) -> None:
        window = entry.period_ms * window_periods / 1000
        self.min_count = entry.min_count
        self.max_count = entry.max_count
        self.period = entry.period_ms / 1000
        self.first: float | None = None
        self.overwritten = -math.inf
        # Phase anchors (a time on each stream's grid), only while an intruder is followed.
        self.anchor = 0.0
        self.intruder: float | None = None
        self.spread = 0.0  # the sender's jitter (mean absolute deviation), measured with anchor
        self.separated = False  # whether the two phases still tell the streams apart
        self.confusion = 0.0  # how often the sender's frames seem not one period apart
        # Times of the frames other rules condemned, out of the ring (see forget).
        self.condemned: deque[float] = deque()
        super().__init__(
            rule,
            entry.can_id,
            f"{entry.min_count}–{entry.max_count} frames in {_ms(window)} "
            f"({window_periods} periods of {entry.period_ms:.4g} ms)",
            entry.max_count,
            window,
        )

    def check(self, frame: Any, t: float) -> object | None:
        ring = self.ring
        pos = self.pos
        oldest = ring[pos]
        ring[pos] = t
        self.overwritten = oldest
        pos += 1
        if pos == self.size:
            pos = 0
        self.pos = pos
        lo = t - self.window
        if oldest > lo:
            return self._too_many(t)
        if self.intruder is not None:
            self._follow(t)
        first = self.first
        if first is None:
            self.first = t
            return None
        min_count = self.min_count
        # ring[pos - k - 1] is the frame k frames back (negative indexes wrap around).
        if min_count and not t - first < self.window and ring[pos - min_count] <= lo:
            # The frames other rules condemned were on the bus all the same (a masquerade
            # replaces the sender: its id does not run slow).
            count = self.count_since(lo) + sum(1 for x in self.condemned if x > lo)
            if count < min_count:
                return count
        return None

    def _too_many(self, t: float) -> object | None:
        """The verdict on a frame that makes the window too full (see the class docstring)."""
        if not math.isfinite(t):
            return _CROWD  # a broken clock: too many frames, no phase to tell them apart
        intruder = self.intruder
        if intruder is None or t - intruder > self.window:
            return self._start_following(t)
        mine, offset = self._assign(t)
        if not self.separated:
            return _CROWD
        return None if mine else Crowd(None, offset)

    def _start_following(self, t: float) -> object | None:
        """The window just went over: find the sender's phase and the intruder's first frame."""
        self.intruder = None
        period, ring, size, pos = self.period, self.ring, self.size, self.pos
        # The older half of the window, where the intruder's frames are few (the count goes
        # over soon after they start): its median phase is the sender's, its spread the jitter.
        ref = ring[pos]  # the oldest frame remembered
        offsets = sorted(
            _phase_offset(ring[(pos + k) % size] - ref, period) for k in range(max(1, size // 2))
        )
        middle = offsets[len(offsets) // 2]
        anchor = ref + middle
        if not math.isfinite(anchor):
            return _CROWD
        self.spread = sum(abs(o - middle) for o in offsets) / len(offsets)
        offset = math.remainder(t - anchor, period)
        # The sender's slot before this frame's: its next frame is one period after it.
        self.anchor = t - offset - period
        self.intruder = t
        mine = False
        if size > 1:
            before = ring[pos - 2]
            if abs(offset) < abs(_phase_offset(before - anchor, period)):
                # The frame before this one is the intruder's (it passed: it came first).
                self.anchor = t - (1 - _PHASE_GAIN) * offset
                self.intruder = before
                mine = True
            elif before > self.anchor + period / 2:
                self.anchor += period  # the sender's frame of this slot came first
        self.separated = True
        self.confusion = 0.0
        self._check_separation()
        if not self.separated:
            return _CROWD
        return None if mine else Crowd(None, offset)

    def _assign(self, t: float) -> tuple[bool, float]:
        """Whether the frame at *t* is the sender's (else the intruder's), and its offset from
        the sender's phase; the phase it belongs to moves towards it."""
        intruder = self.intruder
        assert intruder is not None
        period = self.period
        offset = _phase_offset(t - self.anchor, period)
        other = _phase_offset(t - intruder, period)
        mine = abs(offset) <= abs(other)
        if mine:
            if self.separated:
                # The sender sends once a period: a frame it seems to have skipped, or to have
                # sent twice, was assigned to the wrong stream.
                slots = round((t - self.anchor) / period)
                self.confusion += _CONFUSION_GAIN * ((slots != 1) - self.confusion)
            self.anchor = t - (1 - _PHASE_GAIN) * offset
        else:
            self.intruder = t - (1 - _PHASE_GAIN) * other
        if self.separated:
            self._check_separation()
        return mine, offset

    def _check_separation(self) -> None:
        """Give up telling the streams apart once their phases come closer than the sender's
        jitter allows, or the frames assigned to the sender stop coming once a period: where
        the phases cross, which one is which is lost for good (until the intruder stops), and
        every frame is flagged while the count is over."""
        intruder = self.intruder
        apart = math.nan if intruder is None else _phase_offset(intruder - self.anchor, self.period)
        if not abs(apart) >= _SEPARATION * self.spread or self.confusion > _CONFUSION_LIMIT:
            self.separated = False

    def _follow(self, t: float) -> None:
        """Keep both phases up to date while the window is not too full."""
        intruder = self.intruder
        assert intruder is not None
        if t - intruder > self.window or not math.isfinite(t):
            self.intruder = None  # the intruder stopped (or the clock broke)
            return
        self._assign(t)

    def condemns(self, detail: Any) -> bool:
        # Only when the phases told the intruder's frame from the sender's.
        return isinstance(detail, Crowd) and detail.offset is not None

    def forget(self) -> object | None:
        """Take the frame out of the sender's count (so the sender's next frames are not judged
        too many because of it) and count it apart: a frame the window cannot hold with the
        condemned frames beside the sender's is flagged here too — the id runs too fast. The
        phases are left as they are (the frame moved at most one anchor a quarter of the way)."""
        pos = self.pos - 1
        if pos < 0:
            pos = self.size - 1
        ring = self.ring
        t = ring[pos]
        ring[pos] = self.overwritten
        self.pos = pos
        condemned = self.condemned
        lo = t - self.window
        while condemned and not condemned[0] > lo:  # "not >" also drops NaN times
            condemned.popleft()
        condemned.append(t)
        count = self.count_since(lo) + len(condemned)
        if count > self.max_count:
            return Crowd(count, None, len(condemned))
        return None

    def observed(self, detail: Any) -> str:
        if isinstance(detail, Crowd):
            if detail.frames is None:
                text = f"more than {self.max_count} frames in {_ms(self.window)}"
            else:
                text = f"{detail.frames} frames in {_ms(self.window)}"
            if detail.condemned:
                text += f", {detail.condemned} of them flagged by other rules"
            if detail.offset is not None:
                text += f"; this one {_ms(abs(detail.offset))} off the sender's phase"
            return text
        return f"{detail} frames in {_ms(self.window)}"


class FloodDetector(_WindowCounter):
    """Counts frames on the bus (or of some ids) in a sliding window; over the limit, flags the
    frames of the ids that hold at least ``share`` of the window (the ids in a parallel ring
    are counted only then)."""

    __slots__ = ("counts", "ids", "min_count")

    def __init__(self, rule: Rule, spec: FloodSpec) -> None:
        window = spec.window_ms / 1000
        self.ids = [-1] * spec.max_frames
        self.min_count = spec.share * spec.max_frames
        self.counts: Callable[[int], bool] | None = None
        if spec.can_ids is not None or spec.max_id is not None:
            self.counts = spec.counts
        scope = "frames"
        if spec.can_ids is not None:
            scope = "frames of " + ", ".join(f"0x{i:X}" for i in sorted(spec.can_ids)[:8])
        elif spec.max_id is not None:
            scope = f"frames with ids up to 0x{spec.max_id:X}"
        super().__init__(
            rule,
            None,
            f"at most {spec.max_frames} {scope} in {_ms(window)}",
            spec.max_frames,
            window,
        )

    def check(self, frame: Any, t: float) -> object | None:
        can_id = frame.arbitration_id
        counts = self.counts
        if counts is not None and not counts(can_id):
            return None
        ring = self.ring
        pos = self.pos
        oldest = ring[pos]
        ring[pos] = t
        self.ids[pos] = can_id
        pos += 1
        if pos == self.size:
            pos = 0
        self.pos = pos
        if oldest > t - self.window:
            # Over the limit, the ring holds only frames of the window: count this id's.
            mine = self.ids.count(can_id)
            if mine >= self.min_count:
                return (can_id, mine)
        return None

    def condemns(self, detail: Any) -> bool:
        return False  # every frame of the flooding id, the sender's too

    def observed(self, detail: Any) -> str:
        can_id, mine = detail
        return (
            f"more than {self.size} frames in {_ms(self.window)}, "
            f"{mine} of the last {self.size} with id 0x{can_id:X}"
        )


class SuspensionDetector(Detector):
    """Judges an id's silence: flagged once when it exceeds ``max_silence_ms``, again only after
    the id has come back."""

    __slots__ = ("limit", "reported")

    def __init__(self, rule: Rule, entry: SuspensionEntry) -> None:
        self.limit = entry.max_silence_ms / 1000
        self.reported = False
        super().__init__(rule, entry.can_id, f"a frame at least every {_ms(self.limit)}")

    def silent(self, now: float, last_seen: float) -> object | None:
        """The silence so far if it is too long and not reported yet, else None."""
        silence = now - last_seen
        if silence > self.limit:
            if self.reported:
                return None
            self.reported = True
            return silence
        self.reported = False
        return None

    def observed(self, detail: Any) -> str:
        return f"silent for {_ms(detail)}"


# ---- payload -------------------------------------------------------------------------------


class PayloadDetector(Detector):
    """Flags payloads without a required byte pattern (or with a forbidden one)."""

    __slots__ = ("forbid", "mask", "nbytes", "value")

    def __init__(self, rule: Rule, can_id: int, pattern: BytePattern, forbid: bool) -> None:
        self.nbytes = len(pattern.mask)
        self.mask = int.from_bytes(pattern.mask, "big")
        self.value = int.from_bytes(pattern.value, "big")
        self.forbid = forbid
        text = f"payload & {pattern.mask.hex().upper()} == {pattern.value.hex().upper()}"
        super().__init__(rule, can_id, f"not {text}" if forbid else text)

    def check(self, frame: Any, t: float) -> object | None:
        data = frame.data
        excess = len(data) - self.nbytes
        if excess >= 0:
            head = int.from_bytes(data, "big") >> (8 * excess)
        else:
            head = int.from_bytes(data, "big") << (-8 * excess)  # zero padding
        if (head & self.mask == self.value) is self.forbid:
            return bytes(data)
        return None

    def observed(self, detail: Any) -> str:
        return f"payload {detail.hex().upper()}"


class _CounterBase(Detector):
    """A rolling counter read from the payload, judged step by step with resynchronisation and
    taking back (see the module docstring): ``good`` is the last accepted value, ``suspect`` the
    last flagged one when no good value came after it, ``fallback`` the reference before a
    resynchronisation until the new sequence has gone on once more."""

    __slots__ = ("fallback", "field", "good", "modulus", "saved", "suspect")

    follows_sequence = True

    def __init__(self, rule: Rule, can_id: int, field: SignalField, expected: str) -> None:
        super().__init__(rule, can_id, expected)
        self.field = field
        self.modulus = 1 << field.length
        self.good: int | None = None
        self.suspect: int | None = None
        self.fallback: int | None = None
        self.saved: tuple[int | None, int | None, int | None] = (None, None, None)

    def acceptable(self, step: int) -> bool:
        """Whether a step of *step* (modulo the counter's range) is what the rule allows."""
        raise NotImplementedError

    def check(self, frame: Any, t: float) -> object | None:
        value = self.field.read(frame.data)
        good, suspect, fallback = self.good, self.suspect, self.fallback
        self.saved = (good, suspect, fallback)
        if good is None:
            self.good = value
            return None
        acceptable, modulus = self.acceptable, self.modulus
        if acceptable((value - good) % modulus):
            self.good = value
            self.suspect = self.fallback = None
            return None
        if fallback is not None and acceptable((value - fallback) % modulus):
            # The sequence from before the resynchronisation goes on: the new one was a second
            # stream, and this frame, continuing the established one, is the sender's.
            self.good = value
            self.suspect = self.fallback = None
            return None
        if suspect is not None and acceptable((value - suspect) % modulus):
            self.good = value
            self.suspect = None
            self.fallback = good
            return None
        self.suspect = value
        return (good, value)

    def condemns(self, detail: Any) -> bool:
        return False  # judged against the previous frame, which may be the forged one

    def forget(self) -> None:
        self.good, self.suspect, self.fallback = self.saved

    def observed(self, detail: Any) -> str:
        return f"counter {detail[1]} after {detail[0]}"


class CounterDetector(_CounterBase):
    """Flags a rolling counter that does not advance by 1 … ``max_step`` (lost or injected
    frames)."""

    __slots__ = ("max_step",)

    def __init__(self, rule: Rule, can_id: int, field: SignalField, max_step: int) -> None:
        self.max_step = max_step
        expected = "counter + 1" if max_step == 1 else f"counter + 1 … {max_step}"
        super().__init__(rule, can_id, field, expected)

    def acceptable(self, step: int) -> bool:
        return 1 <= step <= self.max_step


class ReplayDetector(_CounterBase):
    """Flags a rolling counter that repeats or goes back by up to ``history`` values (a stale
    frame played back)."""

    __slots__ = ("history",)

    def __init__(self, rule: Rule, can_id: int, field: SignalField, history: int | None) -> None:
        modulus = 1 << field.length
        self.history = history if history is not None else max(0, modulus // 2 - 1)
        super().__init__(
            rule,
            can_id,
            field,
            f"a fresh counter (not a repeat, not back by up to {self.history})",
        )

    def acceptable(self, step: int) -> bool:
        return step != 0 and step < self.modulus - self.history

    def observed(self, detail: Any) -> str:
        good, value = detail
        if value == good:
            return f"counter {value} repeated"
        return f"stale counter {value} after {good}"


class ChecksumDetector(Detector):
    """Flags frames whose checksum is wrong (:meth:`can_dbc.integrity.IntegritySpec.verify`)."""

    __slots__ = ("spec",)

    def __init__(self, rule: Rule, can_id: int, spec: IntegritySpec) -> None:
        self.spec = spec
        super().__init__(rule, can_id, f"a valid {spec.algorithm} checksum")

    def check(self, frame: Any, t: float) -> object | None:
        data = frame.data
        if self.spec.verify(data) is False:
            return (self.spec.read_checksum(data), self.spec.compute_checksum(data))
        return None

    def observed(self, detail: Any) -> str:
        return f"checksum 0x{detail[0]:02X} (0x{detail[1]:02X} computed)"


class SecOcDetector(Detector):
    """Flags frames that fail SecOC verification (:class:`security.secoc.SecOcVerifier`)."""

    __slots__ = ("verifier",)

    def __init__(self, rule: Rule, can_id: int, verifier: SecOcVerifier) -> None:
        self.verifier = verifier
        p = verifier.profile
        super().__init__(
            rule,
            can_id,
            f"a {p.mac_bits}-bit AES-CMAC over data id 0x{p.data_id:04X} with a fresh "
            f"{p.freshness_bits}-bit freshness value",
        )

    def check(self, frame: Any, t: float) -> object | None:
        verdict = self.verifier.verify(frame.data)
        return None if verdict is SecOcVerdict.OK else verdict

    def observed(self, detail: Any) -> str:
        return f"SecOC: {detail.value}" if isinstance(detail, SecOcVerdict) else str(detail)


class ContextDetector(Detector):
    """Flags a request (UDS prefix or byte pattern) while the rule's condition holds."""

    __slots__ = ("clock", "condition", "patterns", "uds")

    def __init__(
        self,
        rule: Rule,
        can_id: int,
        uds: tuple[bytes, ...],
        patterns: tuple[BytePattern, ...],
        condition: Callable[[], bool | None],
        clock: Any,
        condition_text: str,
    ) -> None:
        self.uds = uds
        self.patterns = patterns
        self.condition = condition
        self.clock = clock
        super().__init__(rule, can_id, f"no such request while {condition_text}")

    def check(self, frame: Any, t: float) -> object | None:
        data = frame.data
        if not (self.uds and _uds_matches(data, self.uds)) and not any(
            p.matches(data) for p in self.patterns
        ):
            return None
        self.clock.now = t
        if self.condition() is True:
            return bytes(data)
        return None

    def observed(self, detail: Any) -> str:
        return f"request {detail.hex(' ').upper()}"


def uds_payload(data: bytes | bytearray) -> bytes:
    """The start of the UDS message in an ISO-TP single or first frame (empty for others)."""
    if not data:
        return b""
    pci = data[0] >> 4
    if pci == 0:
        length = data[0] & 0x0F
        if length == 0 and len(data) > 2:  # CAN FD single frame: the length is in byte 1
            return bytes(data[2 : 2 + data[1]])
        return bytes(data[1 : 1 + length])
    if pci == 1:
        return bytes(data[2:])
    return b""


def _uds_matches(data: bytes | bytearray, prefixes: tuple[bytes, ...]) -> bool:
    payload = uds_payload(data)
    return any(payload.startswith(p) for p in prefixes)


# ---- signals -------------------------------------------------------------------------------


class SignalRangeDetector(Detector):
    """Flags a decoded value outside ``[min, max]`` (NaN included)."""

    __slots__ = ("hi", "lo", "signal")

    def __init__(self, rule: Rule, can_id: int, entry: SignalRangeEntry) -> None:
        self.signal = entry.signal
        self.lo = -math.inf if entry.min is None else entry.min
        self.hi = math.inf if entry.max is None else entry.max
        if entry.min is None:
            text = f"{entry.signal} ≤ {_num(self.hi)}"
        elif entry.max is None:
            text = f"{entry.signal} ≥ {_num(self.lo)}"
        else:
            text = f"{entry.signal} in [{_num(self.lo)}, {_num(self.hi)}]"
        super().__init__(rule, can_id, text)

    def check_value(self, value: float, t: float) -> object | None:
        if self.lo <= value <= self.hi:
            return None
        return value

    def observed(self, detail: Any) -> str:
        return f"{self.signal} = {_num(detail)}"


class SignalRateDetector(Detector):
    """Flags a decoded value that moved more than ``max_step + max_rate·Δt`` since the last good
    one (with resynchronisation and taking back, see the module docstring); ``good`` and
    ``suspect`` are ``(value, time)`` pairs.

    No fallback as counters have: a learned allowance is wide (a car's physics with a margin),
    so a forged value often fits it and becomes the reference unflagged; the "established"
    sequence a fallback would return to is then the forgery's (on the RAV4 log, a plausible
    forged speed is pinpointed 40 points worse with one). Forged values that other rules
    condemn are taken back instead.
    """

    __slots__ = ("good", "max_rate", "max_step", "saved", "signal", "suspect")

    follows_sequence = True

    def __init__(self, rule: Rule, can_id: int, entry: SignalRateEntry) -> None:
        self.good: tuple[float, float] | None = None
        self.suspect: tuple[float, float] | None = None
        self.saved: tuple[tuple[float, float] | None, tuple[float, float] | None] = (None, None)
        self.signal = entry.signal
        self.max_rate = entry.max_rate
        self.max_step = entry.max_step
        super().__init__(
            rule,
            can_id,
            f"{entry.signal} changes by at most {_num(entry.max_step)} + "
            f"{_num(entry.max_rate)}/s × Δt",
        )

    def check_value(self, value: float, t: float) -> object | None:
        good, suspect = self.good, self.suspect
        self.saved = (good, suspect)
        if good is None:
            self.good = (value, t)
            return None
        max_step, max_rate = self.max_step, self.max_rate
        dt = t - good[1]
        if abs(value - good[0]) <= max_step + max_rate * (dt if dt > 0 else 0.0):
            self.good = (value, t)
            self.suspect = None
            return None
        if suspect is not None:
            since = t - suspect[1]
            if abs(value - suspect[0]) <= max_step + max_rate * (since if since > 0 else 0.0):
                self.good = (value, t)
                self.suspect = None
                return None
        self.suspect = (value, t)
        return (good[0], value, dt)

    def condemns(self, detail: Any) -> bool:
        return False  # judged against the previous value, which may be the forged one

    def forget(self) -> None:
        self.good, self.suspect = self.saved

    def observed(self, detail: Any) -> str:
        good, value, dt = detail
        return f"{self.signal} {_num(good)} → {_num(value)} in {_ms(dt)}"


class PlausibilityDetector(Detector):
    """Flags a signal that disagrees with its partner signal of another message: ``signal ≈
    scale × partner + offset`` (see :class:`~security.rules.PlausibilityEntry`).

    Two shapes in one object: :meth:`check_value` judges the frames carrying the checked
    signal, :meth:`observe_partner` records the partner's latest value from the partner's frames
    (the compiler puts one among the signal checks of each id). A frame is judged only when the
    partner's value is at most ``max_age_ms`` old: a stale or missing partner says nothing (and
    ends a run of disagreements). One disagreeing check is noise; the frame is flagged once the
    disagreement has held for ``persistence`` checks in a row spanning ``persistence_ms``, and
    every further disagreeing frame until a check agrees.

    The finding condemns the frame (its value contradicts what other ECUs report), so the
    sequence detectors of its id take it back. It follows a sequence in one sense: when another
    rule condemns a partner frame, :meth:`forget` drops that partner value — a forged partner
    must not make the genuine signal look wrong.
    """

    __slots__ = (
        "fed",
        "max_age",
        "min_span",
        "offset",
        "partner",
        "partner_name",
        "partner_t",
        "persistence",
        "relative",
        "scale",
        "signal",
        "since",
        "streak",
        "tolerance",
    )

    follows_sequence = True

    def __init__(
        self, rule: Rule, can_id: int, entry: PlausibilityEntry, signal: str, partner: str
    ) -> None:
        self.signal = signal
        self.partner_name = partner
        self.scale = entry.scale
        self.offset = entry.offset
        self.tolerance = entry.tolerance
        self.relative = entry.relative
        self.max_age = entry.max_age_ms / 1000
        self.persistence = entry.persistence
        self.min_span = entry.persistence_ms / 1000
        self.partner = math.nan
        self.partner_t = -math.inf
        self.fed = False  # whether the last call recorded a partner value (see forget)
        self.streak = 0  # disagreeing checks in a row
        self.since = 0.0  # time of the first of them
        band = _num(entry.tolerance)
        if entry.relative:
            band = (
                f"{_num(entry.relative * 100)} %"
                if not entry.tolerance
                else f"({band} + {_num(entry.relative * 100)} %)"
            )
        relation = f"{_num(entry.scale)} × {partner}"
        if entry.offset:
            relation += f" {'+' if entry.offset > 0 else '−'} {_num(abs(entry.offset))}"
        lasting = f"{entry.persistence} checks in a row"
        if entry.persistence_ms:
            lasting += f" over {_ms(self.min_span)}"
        super().__init__(
            rule,
            can_id,
            f"{signal} = {relation} ± {band} (partner at most {_ms(self.max_age)} old; "
            f"flagged after {lasting})",
        )

    def observe_partner(self, value: float, t: float) -> object | None:
        """Record the partner's value from one of its frames (never a finding)."""
        self.partner = value
        self.partner_t = t
        self.fed = True
        return None

    def check_value(self, value: float, t: float) -> object | None:
        self.fed = False
        age = t - self.partner_t
        if not 0 <= age <= self.max_age:  # none yet, stale, or the clock went back
            self.streak = 0
            return None
        expected = self.scale * self.partner + self.offset
        allowed = self.tolerance + self.relative * abs(expected)
        if abs(value - expected) <= allowed:
            self.streak = 0
            return None
        streak = self.streak + 1  # NaN values disagree too
        if streak == 1:
            self.since = t
        self.streak = streak
        if streak >= self.persistence and t - self.since >= self.min_span:
            return (value, self.partner, expected, allowed, streak, t - self.since)
        return None

    def forget(self) -> None:
        if self.fed:  # a condemned partner frame: no partner value until the next good one
            self.partner_t = -math.inf
            self.fed = False

    def observed(self, detail: Any) -> str:
        value, partner, expected, allowed, streak, span = detail
        return (
            f"{self.signal} = {_num(value)} while {self.partner_name} = {_num(partner)} "
            f"(expected {_num(expected - allowed)} … {_num(expected + allowed)}; "
            f"{streak} disagreeing checks in {_ms(span)})"
        )
