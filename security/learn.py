"""Learning a baseline rule set from clean traffic (``tbox ids learn``).

:class:`BaselineLearner` is fed the frames of a recording known to be free of attacks and then
writes, per bus, one rule of each kind it can learn:

* ``allowlist`` — every id seen; ``unknown_burst`` — more than ``burst_max_ids`` unknown ids in
  ``burst_window_ms``; ``flood`` — the most frames seen in any ``flood_window_ms``, times
  ``flood_margin``;
* ``dlc`` — the lengths seen per id;
* ``timing`` — for ids with at least ``min_timing_frames`` frames spanning two windows or more:
  the mean period (the grid of a periodic sender does not drift, so the mean is its period even
  when single intervals jitter by 40 %), and the fewest and most frames seen in any window of
  ``window_periods`` periods, widened by ``count_margin`` frames each way. The windows are
  counted exactly as the engine counts them, so the clean recording passes its own rule by
  construction and similar traffic passes it with the margin;
* ``suspension`` — for the same ids: silent longer than ``silence_periods`` periods and
  ``silence_margin`` times the longest gap seen;
* ``counter``, ``replay`` and ``checksum`` — for messages whose counter or checksum the DBC
  declares (:mod:`can_dbc.integrity`), when the recording follows them (counters advancing by one
  in ``min_counter_ratio`` of the frames; every checksum right);
* ``signal_range`` and ``signal_rate`` — for numeric signals with at least ``min_distinct``
  distinct values (counters and checksums left out): the range seen widened by ``range_margin``
  of its span each way (within the DBC's declared range); the largest change seen, as
  ``max_step`` (from intervals shorter than ``burst_dt_s``: loggers deliver bursts) and
  ``max_rate`` (longer intervals), times ``rate_margin``, and never below the signal crossing
  its whole learned range in one second;
* ``plausibility`` — pairs of those signals from different messages that physics ties together
  (a vehicle speed and a wheel speed, a motor speed): both must rise and fall, correlate
  (|r| ≥ ``min_correlation``) on a grid of ``plausibility_grid_s`` steps, and so must their
  changes (``min_change_correlation``: two quantities that merely drift over the recording do
  not qualify). One pair per two messages, the best correlated, checking the signal of the
  message sent less often against the latest value of the other (fresher) one — one direction
  only: checking both, each would flag the other's genuine frames when one is forged; the
  ``plausibility_pairs`` best pairs per bus. The relation ``signal ≈ scale × partner +
  offset`` is fitted (least squares) on the pairs the engine will compare — each frame of the
  signal with the partner's latest value — and the tolerance is ``tolerance_margin`` times the
  ``tolerance_quantile`` of the residuals, at least their largest, plus the two signals'
  resolutions; the partner may be ``age_margin`` times its longest gap old; a disagreement must
  hold for ``plausibility_persistence`` checks over ``plausibility_persistence_ms``.

Payload byte patterns are not learned: bits that stay constant through a recording are often
merely idle (30 s of the RAV4 log keeps bits constant that change in the next 30 s, on a fifth of
its ids), so such rules would raise false events. Write them by hand where a bit is known to be
fixed.

The result is a :class:`~security.rules.RuleSet`; :func:`security.rulefile.format_rules` writes
it as a rule file that loads back into an equal one.
"""

from __future__ import annotations

import itertools
import math
import operator
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from can_dbc.errors import DecodeError
from can_dbc.integrity import IntegritySpec, SignalField
from security.rules import (
    DEFAULT_EVENT_IDS,
    DEFAULT_SENSOR_IDS,
    AllowlistSpec,
    ChecksumEntry,
    ChecksumSpec,
    CounterEntry,
    CounterSpec,
    DlcEntry,
    DlcSpec,
    FloodSpec,
    PlausibilityEntry,
    PlausibilitySpec,
    ReplayEntry,
    ReplaySpec,
    Rule,
    RuleSet,
    RuleSpec,
    Severity,
    SignalRangeEntry,
    SignalRangeSpec,
    SignalRateEntry,
    SignalRateSpec,
    SuspensionEntry,
    SuspensionSpec,
    TimingEntry,
    TimingSpec,
    UnknownBurstSpec,
)

__all__ = ["BaselineLearner", "LearnOptions", "learn_rules"]

#: Learned numbers are rounded to this many significant digits (readable files).
_DIGITS: Final = 9


@dataclass(frozen=True, slots=True)
class LearnOptions:
    """Margins and thresholds of learning (see the module docstring)."""

    window_periods: int = 10
    count_margin: int = 2
    min_timing_frames: int = 30
    silence_periods: float = 3.0
    silence_margin: float = 2.0
    flood_window_ms: float = 100.0
    flood_margin: float = 1.5
    burst_window_ms: float = 100.0
    burst_max_ids: int = 3
    min_distinct: int = 16
    max_jumpiness: float = 0.1
    range_margin: float = 1.5
    declared_margin: float = 0.1
    rate_margin: float = 2.0
    rate_floor_s: float = 0.1
    step_floor: float = 0.1
    burst_dt_s: float = 0.005
    min_counter_ratio: float = 0.95
    plausibility_pairs: int = 4
    min_correlation: float = 0.999
    min_change_correlation: float = 0.9
    plausibility_grid_s: float = 0.1
    change_interval_s: float = 1.0
    min_grid_points: int = 100
    tolerance_quantile: float = 0.999
    tolerance_margin: float = 2.0
    age_margin: float = 2.0
    plausibility_persistence: int = 5
    plausibility_persistence_ms: float = 50.0
    series_cap: int = 20_000
    severities: Mapping[str, Severity] = field(
        default_factory=lambda: {
            "allowlist": Severity.HIGH,
            "unknown_burst": Severity.HIGH,
            "flood": Severity.HIGH,
            "dlc": Severity.MEDIUM,
            "timing": Severity.MEDIUM,
            "suspension": Severity.MEDIUM,
            "counter": Severity.MEDIUM,
            "replay": Severity.HIGH,
            "checksum": Severity.HIGH,
            "signal_range": Severity.HIGH,
            "signal_rate": Severity.HIGH,
            "plausibility": Severity.HIGH,
        }
    )

    def __post_init__(self) -> None:
        if not 2 <= self.window_periods <= 1000:
            raise ValueError("window_periods must be in [2, 1000]")
        if self.count_margin < 0 or self.min_timing_frames < 3:
            raise ValueError("count_margin must be ≥ 0 and min_timing_frames ≥ 3")
        for name in ("silence_periods", "silence_margin", "flood_margin", "rate_margin"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be ≥ 1")
        if not (self.flood_window_ms > 0 and self.burst_window_ms > 0):
            raise ValueError("windows must be > 0 ms")
        if self.plausibility_pairs < 0 or not self.plausibility_grid_s > 0:
            raise ValueError("plausibility_pairs must be ≥ 0 and plausibility_grid_s > 0")
        if not (0 < self.min_correlation <= 1 and 0 < self.tolerance_quantile <= 1):
            raise ValueError("min_correlation and tolerance_quantile must be in (0, 1]")
        if self.plausibility_persistence < 1 or self.series_cap < 2:
            raise ValueError("plausibility_persistence must be ≥ 1 and series_cap ≥ 2")


def _round(value: float) -> float:
    """*value* to :data:`_DIGITS` significant digits."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{_DIGITS}g}")


def _round_up(value: float) -> float:
    """The smallest number of :data:`_DIGITS` significant digits not below *value* (margins
    must not shrink when written out)."""
    if value == 0 or not math.isfinite(value) or _round(value) == value:
        return value
    scale = 10.0 ** (math.floor(math.log10(abs(value))) - (_DIGITS - 1))
    steps = math.ceil(value / scale)
    rounded = float(f"{steps * scale:.{_DIGITS + 1}g}")
    if rounded < value:  # the division rounded down
        rounded = float(f"{(steps + 1) * scale:.{_DIGITS + 1}g}")
    return rounded


def _round_down(value: float) -> float:
    """The largest number of :data:`_DIGITS` significant digits not above *value*."""
    return -_round_up(-value)


class _IdStats:
    """What one id of one bus showed."""

    __slots__ = (
        "checksum",
        "checksum_bad",
        "counter",
        "counter_prev",
        "counter_steps",
        "dlcs",
        "times",
    )

    def __init__(self) -> None:
        self.times: array[float] = array("d")
        self.dlcs: set[int] = set()
        self.counter: SignalField | None = None
        self.counter_prev: int | None = None
        self.counter_steps: Counter[int] = Counter()
        self.checksum: IntegritySpec | None = None
        self.checksum_bad = 0


class _SignalStats:
    """What one numeric signal showed: range, distinct values, largest changes."""

    __slots__ = (
        "changes",
        "distinct",
        "hi",
        "lo",
        "max_rate",
        "max_step",
        "prev",
        "prev_t",
        "seen",
        "stride",
        "times",
        "total",
        "values",
    )

    def __init__(self) -> None:
        self.lo = math.inf
        self.hi = -math.inf
        self.distinct: set[float] = set()
        self.prev: float | None = None
        self.prev_t = 0.0
        self.max_step = 0.0  # largest change between consecutive frames
        self.max_rate = 0.0  # largest change per second over longer intervals
        self.total = 0.0  # sum of absolute changes
        self.changes = 0
        # The series, for plausibility pairs: every value, or every stride-th beyond the cap.
        self.times: array[float] = array("d")
        self.values: array[float] = array("d")
        self.stride = 1
        self.seen = 0

    def keep(self, t: float, v: float, cap: int) -> None:
        """Add (t, v) to the series; at *cap* samples, keep every other one from then on."""
        seen = self.seen
        self.seen = seen + 1
        if seen % self.stride:
            return
        self.times.append(t)
        self.values.append(v)
        if len(self.times) >= cap:
            self.times = self.times[::2]
            self.values = self.values[::2]
            self.stride *= 2


class BaselineLearner:
    """Collects statistics frame by frame; :meth:`rules` turns them into a rule set.

    *databases* maps bus names to their cantools databases (signals, counters, checksums are
    learned only where they are given); *source* names the recording in descriptions.
    """

    def __init__(
        self,
        databases: Mapping[str, Sequence[Any]] | None = None,
        options: LearnOptions | None = None,
        *,
        source: str = "",
    ) -> None:
        self.options = options if options is not None else LearnOptions()
        self.source = source
        self.frames = 0
        self._databases: Mapping[str, Sequence[Any]] = databases if databases is not None else {}
        self._ids: dict[tuple[str, int], _IdStats] = {}
        self._bus_windows: dict[str, tuple[deque[float], list[int]]] = {}
        self._decoders: dict[str, Any] = {}
        self._messages: dict[str, dict[int, Any]] = {}
        self._excluded: dict[tuple[str, int], frozenset[str]] = {}
        self._signals: dict[tuple[str, int, str], _SignalStats] = {}

    # -- collecting ---------------------------------------------------------------------------

    def add(self, frame: Any) -> None:
        """Take one frame of the clean recording into account."""
        if frame.is_error_frame or frame.is_remote_frame:
            return
        t = float(frame.timestamp)
        if not math.isfinite(t):
            return
        self.frames += 1
        bus = "" if frame.channel is None else str(frame.channel)
        can_id = int(frame.arbitration_id)
        key = (bus, can_id)
        stats = self._ids.get(key)
        if stats is None:
            stats = self._ids[key] = self._new_id(bus, can_id)
        stats.times.append(t)
        stats.dlcs.add(int(frame.dlc))
        data = frame.data
        if stats.counter is not None:
            value = stats.counter.read(data)
            if stats.counter_prev is not None:
                stats.counter_steps[(value - stats.counter_prev) % (1 << stats.counter.length)] += 1
            stats.counter_prev = value
        if stats.checksum is not None and stats.checksum.verify(data) is False:
            stats.checksum_bad += 1
        self._count_load(bus, t)
        decoder = self._decoders.get(bus)
        if decoder is not None:
            self._add_signals(bus, can_id, decoder, data, t)

    def _new_id(self, bus: str, can_id: int) -> _IdStats:
        stats = _IdStats()
        if bus not in self._messages:
            self._messages[bus] = {}
            databases = self._databases.get(bus)
            if databases:
                from can_dbc import Decoder

                self._decoders[bus] = Decoder.from_databases(list(databases))
                for database in databases:
                    for message in database.messages:
                        self._messages[bus][int(message.frame_id)] = message
        message = self._messages[bus].get(can_id)
        if message is not None:
            try:
                spec = IntegritySpec.for_message(message)
            except ValueError:
                spec = None
            excluded: set[str] = set()
            if spec is not None:
                if spec.counter is not None:
                    excluded.add(spec.counter.name)
                    try:
                        stats.counter = SignalField.of(spec.counter, int(message.length))
                    except ValueError:
                        stats.counter = None
                if spec.checksum is not None:
                    excluded.add(spec.checksum.name)
                    if spec.algorithm is not None:
                        stats.checksum = spec
            self._excluded[(bus, can_id)] = frozenset(excluded)
        return stats

    def _count_load(self, bus: str, t: float) -> None:
        window = self._bus_windows.get(bus)
        if window is None:
            window = self._bus_windows[bus] = (deque(), [0])
        times, most = window
        times.append(t)
        lo = t - self.options.flood_window_ms / 1000
        while times and times[0] <= lo:
            times.popleft()
        most[0] = max(most[0], len(times))

    def _add_signals(self, bus: str, can_id: int, decoder: Any, data: Any, t: float) -> None:
        try:
            decoded = decoder.decode(can_id, data)
        except DecodeError:
            return
        if decoded is None:
            return
        excluded = self._excluded.get((bus, can_id), frozenset())
        limit = self.options.min_distinct
        burst = self.options.burst_dt_s
        cap = self.options.series_cap
        for name, value in decoded.signals.items():
            if isinstance(value, str) or name in excluded:
                continue
            v = float(value)
            if not math.isfinite(v):
                continue
            key = (bus, can_id, name)
            s = self._signals.get(key)
            if s is None:
                s = self._signals[key] = _SignalStats()
            s.lo = min(s.lo, v)
            s.hi = max(s.hi, v)
            if len(s.distinct) < limit:
                s.distinct.add(v)
            prev = s.prev
            if prev is not None:
                change = abs(v - prev)
                s.total += change
                s.changes += 1
                s.max_step = max(s.max_step, change)
                dt = t - s.prev_t
                if dt >= burst and change / dt > s.max_rate:
                    s.max_rate = change / dt
            s.prev, s.prev_t = v, t
            s.keep(t, v, cap)

    # -- the rules ------------------------------------------------------------------------------

    def rules(self) -> RuleSet:
        """The learned rule set (empty without frames)."""
        out: list[Rule] = []
        for bus in sorted({bus for bus, _ in self._ids}):
            out.extend(self._bus_rules(bus))
        return RuleSet(tuple(out), "<learned>")

    def _rule(self, rule_id: str, spec: RuleSpec, description: str) -> Rule:
        kind = spec.KIND
        where = f" (learned from {self.source})" if self.source else " (learned)"
        return Rule(
            id=rule_id,
            severity=self.options.severities.get(kind, Severity.MEDIUM),
            description=description + where,
            spec=spec,
            event_id=DEFAULT_EVENT_IDS[kind],
            sensor_id=DEFAULT_SENSOR_IDS[kind],
        )

    def _bus_rules(self, bus: str) -> list[Rule]:
        o = self.options
        ids = sorted(i for b, i in self._ids if b == bus)
        stats = {i: self._ids[(bus, i)] for i in ids}
        rules = [
            self._rule(
                f"{bus}.allowlist",
                AllowlistSpec(bus, frozenset(ids)),
                f"only the CAN ids of the clean recording appear on {bus}",
            ),
            self._rule(
                f"{bus}.unknown-burst",
                UnknownBurstSpec(bus, o.burst_window_ms, o.burst_max_ids),
                f"no burst of unknown ids on {bus} (fuzzing)",
            ),
        ]
        most = self._bus_windows[bus][1][0]
        rules.append(
            self._rule(
                f"{bus}.flood",
                FloodSpec(bus, o.flood_window_ms, max(1, math.ceil(most * o.flood_margin))),
                f"bus load on {bus} stays near the clean recording's peak ({most} frames in "
                f"{o.flood_window_ms:g} ms)",
            )
        )
        rules.append(
            self._rule(
                f"{bus}.dlc",
                DlcSpec(bus, tuple(DlcEntry(i, frozenset(stats[i].dlcs)) for i in ids)),
                f"each id on {bus} keeps its data length",
            )
        )
        timing: list[TimingEntry] = []
        silences: list[SuspensionEntry] = []
        for i in ids:
            learned = self._timing(i, stats[i].times)
            if learned is not None:
                timing.append(learned[0])
                silences.append(learned[1])
        if timing:
            rules.append(
                self._rule(
                    f"{bus}.timing",
                    TimingSpec(bus, o.window_periods, tuple(timing)),
                    f"periodic ids on {bus} keep their rate (frames counted over "
                    f"{o.window_periods} periods)",
                )
            )
            rules.append(
                self._rule(
                    f"{bus}.suspension",
                    SuspensionSpec(bus, tuple(silences)),
                    f"periodic ids on {bus} do not go silent",
                )
            )
        rules.extend(self._integrity_rules(bus, ids, stats))
        rules.extend(self._signal_rules(bus))
        return rules

    def _timing(
        self, can_id: int, times: array[float]
    ) -> tuple[TimingEntry, SuspensionEntry] | None:
        o = self.options
        n = len(times)
        if n < o.min_timing_frames:
            return None
        ordered = sorted(times)
        span = ordered[-1] - ordered[0]
        if span <= 0:
            return None
        period = span / (n - 1)
        window = period * o.window_periods
        if span < 2 * window:
            return None
        most, fewest = 0, n
        first = ordered[0]
        start = 0
        for k, t in enumerate(ordered):
            lo = t - window
            while ordered[start] <= lo:
                start += 1
            count = k - start + 1
            most = max(most, count)
            if t - first >= window:
                fewest = min(fewest, count)
        gap = max(b - a for a, b in itertools.pairwise(ordered))
        entry = TimingEntry(
            can_id,
            _round(period * 1000),
            max(0, fewest - o.count_margin),
            most + o.count_margin,
        )
        silence = max(o.silence_periods * period, o.silence_margin * gap)
        return entry, SuspensionEntry(can_id, _round_up(silence * 1000))

    def _integrity_rules(
        self, bus: str, ids: list[int], stats: Mapping[int, _IdStats]
    ) -> list[Rule]:
        o = self.options
        counters: list[CounterEntry] = []
        replays: list[ReplayEntry] = []
        checksums: list[ChecksumEntry] = []
        for i in ids:
            s = stats[i]
            total = sum(s.counter_steps.values())
            if s.counter is not None and total >= 2:
                modulus = 1 << s.counter.length
                if s.counter_steps[1] >= o.min_counter_ratio * total:
                    forward = [step for step in s.counter_steps if 0 < step <= modulus // 2]
                    max_step = max(forward, default=1)
                    counters.append(CounterEntry(i, None, max_step))
                    history = min(modulus // 2 - 1, modulus - max_step - 1)
                    if history >= 1 and 0 not in s.counter_steps:
                        replays.append(ReplayEntry(i, None, history))
            if s.checksum is not None and s.checksum_bad == 0 and len(s.times) >= 2:
                checksums.append(ChecksumEntry(i, None))
        rules = []
        if counters:
            rules.append(
                self._rule(
                    f"{bus}.counter",
                    CounterSpec(bus, tuple(counters)),
                    f"rolling counters on {bus} advance without gaps",
                )
            )
        if replays:
            rules.append(
                self._rule(
                    f"{bus}.replay",
                    ReplaySpec(bus, tuple(replays)),
                    f"rolling counters on {bus} never repeat or go back (replayed frames)",
                )
            )
        if checksums:
            rules.append(
                self._rule(
                    f"{bus}.checksum",
                    ChecksumSpec(bus, tuple(checksums)),
                    f"checksums on {bus} are right",
                )
            )
        return rules

    def _signal_rules(self, bus: str) -> list[Rule]:
        o = self.options
        messages = self._messages.get(bus, {})
        ranges: list[SignalRangeEntry] = []
        rates: list[SignalRateEntry] = []
        varying: list[_Candidate] = []
        for (b, can_id, name), s in sorted(self._signals.items()):
            if b != bus or len(s.distinct) < o.min_distinct or s.changes == 0:
                continue
            span = s.hi - s.lo
            if s.total / s.changes > o.max_jumpiness * span:
                continue  # jumps about like a checksum or a hash: no range or rate to learn
            message = messages[can_id]
            signal = next(sig for sig in message.signals if sig.name == name)
            qualified = f"{message.name}.{name}"
            declared_lo, declared_hi = signal.minimum, signal.maximum
            declared = declared_lo is not None and declared_hi is not None
            declared_span = float(declared_hi - declared_lo) if declared else 0.0
            margin = max(o.range_margin * span, o.declared_margin * declared_span)
            lo = s.lo - margin
            hi = s.hi + margin
            if declared_span > 0:
                if declared_lo <= s.lo:
                    lo = max(lo, float(declared_lo))
                if declared_hi >= s.hi:
                    hi = min(hi, float(declared_hi))
            ranges.append(SignalRangeEntry(qualified, _round_down(lo), _round_up(hi)))
            resolution = abs(float(signal.scale)) if signal.scale else 0.0
            rate = max(o.rate_margin * s.max_rate, span / o.rate_floor_s)
            step = max(
                o.rate_margin * s.max_step,
                o.step_floor * span,
                o.declared_margin * max(declared_span, 0.0),
            )
            step += 2 * resolution
            rates.append(SignalRateEntry(qualified, _round_up(rate), _round_up(step)))
            varying.append(_Candidate(can_id, qualified, s, resolution))
        if not ranges:
            return []
        rules = [
            self._rule(
                f"{bus}.signal-range",
                SignalRangeSpec(bus, tuple(ranges)),
                f"signals on {bus} stay in their learned ranges",
            ),
            self._rule(
                f"{bus}.signal-rate",
                SignalRateSpec(bus, tuple(rates)),
                f"signals on {bus} change no faster than physics and the recording allow",
            ),
        ]
        pairs = self._plausibility(bus, varying)
        if pairs:
            rules.append(
                self._rule(
                    f"{bus}.plausibility",
                    PlausibilitySpec(bus, tuple(pairs)),
                    f"signals of different messages on {bus} agree as physics ties them",
                )
            )
        return rules

    def _plausibility(self, bus: str, candidates: list[_Candidate]) -> list[PlausibilityEntry]:
        """The plausibility pairs of *bus* (see the module docstring)."""
        o = self.options
        if o.plausibility_pairs == 0 or len(candidates) < 2:
            return []
        lag = max(1, round(o.change_interval_s / o.plausibility_grid_s))
        grids = _grid_series(candidates, o.plausibility_grid_s, lag, o.min_grid_points)
        if grids is None:
            return []
        frames = {c.can_id: len(self._ids[(bus, c.can_id)].times) for c in candidates}
        best: dict[tuple[int, int], tuple[float, _Candidate, _Candidate]] = {}
        for i, a in enumerate(candidates):
            za, da = grids[i]
            if za is None:
                continue
            for j in range(i + 1, len(candidates)):
                b = candidates[j]
                zb, db = grids[j]
                if zb is None or b.can_id == a.can_id:
                    continue  # one message's signals are forged together: no check
                r = abs(_dot(za, zb))
                if r < o.min_correlation or abs(_dot(da, db)) < o.min_change_correlation:
                    continue
                # One direction per pair of messages (checking both, each would flag the
                # other's genuine frames when one is forged): the message sent less often is
                # checked against the latest value of the more frequent, fresher one.
                checked, partner = a, b
                if (frames[b.can_id], b.can_id) < (frames[a.can_id], a.can_id):
                    checked, partner = b, a
                key = (checked.can_id, partner.can_id)
                held = best.get(key)
                if held is None or r > held[0]:
                    best[key] = (r, checked, partner)
        chosen = sorted(best.values(), key=lambda item: (-item[0], item[1].can_id))
        entries = []
        for _, a, b in chosen:
            entry = self._pair(a, b, bus)
            if entry is not None:
                entries.append(entry)
            if len(entries) == o.plausibility_pairs:
                break
        return entries

    def _pair(self, a: _Candidate, b: _Candidate, bus: str) -> PlausibilityEntry | None:
        """The fitted relation and tolerance of *a* checked against *b*, as the engine will
        compare them (each value of *a* with *b*'s latest, if fresh)."""
        o = self.options
        partner_times = sorted(self._ids[(bus, b.can_id)].times)
        if len(partner_times) < 2:
            return None
        gap = max(y - x for x, y in itertools.pairwise(partner_times))
        max_age = o.age_margin * gap
        xs: list[float] = []
        ys: list[float] = []
        bt, bv = b.stats.times, b.stats.values
        # Past the series cap, the partner's kept values are further apart than its frames.
        fresh = max_age * b.stats.stride
        k = -1
        for t, v in zip(a.stats.times, a.stats.values, strict=True):
            while k + 1 < len(bt) and bt[k + 1] <= t:
                k += 1
            if k >= 0 and t - bt[k] <= fresh:
                xs.append(bv[k])
                ys.append(v)
        n = len(xs)
        if n < o.min_grid_points:
            return None
        mx, my = math.fsum(xs) / n, math.fsum(ys) / n
        sxx = math.fsum((x - mx) ** 2 for x in xs)
        if sxx <= 0:
            return None
        scale = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        offset = my - scale * mx
        scale, offset = _round(scale), _round(offset)
        residuals = sorted(abs(y - (scale * x + offset)) for x, y in zip(xs, ys, strict=True))
        quantile = residuals[min(n - 1, math.ceil(o.tolerance_quantile * n) - 1)]
        tolerance = max(o.tolerance_margin * quantile, residuals[-1])
        tolerance += a.resolution + abs(scale) * b.resolution
        if tolerance <= 0:
            return None
        return PlausibilityEntry(
            a.qualified,
            b.qualified,
            scale,
            offset,
            _round_up(tolerance),
            0.0,
            _round_up(max_age * 1000),
            o.plausibility_persistence,
            o.plausibility_persistence_ms,
        )


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A signal that may take part in a plausibility pair."""

    can_id: int
    qualified: str
    stats: _SignalStats
    resolution: float


_Grid = tuple[list[float] | None, list[float] | None]


def _grid_series(
    candidates: Sequence[_Candidate], step: float, lag: int, min_points: int
) -> list[_Grid] | None:
    """Each candidate's latest value on a common time grid, standardised (mean 0, norm 1), and
    the same of its changes over *lag* grid steps (shorter changes are mostly noise and the lag
    between messages): ``(None, None)`` for a signal that does not both rise and fall there.
    None when the signals share too short a span."""
    lo = max(c.stats.times[0] for c in candidates)
    hi = min(c.stats.times[-1] for c in candidates)
    if not hi > lo:
        return None
    count = int((hi - lo) / step) + 1
    if count < max(min_points, 2 * lag):
        return None
    grid = [lo + k * step for k in range(count)]
    out: list[_Grid] = []
    for c in candidates:
        times, values = c.stats.times, c.stats.values
        sampled: list[float] = []
        k = 0
        for g in grid:
            while k + 1 < len(times) and times[k + 1] <= g:
                k += 1
            sampled.append(values[k])
        changes = [y - x for x, y in zip(sampled, sampled[lag:], strict=False)]
        rise = math.fsum(d for d in changes if d > 0)
        fall = -math.fsum(d for d in changes if d < 0)
        if min(rise, fall) < 0.1 * (rise + fall) or not rise + fall > 0:
            out.append((None, None))  # monotonic (an odometer) or constant here
            continue
        out.append((_standardised(sampled), _standardised(changes)))
    return out


def _standardised(xs: Sequence[float]) -> list[float] | None:
    n = len(xs)
    mean = math.fsum(xs) / n
    centred = [x - mean for x in xs]
    norm = math.sqrt(math.fsum(x * x for x in centred))
    if not norm > 0:
        return None
    return [x / norm for x in centred]


def _dot(xs: list[float] | None, ys: list[float] | None) -> float:
    """The correlation of two standardised series (0 when either is constant)."""
    if xs is None or ys is None:
        return 0.0
    return math.fsum(map(operator.mul, xs, ys))


def learn_rules(
    frames: Iterable[Any],
    databases: Mapping[str, Sequence[Any]] | None = None,
    options: LearnOptions | None = None,
    *,
    source: str = "",
) -> RuleSet:
    """Learn a rule set from the clean *frames* (see the module docstring)."""
    learner = BaselineLearner(databases, options, source=source)
    for frame in frames:
        learner.add(frame)
    return learner.rules()
