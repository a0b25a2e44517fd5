"""Turning decoded frames into collected records: the :class:`SchemeEvaluator`.

The evaluator is pure and deterministic: it does no I/O and never reads the wall clock. Time is
the bus time of the frames it is fed (and of :meth:`SchemeEvaluator.tick`), so replaying a log
gives the same records every time.

**Hot path.** :meth:`SchemeEvaluator.feed` is called once per decoded frame. The first frame of a
(bus, message) pair builds a *route*: which signal slots the frame updates, which on-change
schemes look at it and which conditions read it. Every later frame of that pair costs two dict
lookups and work proportional to the signals someone uses — a frame nobody uses costs almost
nothing, and a condition is evaluated only when a signal it reads is updated (not on every frame).

**Time.** Frames from several buses may arrive slightly out of order; a frame up to 1 s older
than the newest one seen counts as arriving at the newest time (histories stay sorted). A jump
back of more than 1 s is a new clock (a log replayed again, a stepped system clock): open
capture windows are closed and emitted, histories and timers start afresh, and latest values are
kept. A jump forward gives at most one record per periodic scheme (the values did not change in
between).

**Timers.** Periodic records and the end of capture windows are due at bus times; they are
emitted by whichever call first passes that time, :meth:`~SchemeEvaluator.feed` or
:meth:`~SchemeEvaluator.tick` (the agent ticks when buses are quiet).

**Order within one frame.** Records due before the frame's time come first (a periodic record
holds the values from before its boundary), then the frame's values are applied, then on-change
schemes compare them, then each condition reading any of them is evaluated — once per frame,
after all of the frame's values are in, so ``A.X > A.Y`` sees both values of the same frame.

**Memory.** Per signal name: its latest and previous value, and for signals a window function or
capture window needs, a history bounded in time and count (:mod:`agent.schemes.history`). Per
condition: at most one open capture window. Routes: one per (bus, message) pair seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from agent.schemes.errors import SchemeError
from agent.schemes.history import Clock, History, SignalSlot, Value
from agent.schemes.model import (
    CollectedRecord,
    Condition,
    OnChange,
    Periodic,
    Sample,
    Scheme,
    SignalRef,
)

__all__ = ["CLOCK_STEP_S", "SchemeEvaluator"]

# Times are floats of seconds; a period or interval computed as a difference of two of them can
# miss by one rounding step (1.0 - 0.9 < 0.1), so comparisons against periods allow this slack.
_EPS: Final = 1e-9
#: How far back a frame's time may be before it is taken as a new clock rather than jitter.
CLOCK_STEP_S: Final = 1.0
# A capture's history keeps pre + post and this much more, against rounding of the window ends.
_CAPTURE_MARGIN_S: Final = 0.001
_INF: Final = math.inf


class _PeriodicState:
    __slots__ = (
        "entries",
        "expiry",
        "id",
        "k_next",
        "last_included",
        "period_ms",
        "priority",
        "scheme",
        "start",
    )

    def __init__(self, scheme: Scheme, slot: _Slots) -> None:
        assert isinstance(scheme.collection, Periodic)
        self.scheme = scheme
        self.id = scheme.id
        self.priority = scheme.priority
        self.start = -_INF if scheme.start is None else scheme.start
        self.expiry = _INF if scheme.expiry is None else scheme.expiry
        self.period_ms = scheme.collection.period_ms
        self.entries = tuple(
            (s.name, slot(s.name), s.min_sample_period_ms / 1000 - _EPS)
            for s in scheme.collection.signals
        )
        # Index of the next period boundary (boundary k is at k * period); None until the
        # first time is seen.
        self.k_next: int | None = None
        self.last_included = [-_INF] * len(self.entries)

    def restart(self) -> None:
        self.k_next = None
        self.last_included = [-_INF] * len(self.entries)


class _OnChangeState:
    __slots__ = ("expiry", "id", "kept_t", "last", "priority", "scheme", "start")

    def __init__(self, scheme: Scheme) -> None:
        assert isinstance(scheme.collection, OnChange)
        self.scheme = scheme
        self.id = scheme.id
        self.priority = scheme.priority
        self.start = -_INF if scheme.start is None else scheme.start
        self.expiry = _INF if scheme.expiry is None else scheme.expiry
        n = len(scheme.collection.signals)
        self.last: list[Value | None] = [None] * n  # last reported value; None: never
        self.kept_t = [-_INF] * n

    def restart(self) -> None:
        self.kept_t = [-_INF] * len(self.kept_t)


class _ConditionState:
    __slots__ = (
        "capture",
        "deadline",
        "expiry",
        "fn",
        "id",
        "last_result",
        "last_trigger",
        "min_interval",
        "open_time",
        "post",
        "pre",
        "priority",
        "rising",
        "scheme",
        "snapshot",
        "start",
    )

    def __init__(self, scheme: Scheme, slot: _Slots, clock: Clock) -> None:
        c = scheme.collection
        assert isinstance(c, Condition)
        self.scheme = scheme
        self.id = scheme.id
        self.priority = scheme.priority
        self.start = -_INF if scheme.start is None else scheme.start
        self.expiry = _INF if scheme.expiry is None else scheme.expiry
        self.fn = c.expression.bind(slot, clock, {g.id: g for g in c.geofences})
        self.rising = c.rising_edge_only
        self.min_interval = c.min_interval_ms / 1000 - _EPS
        self.pre = c.pre_ms / 1000
        self.post = c.post_ms / 1000
        self.capture = tuple(
            (s.name, slot(s.name), s.min_sample_period_ms / 1000 - _EPS) for s in c.capture
        )
        self.last_result = False
        self.last_trigger = -_INF
        self.open_time: float | None = None  # trigger time of the capture waiting for post_ms
        self.deadline = _INF
        self.snapshot: tuple[tuple[float, Value | None], ...] = ()

    def restart(self) -> None:
        self.last_trigger = -_INF


_State = _PeriodicState | _OnChangeState | _ConditionState


class _Slots:
    """Signal slots by name, created on first use with the history their users need."""

    def __init__(self, keep: Mapping[str, float], previous: Mapping[str, SignalSlot]) -> None:
        self.keep = keep
        self.previous = previous
        self.slots: dict[str, SignalSlot] = {}

    def __call__(self, name: str) -> SignalSlot:
        slot = self.slots.get(name)
        if slot is not None:
            return slot
        keep = self.keep.get(name, 0.0)
        slot = self.previous.get(name)
        if slot is None:
            slot = SignalSlot(name)
        # Values and history of a signal still in use survive a replace(); only the span kept
        # follows the new scheme set.
        if keep <= 0.0:
            slot.history = None
        elif slot.history is None:
            slot.history = History(keep)
        else:
            slot.history.keep = keep
        self.slots[name] = slot
        return slot


class _Route:
    """What one (bus, message) pair's frames touch; built on its first frame."""

    __slots__ = ("conditions", "on_change", "updates")

    def __init__(
        self,
        updates: tuple[tuple[str, SignalSlot], ...],
        on_change: tuple[
            tuple[_OnChangeState, tuple[tuple[str, int, float, float, str], ...]], ...
        ],
        conditions: tuple[tuple[_ConditionState, tuple[str, ...]], ...],
    ) -> None:
        self.updates = updates
        self.on_change = on_change
        self.conditions = conditions


_NO_ROUTE: Final = _Route((), (), ())


class SchemeEvaluator:
    """Evaluates a set of collection schemes over decoded frames; pure and deterministic.

    Call :meth:`feed` for every decoded frame and :meth:`tick` now and then when frames may be
    sparse; both return the records that became complete. :meth:`replace` swaps the scheme set.
    Scheme ids must be unique (:class:`~agent.schemes.errors.SchemeError` otherwise).
    """

    def __init__(self, schemes: Sequence[Scheme]) -> None:
        self._clock = Clock(-_INF)
        self._now = -_INF
        self._next_timer = -_INF
        self._schemes: tuple[Scheme, ...] = ()
        self._slots: dict[str, SignalSlot] = {}
        self._states: dict[str, _State] = {}
        self._periodic: tuple[_PeriodicState, ...] = ()
        self._conditions: tuple[_ConditionState, ...] = ()
        self._open: list[_ConditionState] = []
        self._refs: dict[str, SignalRef] = {}
        self._routes: dict[str, dict[str, _Route]] = {}
        self._install(schemes)

    # -- the scheme set -----------------------------------------------------------------------

    @property
    def schemes(self) -> tuple[Scheme, ...]:
        """The schemes being evaluated, in the order given."""
        return self._schemes

    def signals_used(self) -> frozenset[str]:
        """Every signal name any scheme reads or records, spelled as the schemes spell it."""
        return frozenset(self._refs)

    def decoder_signals(self, bus: str) -> frozenset[str]:
        """The names to subscribe a decoder of *bus* to (``MESSAGE.SIGNAL`` or ``SIGNAL``)."""
        return frozenset(
            ref.decoder_name() for ref in self._refs.values() if ref.bus in (None, bus)
        )

    def replace(self, schemes: Sequence[Scheme]) -> list[CollectedRecord]:
        """Swap in a new scheme set (pushed over MQTT); returns records of cut-short captures.

        Values and histories of signals still used are kept, so windows and ``prev()`` go on
        without a gap. A scheme that is unchanged (same id, equal definition) keeps its state:
        it does not report its on-change values again nor re-trigger on an edge it already saw.
        A removed or changed scheme's open capture window is closed now and returned.
        """
        _check_unique(schemes)
        new = {s.id: s for s in schemes}
        out: list[CollectedRecord] = []
        for state in list(self._open):
            if new.get(state.id) != state.scheme:
                out.append(self._close_capture(state))
        self._install(schemes)
        return out

    def _install(self, schemes: Sequence[Scheme]) -> None:
        _check_unique(schemes)
        keep: dict[str, float] = {}
        refs: dict[str, SignalRef] = {}
        for scheme in schemes:
            for name in sorted(scheme.signals_used()):
                refs[name] = SignalRef.parse(name)
            c = scheme.collection
            if isinstance(c, Condition):
                for name, span in c.expression.windows:
                    keep[name] = max(keep.get(name, 0.0), span)
                if c.pre_ms or c.post_ms:
                    span = (c.pre_ms + c.post_ms) / 1000 + _CAPTURE_MARGIN_S
                    for spec in c.capture:
                        keep[spec.name] = max(keep.get(spec.name, 0.0), span)
        slot = _Slots(keep, self._slots)
        states: dict[str, _State] = {}
        for scheme in schemes:
            old = self._states.get(scheme.id)
            if old is not None and old.scheme == scheme:
                # Unchanged: its closures are bound to slots looked up by name, which _Slots
                # hands out again (the same objects), so the state carries over as it is.
                for name in scheme.signals_used():
                    slot(name)
                states[scheme.id] = old
            elif isinstance(scheme.collection, Periodic):
                states[scheme.id] = _PeriodicState(scheme, slot)
            elif isinstance(scheme.collection, OnChange):
                states[scheme.id] = _OnChangeState(scheme)
                for spec in scheme.collection.signals:
                    slot(spec.name)
            else:
                states[scheme.id] = _ConditionState(scheme, slot, self._clock)
        # Running min/max of window functions that left with a replaced scheme stop costing.
        extremes: dict[str, set[tuple[float, bool]]] = {}
        for scheme in schemes:
            c = scheme.collection
            if isinstance(c, Condition):
                for name, span, largest in c.expression.extremes:
                    extremes.setdefault(name, set()).add((span, largest))
        for name, s in slot.slots.items():
            if s.history is not None:
                s.history.retain_extremes(extremes.get(name, set()))
        self._schemes = tuple(schemes)
        self._slots = slot.slots
        self._states = states
        self._refs = refs
        self._periodic = tuple(s for s in states.values() if isinstance(s, _PeriodicState))
        self._conditions = tuple(s for s in states.values() if isinstance(s, _ConditionState))
        self._open = [s for s in self._conditions if s.open_time is not None]
        self._routes = {}
        self._next_timer = -_INF  # recomputed (and new periodic schemes scheduled) next call

    def _route(self, bus: str, message: str) -> _Route:
        matching = {name: ref for name, ref in self._refs.items() if ref.matches(bus, message)}
        if not matching:
            return _NO_ROUTE
        updates = tuple(
            (ref.signal, self._slots[name]) for name, ref in matching.items() if name in self._slots
        )
        on_change = []
        conditions = []
        for state in self._states.values():
            if isinstance(state, _OnChangeState):
                assert isinstance(state.scheme.collection, OnChange)
                entries = tuple(
                    (
                        matching[spec.name].signal,
                        i,
                        spec.deadband,
                        spec.min_sample_period_ms / 1000 - _EPS,
                        spec.name,
                    )
                    for i, spec in enumerate(state.scheme.collection.signals)
                    if spec.name in matching
                )
                if entries:
                    on_change.append((state, entries))
            elif isinstance(state, _ConditionState):
                assert isinstance(state.scheme.collection, Condition)
                read = sorted(
                    {
                        matching[n].signal
                        for n in state.scheme.collection.expression.signals
                        if n in matching
                    }
                )
                if read:
                    conditions.append((state, tuple(read)))
        return _Route(updates, tuple(on_change), tuple(conditions))

    # -- the hot path -------------------------------------------------------------------------

    def feed(
        self, t: float, bus: str, message: str, signals: Mapping[str, Value]
    ) -> list[CollectedRecord]:
        """Take one decoded frame (bus time *t*); return the records it completes."""
        out: list[CollectedRecord] = []
        if t < self._now:
            if self._now - t > CLOCK_STEP_S:
                out = self._restart_clock(t)
            else:
                t = self._now
        self._now = t
        if t >= self._next_timer:
            self._run_timers(t, out)

        by_message = self._routes.get(bus)
        if by_message is None:
            by_message = self._routes[bus] = {}
        route = by_message.get(message)
        if route is None:
            route = by_message[message] = self._route(bus, message)
        if route is _NO_ROUTE:
            return out

        get = signals.get
        for name, slot in route.updates:
            v = get(name)
            if v is None:  # a multiplexed frame without this signal
                continue
            slot.prev = slot.value
            slot.prev_t = slot.t
            slot.value = v
            slot.t = t
            history = slot.history
            if history is not None:
                history.add(t, v)

        for state, entries in route.on_change:
            if t < state.start or t >= state.expiry:
                continue
            last = state.last
            kept_t = state.kept_t
            samples: list[Sample] | None = None
            for name, i, deadband, period, label in entries:
                v = get(name)
                if v is None:
                    continue
                old = last[i]
                if old is not None:
                    if v.__class__ is str or old.__class__ is str:
                        if v == old:
                            continue
                    elif abs(v - old) <= deadband or (v != v and old != old):  # type: ignore[operator]  # noqa: PLR0124
                        continue
                if t - kept_t[i] < period:
                    continue
                last[i] = v
                kept_t[i] = t
                if samples is None:
                    samples = [Sample(label, t, v)]
                else:
                    samples.append(Sample(label, t, v))
            if samples is not None:
                out.append(CollectedRecord(state.id, state.priority, t, tuple(samples)))

        if route.conditions:
            self._clock.now = t
            for cond, names in route.conditions:
                for name in names:
                    if name in signals:
                        break
                else:
                    continue
                if t < cond.start or t >= cond.expiry:
                    continue
                result = cond.fn() is True
                if cond.rising:
                    fire = result and not cond.last_result
                    cond.last_result = result
                else:
                    fire = result
                if fire:
                    self._trigger(cond, t, out)
        return out

    def tick(self, t: float) -> list[CollectedRecord]:
        """Advance bus time to *t* without a frame; return periodic records and closed captures."""
        out: list[CollectedRecord] = []
        if t < self._now:
            if self._now - t <= CLOCK_STEP_S:
                return out
            out = self._restart_clock(t)
        self._now = t
        if t >= self._next_timer:
            self._run_timers(t, out)
        return out

    def flush(self) -> list[CollectedRecord]:
        """Close every open capture window now (at shutdown) and return the records."""
        return [self._close_capture(state) for state in list(self._open)]

    # -- triggers, timers, captures -----------------------------------------------------------

    def _trigger(self, cond: _ConditionState, t: float, out: list[CollectedRecord]) -> None:
        if cond.open_time is not None or t - cond.last_trigger < cond.min_interval:
            return
        cond.last_trigger = t
        # The latest value of every captured signal as of the trigger, for signals whose last
        # update is older than the pre window (or that keep no history at all).
        snapshot = tuple((slot.t, slot.value) for _, slot, _ in cond.capture)
        if cond.post <= 0.0:
            out.append(self._capture_record(cond, t, snapshot))
            return
        cond.open_time = t
        cond.snapshot = snapshot
        cond.deadline = t + cond.post
        self._open.append(cond)
        self._next_timer = min(self._next_timer, cond.deadline)

    def _run_timers(self, t: float, out: list[CollectedRecord]) -> None:
        upcoming = _INF
        for p in self._periodic:
            period = p.period_ms
            if p.k_next is None or t >= p.k_next * period / 1000:
                k = math.floor(t * 1000 / period)
                if k * period / 1000 > t:  # float rounding put the boundary past t
                    k -= 1
                if p.k_next is not None:
                    k = max(k, p.k_next)
                    boundary = k * period / 1000
                    if p.start <= boundary < p.expiry:
                        record = _periodic_record(p, boundary)
                        if record is not None:
                            out.append(record)
                p.k_next = k + 1
            upcoming = min(upcoming, p.k_next * period / 1000)
        for cond in list(self._open):
            if t > cond.deadline:
                out.append(self._close_capture(cond))
            else:
                upcoming = min(upcoming, cond.deadline)
        self._next_timer = upcoming

    def _close_capture(self, cond: _ConditionState) -> CollectedRecord:
        assert cond.open_time is not None
        record = self._capture_record(cond, cond.open_time, cond.snapshot)
        cond.open_time = None
        cond.snapshot = ()
        cond.deadline = _INF
        self._open.remove(cond)
        return record

    @staticmethod
    def _capture_record(
        cond: _ConditionState, trigger: float, snapshot: tuple[tuple[float, Value | None], ...]
    ) -> CollectedRecord:
        lo, hi = trigger - cond.pre, trigger + cond.post
        samples: list[Sample] = []
        for (label, slot, period), (snap_t, snap_value) in zip(cond.capture, snapshot, strict=True):
            history = slot.history
            if history is not None:
                times, values = history.between(lo, hi)
            else:
                times, values = [], []
            if snap_value is not None and (not times or times[0] > trigger):
                times.insert(0, snap_t)
                values.insert(0, snap_value)
            kept = -_INF
            for ts, value in zip(times, values, strict=True):
                if ts - kept >= period:
                    samples.append(Sample(label, ts, value))
                    kept = ts
        return CollectedRecord(cond.id, cond.priority, trigger, tuple(samples))

    def _restart_clock(self, t: float) -> list[CollectedRecord]:
        out = self.flush()
        for slot in self._slots.values():
            if slot.history is not None:
                slot.history.clear()
        for state in self._states.values():
            state.restart()
        self._now = t
        self._next_timer = -_INF
        return out


def _periodic_record(p: _PeriodicState, boundary: float) -> CollectedRecord | None:
    samples = []
    last = p.last_included
    for i, (label, slot, period) in enumerate(p.entries):
        v = slot.value
        if v is None or boundary - last[i] < period:
            continue
        last[i] = boundary
        samples.append(Sample(label, slot.t, v))
    if not samples:
        return None
    return CollectedRecord(p.id, p.priority, boundary, tuple(samples))


def _check_unique(schemes: Iterable[Scheme]) -> None:
    seen: set[str] = set()
    for scheme in schemes:
        if scheme.id in seen:
            raise SchemeError("scheme set", "id", f"{scheme.id!r} is used by two schemes")
        seen.add(scheme.id)
