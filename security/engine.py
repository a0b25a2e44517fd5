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

The engine never raises on what frames carry; it is not thread-safe (one engine per intake
thread or event loop).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from can_dbc.errors import DecodeError
from security.aggregate import AggregationPolicy, EventAggregator
from security.compiler import BusPlan, compile_rules
from security.detectors import AllowlistDetector, Detector
from security.events import SecurityEvent
from security.forensics import ForensicBuffer
from security.rules import RuleSet

__all__ = ["EngineConfig", "EngineStats", "IdsEngine"]

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
        compiled = compile_rules(
            rules,
            databases,
            keys,
            forensic_before=self.config.forensic_before,
            forensic_after=self.config.forensic_after,
        )
        self._buses: dict[Any, BusPlan] = dict(compiled.buses)
        self._aggregator = EventAggregator(self.config.aggregation, self.config.idsm_instance_id)
        self._scan_interval = self.config.scan_interval_s
        self.stats = EngineStats()

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
        for detector, node in bus.suspensions:
            last = node.last_seen
            detail = detector.silent(now, last if last > started else started)
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
