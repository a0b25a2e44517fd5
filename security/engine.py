"""The IDS engine: frames in, per-frame verdicts and aggregated security events out.

:class:`IdsEngine` compiles a :class:`~security.rules.RuleSet` once (:mod:`security.compiler`)
and is then fed frames — python-can ``Message`` objects, in order — one :meth:`~IdsEngine.process`
call each. Per frame it:

1. finds the bus's plan (a dict lookup by channel) and, every ``scan_interval_s`` of the bus's
   clock (frame timestamps), scans for silent ids and closes aggregation windows;
2. finds the id's node (a dict lookup by CAN id) — no node on a bus with an allowlist means an
   unknown id — and runs its detectors: timing, DLC, payload, counters, checksums, SecOC,
   context requests; decodes the frame once if signal rules or conditions need it and runs the
   signal detectors;
3. runs the bus's flood detectors;
4. hands each finding to the :class:`~security.aggregate.EventAggregator` and the frame to the
   bus's :class:`~security.forensics.ForensicBuffer`.

It returns the ids of the rules that flagged the frame (an empty tuple, the same object every
time, for a clean frame). Events come out of :meth:`~IdsEngine.pop_events` once their
aggregation window has closed; :meth:`~IdsEngine.finish` flushes the rest at the end of a log.
On a live bus, :meth:`~IdsEngine.tick` advances every bus's clock when no frames arrive (a bus
that falls silent altogether).

**Replacing the rules of a running engine** (a signed rule update) takes two steps:
:meth:`~IdsEngine.prepare` compiles the new rule set — slow, touches no run-time state, so it may
run in a worker thread while the engine keeps judging frames — and
:meth:`~IdsEngine.replace_rules` swaps it in between two frames, returning the
:class:`RuleChanges`. What carries over:

* every detector of a rule that is unchanged (same id, equal definition: kind, bus, entries,
  severity, description, event and sensor ids) — the same object, so timing windows, counters,
  last good values, SecOC freshness, "silence already reported", and a plausibility pair's
  partner value and run of disagreements survive;
* what the engine knows about the buses themselves, whatever the rules: each bus's clock and
  forensic frames, when each id was last seen, the latest values (and histories) of the signals
  conditions read;
* events being aggregated and events not yet popped: the aggregator is the same.

Changed and added rules start fresh, as at start-up; a new suspension rule measures silence from
the swap, not from the bus's first frame. Removed rules are gone (their open events still close
and come out).

The engine never raises on what frames carry; it is not thread-safe (one engine per intake
thread or event loop).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MethodType
from typing import Any, Final

from agent.schemes.history import SignalSlot
from can_dbc.errors import DecodeError
from security.aggregate import AggregationPolicy, EventAggregator
from security.compiler import BusPlan, CompiledRules, IdNode, compile_rules
from security.detectors import AllowlistDetector, ContextDetector, Detector, SuspensionDetector
from security.events import SecurityEvent
from security.forensics import ForensicBuffer
from security.rules import RuleSet

__all__ = [
    "EngineConfig",
    "EngineStats",
    "IdsEngine",
    "PreparedRules",
    "RuleChanges",
    "diff_rules",
]

_NO_RULES: Final[tuple[str, ...]] = ()


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Settings of one engine.

    ``idsm_instance_id`` (10 bits) labels its events; ``aggregation`` sets the windows and rate
    limits (:class:`~security.aggregate.AggregationPolicy`); ``forensic_before`` and
    ``forensic_after`` are how many frames of the bus each event keeps from before and after
    its first occurrence; ``scan_interval_s`` is how often (in bus time) silent ids are looked
    for and windows closed.
    """

    idsm_instance_id: int = 1
    aggregation: AggregationPolicy = field(default_factory=AggregationPolicy)
    forensic_before: int = 16
    forensic_after: int = 16
    scan_interval_s: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.idsm_instance_id <= 0x3FF:
            raise ValueError("idsm_instance_id is a 10-bit number")
        if self.forensic_before < 0 or self.forensic_after < 0:
            raise ValueError("forensic windows must be ≥ 0 frames")
        if not (math.isfinite(self.scan_interval_s) and self.scan_interval_s > 0):
            raise ValueError("scan_interval_s must be a positive number")


@dataclass(slots=True)
class EngineStats:
    """Counters of one engine: frames judged, frames flagged, findings per rule, events built."""

    frames: int = 0
    flagged_frames: int = 0
    findings: Counter[str] = field(default_factory=Counter)
    events: int = 0


@dataclass(frozen=True, slots=True)
class RuleChanges:
    """How a rule set differs from the one it replaces, as rule ids in file order.

    ``kept``: unchanged rules, whose detector state carried over; ``changed`` (same id, another
    definition) and ``added`` rules start fresh; ``removed`` rules are gone.
    """

    kept: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """How many rules the new set has."""
        return len(self.kept) + len(self.changed) + len(self.added)

    def summary(self) -> str:
        """``"42 rules (3 changed, 1 added, 0 removed; timing state kept for 38)"``."""
        return (
            f"{self.total} rules ({len(self.changed)} changed, {len(self.added)} added, "
            f"{len(self.removed)} removed; timing state kept for {len(self.kept)})"
        )


def diff_rules(old: RuleSet, new: RuleSet) -> RuleChanges:
    """Compare two rule sets rule by rule (by id; where a rule sits in its file does not count)."""
    before = {rule.id: rule for rule in old}
    kept: list[str] = []
    changed: list[str] = []
    added: list[str] = []
    for rule in new:
        previous = before.get(rule.id)
        if previous is None:
            added.append(rule.id)
        elif previous == rule:
            kept.append(rule.id)
        else:
            changed.append(rule.id)
    now = {rule.id for rule in new}
    removed = tuple(rule.id for rule in old if rule.id not in now)
    return RuleChanges(tuple(kept), tuple(changed), tuple(added), removed)


class PreparedRules:
    """A rule set compiled for one engine by :meth:`IdsEngine.prepare`, to be swapped in once
    with :meth:`IdsEngine.replace_rules`."""

    __slots__ = ("_compiled", "_owner", "rules")

    def __init__(self, rules: RuleSet, compiled: CompiledRules, owner: IdsEngine) -> None:
        self.rules = rules
        self._compiled: CompiledRules | None = compiled
        self._owner = owner

    def _take(self, engine: IdsEngine) -> CompiledRules:
        if self._owner is not engine:
            raise ValueError("these rules were prepared for another engine")
        compiled = self._compiled
        if compiled is None:
            # Its plans became the engine's live state: swapping them in again would reset it.
            raise ValueError("these prepared rules were already swapped in")
        self._compiled = None
        return compiled


class IdsEngine:
    """Runs a rule set over frames (see the module docstring).

    *databases* maps a bus name to the cantools databases of that bus (signal, counter and
    checksum rules need them); *keys* maps SecOC key ids to AES keys. Raises
    :class:`~security.errors.RuleBindingError` when a rule needs something they lack.
    """

    def __init__(
        self,
        rules: RuleSet,
        *,
        databases: Mapping[str, Sequence[Any]] | None = None,
        keys: Mapping[str, bytes] | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        self.rules = rules
        self.config = config if config is not None else EngineConfig()
        self._databases = databases
        self._keys = keys
        compiled = self._compile(rules)
        self._buses: dict[Any, BusPlan] = dict(compiled.buses)
        # Suspension detectors installed by a rule update while their bus was running: silence
        # counts from this time (None: from the next scan of the bus), not from the bus's start.
        self._silent_since: dict[SuspensionDetector, float | None] = {}
        self._aggregator = EventAggregator(self.config.aggregation, self.config.idsm_instance_id)
        self._scan_interval = self.config.scan_interval_s
        self.stats = EngineStats()

    def _compile(self, rules: RuleSet) -> CompiledRules:
        return compile_rules(
            rules,
            self._databases,
            self._keys,
            forensic_before=self.config.forensic_before,
            forensic_after=self.config.forensic_after,
        )

    # -- replacing the rules --------------------------------------------------------------------

    def prepare(self, rules: RuleSet) -> PreparedRules:
        """Compile *rules* against this engine's DBC files and keys, for :meth:`replace_rules`.

        Reads nothing that frames change, so it may run in another thread while the engine
        judges frames. Raises :class:`~security.errors.RuleBindingError` as the constructor does.
        """
        return PreparedRules(rules, self._compile(rules), self)

    def replace_rules(self, prepared: PreparedRules) -> RuleChanges:
        """Judge the next frames with *prepared*'s rules, keeping the state that still applies
        (see the module docstring); returns how the rule sets differ. Call it where frames are
        processed (it is quick: no compiling)."""
        compiled = prepared._take(self)
        changes = diff_rules(self.rules, prepared.rules)
        kept = frozenset(changes.kept)
        old_plans = {plan.name: plan for plan in self._buses.values()}
        plans: dict[Any, BusPlan] = dict(compiled.buses)
        reuse: dict[Detector, Detector] = {}
        fresh_silences: list[SuspensionDetector] = []
        for name, plan in plans.items():
            old = old_plans.get(name)
            if old is None:
                continue  # a bus the engine has not seen: it starts as at start-up
            plan.started = old.started
            plan.next_scan = old.next_scan
            plan.forensics = old.forensics  # with the captures waiting for frames after events
            for can_id, node in plan.nodes.items():
                old_node = old.nodes.get(can_id)
                if old_node is not None:
                    node.last_seen = old_node.last_seen
            previous = _placed(old, kept)
            for place, detector in _placed(plan, kept).items():
                match = previous.get(place)
                if match is not None:
                    reuse[detector] = match
            if plan.started is not None:
                fresh_silences += [d for d, _ in plan.suspensions if d not in reuse]
        for name, old in old_plans.items():
            if name not in plans:
                # No rule watches this bus any more; its clock and forensic frames go on.
                bare = BusPlan(name, old.forensics)
                bare.started = old.started
                bare.next_scan = old.next_scan
                plans[name] = bare
        for plan in plans.values():
            _rebind(plan, reuse)
        _carry_slots(old_plans.values(), plans.values())
        since: dict[SuspensionDetector, float | None] = dict.fromkeys(fresh_silences)
        for carried in reuse.values():
            if isinstance(carried, SuspensionDetector) and carried in self._silent_since:
                since[carried] = self._silent_since[carried]
        self._silent_since = since
        self._buses = plans
        self.rules = prepared.rules
        return changes

    # -- the per-frame path ---------------------------------------------------------------------

    def process(self, frame: Any) -> tuple[str, ...]:
        """Judge one frame; the ids of the rules that flagged it (empty if none did)."""
        self.stats.frames += 1
        channel = frame.channel
        try:
            bus = self._buses[channel]
        except (KeyError, TypeError):
            bus = self._bus(channel)
        t = frame.timestamp
        if t >= bus.next_scan:
            self._scan(bus, t)
        hits: list[tuple[Detector, object]] | None = None
        node = bus.nodes.get(frame.arbitration_id)
        if node is None:
            if bus.has_allowlist and not frame.is_error_frame:
                for detector, check in bus.unknown_checks:
                    detail = check(frame, t)
                    if detail is not None:
                        if hits is None:
                            hits = []
                        hits.append((detector, detail))
        elif not (frame.is_remote_frame or frame.is_error_frame):
            node.last_seen = t
            for detector, check in node.checks:
                detail = check(frame, t)
                if detail is not None:
                    if hits is None:
                        hits = []
                    hits.append((detector, detail))
            decoder = node.decoder
            signals = None
            if decoder is not None:
                try:
                    decoded = decoder.decode(node.can_id, frame.data)
                except DecodeError:
                    decoded = None  # too short for its message: the DLC rule's business
                if decoded is not None:
                    signals = decoded.signals
                    for name, slot in node.slots:
                        value = signals.get(name)
                        if value is not None:
                            _update_slot(slot, t, value)
                    for name, detector, check_value in node.signal_checks:
                        value = signals.get(name)
                        if value is None or isinstance(value, str):
                            continue
                        detail = check_value(value, t)
                        if detail is not None:
                            if hits is None:
                                hits = []
                            hits.append((detector, detail))
            if hits is not None and (node.sequences or node.value_sequences):
                node.forget_flagged(hits, signals)  # a forged frame is no reference
        else:
            node.last_seen = t  # a remote request still shows the id is alive
        for detector, check in bus.bus_checks:
            detail = check(frame, t)
            if detail is not None:
                if hits is None:
                    hits = []
                hits.append((detector, detail))
        if hits is None:
            bus.forensics.add(frame, False)
            return _NO_RULES
        return self._flagged(bus, frame, t, hits)

    def _flagged(
        self, bus: BusPlan, frame: Any, t: float, hits: list[tuple[Detector, object]]
    ) -> tuple[str, ...]:
        stats = self.stats
        stats.flagged_frames += 1
        record = self._aggregator.record
        forensics = bus.forensics
        for detector, detail in hits:
            can_id = detector.can_id
            if isinstance(detector, AllowlistDetector):
                can_id = frame.arbitration_id
            record(detector, bus.name, can_id, t, frame, detail, forensics)
        forensics.add(frame, True)
        ids = [detector.rule.id for detector, _ in hits]
        stats.findings.update(ids)
        return tuple(dict.fromkeys(ids)) if len(ids) > 1 else (ids[0],)

    # -- time ---------------------------------------------------------------------------------

    def _scan(self, bus: BusPlan, now: float) -> None:
        """Look for silent ids and close the windows that ended, at bus time *now*."""
        if not math.isfinite(now):
            return  # a broken timestamp says nothing about time passing
        bus.next_scan = now + self._scan_interval
        if bus.started is None:
            bus.started = now
        started = bus.started
        since = self._silent_since
        for detector, node in bus.suspensions:
            last = node.last_seen
            start = started
            if since and detector in since:
                installed = since[detector]
                if installed is None:
                    installed = since[detector] = now
                start = installed
            detail = detector.silent(now, last if last > start else start)
            if detail is not None:
                self.stats.findings[detector.rule.id] += 1
                self._aggregator.record(
                    detector, bus.name, detector.can_id, now, None, detail, bus.forensics
                )
        self._aggregator.close_due(bus.name, now)

    def tick(self, now: float) -> None:
        """Advance every bus that has seen frames to time *now* (same clock as the frames)."""
        for bus in self._buses.values():
            if bus.started is not None and now >= bus.next_scan:
                self._scan(bus, now)

    def pop_events(self) -> list[SecurityEvent]:
        """The events whose aggregation windows have closed since the last call."""
        events = self._aggregator.pop_ready()
        self.stats.events += len(events)
        return events

    def finish(self) -> list[SecurityEvent]:
        """Close every window and return every remaining event (the end of the input)."""
        self._aggregator.flush()
        return self.pop_events()

    # -- buses --------------------------------------------------------------------------------

    def _bus(self, channel: Any) -> BusPlan:
        """The plan of a bus no rule names: nothing to check, but time and forensics go on."""
        name = "" if channel is None else str(channel)
        for plan in self._buses.values():
            if plan.name == name:
                break
        else:
            plan = BusPlan(
                name,
                ForensicBuffer(self.config.forensic_before, self.config.forensic_after),
            )
        # An unhashable channel cannot be a key: its plan is found by name each time.
        with contextlib.suppress(TypeError):
            self._buses[channel] = plan
        return plan


# -- carrying state over a rule update ---------------------------------------------------------

_Place = tuple[str, int | None, str | None, str, str, int]


def _placed(plan: BusPlan, rules: AbstractSet[str]) -> dict[_Place, Detector]:
    """The detectors of *rules* in *plan*, each under a key naming where it sits (its list, CAN
    id, signal), its rule, its class and its rank among equals: compiling an unchanged rule twice
    puts its detectors under the same keys, whatever the other rules are."""
    found: dict[_Place, Detector] = {}
    ranks: Counter[tuple[str, int | None, str | None, str, str]] = Counter()
    seen: set[Detector] = set()

    def put(where: str, signal: str | None, detector: Detector) -> None:
        # A context detector's state is its condition's signal slots, which are carried over by
        # name (_carry_slots); it is bound to its own compilation's slots, so it cannot move.
        if (
            detector.rule.id not in rules
            or detector in seen
            or isinstance(detector, ContextDetector)
        ):
            return
        seen.add(detector)
        base = (where, detector.can_id, signal, detector.rule.id, type(detector).__name__)
        found[(*base, ranks[base])] = detector
        ranks[base] += 1

    # Unknown-id checks first: the allowlist detector also sits in the checks of ids that rules
    # name but the allowlist lacks, and must be found under one key.
    for detector, _ in plan.unknown_checks:
        put("unknown", None, detector)
    for detector, _ in plan.bus_checks:
        put("bus", None, detector)
    for can_id in sorted(plan.nodes):
        node = plan.nodes[can_id]
        for detector, _ in node.checks:
            put("frame", None, detector)
        for name, detector, _ in node.signal_checks:
            put("signal", name, detector)
    for detector, _ in plan.suspensions:
        put("silence", None, detector)
    return found


def _rebind(plan: BusPlan, reuse: Mapping[Detector, Detector]) -> None:
    """Put the carried-over detectors where their new twins are.

    Every tuple the plan and its nodes hold is rewritten — checks with their bound methods,
    suspensions, and any list of detectors the compiler may add — so nothing keeps judging
    with a twin that was dropped.
    """
    if not reuse:
        return
    holders: list[BusPlan | IdNode] = [plan, *plan.nodes.values()]
    for holder in holders:
        for name in type(holder).__slots__:
            value = getattr(holder, name)
            if isinstance(value, tuple):
                setattr(holder, name, _twins(value, reuse))


def _twins(value: Any, reuse: Mapping[Detector, Detector]) -> Any:
    if isinstance(value, Detector):
        return reuse.get(value, value)
    if isinstance(value, MethodType):
        owner = value.__self__
        if isinstance(owner, Detector) and owner in reuse:
            return getattr(reuse[owner], value.__name__)
        return value
    if isinstance(value, tuple):
        return tuple(_twins(item, reuse) for item in value)
    return value


def _carry_slots(old_plans: Iterable[BusPlan], new_plans: Iterable[BusPlan]) -> None:
    """Give the new condition slots the values and histories of the old ones of the same name."""
    old_slots = {
        slot.name: slot
        for plan in old_plans
        for node in plan.nodes.values()
        for _, slot in node.slots
    }
    if not old_slots:
        return
    done: set[int] = set()
    for plan in new_plans:
        for node in plan.nodes.values():
            for _, slot in node.slots:
                old = old_slots.get(slot.name)
                if old is not None and id(slot) not in done:
                    done.add(id(slot))
                    _copy_slot(old, slot)


def _copy_slot(old: SignalSlot, new: SignalSlot) -> None:
    new.value, new.t, new.prev, new.prev_t = old.value, old.t, old.prev, old.prev_t
    before, after = old.history, new.history
    if before is not None and after is not None:
        # Re-added rather than shared: the new history may keep a longer or shorter span.
        times, values = before.times, before.values
        for i in range(before.head, len(values)):
            after.add(times[i], values[i])


def _update_slot(slot: Any, t: float, value: Any) -> None:
    """Record a decoded value for conditions; a clock that went back restarts the history."""
    history = slot.history
    if history is not None:
        if not t >= slot.t:
            history.clear()
        history.add(t, value)
    slot.prev = slot.value
    slot.prev_t = slot.t
    slot.value = value
    slot.t = t
