"""Aggregation and rate limits: findings become a bounded number of security events with counts.

A *finding* is one detector flagging one frame (or one silence). Findings with the same *key* —
rule, bus and CAN id — within an aggregation window make one event: its ``count``, the times of
the first and last occurrence, the explanation and forensic frames of the first.

* **Windows.** A key's window starts at its first finding and lasts ``window_s`` (1 s). When a
  finding of the same key arrives within one window length after the previous window ended (the
  attack goes on), the next window is twice as long, up to ``max_window_s`` (60 s); after a
  quiet window the length starts over. A flood of a million frames over 250 s thus makes about
  ten events per key instead of 250, and a short burst is reported within a second.
* **Ids per rule.** A rule that flags frame ids (an allowlist under fuzzing: random ids) gets at
  most ``max_ids_per_rule`` (8) windows with their own id open at once, per bus; findings for
  further ids join one overflow event of the rule without an id, which counts them and the
  distinct ids (up to :data:`MAX_OVERFLOW_IDS`).

Events are built when their window closes: when a later finding of the key arrives, or when the
engine's periodic scan of the bus clock passes the window's end. The forensic frames after the
first occurrence are waited for up to ``forensic_wait_s`` after it; then the event goes out with
what was captured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from security.detectors import Detector
from security.events import SecurityEvent, context_data, time_us
from security.forensics import ForensicBuffer, ForensicCapture

__all__ = ["MAX_OVERFLOW_IDS", "AggregationPolicy", "EventAggregator"]

#: Distinct ids an overflow event counts exactly; beyond, it says "at least".
MAX_OVERFLOW_IDS: Final = 4096

_Key = tuple[str, str, int | None]


@dataclass(frozen=True, slots=True)
class AggregationPolicy:
    """The aggregation and rate-limit settings (see the module docstring)."""

    window_s: float = 1.0
    max_window_s: float = 60.0
    max_ids_per_rule: int = 8
    forensic_wait_s: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError("window_s must be a positive number")
        if not (math.isfinite(self.max_window_s) and self.max_window_s >= self.window_s):
            raise ValueError("max_window_s must be at least window_s")
        if self.max_ids_per_rule < 0:
            raise ValueError("max_ids_per_rule must be ≥ 0")
        if not (math.isfinite(self.forensic_wait_s) and self.forensic_wait_s >= 0):
            raise ValueError("forensic_wait_s must be ≥ 0")


class _Aggregate:
    """One event being aggregated."""

    __slots__ = (
        "capture",
        "channel",
        "closes_at",
        "context",
        "count",
        "detector",
        "first_t",
        "key",
        "last_t",
        "observed",
        "other_ids",
        "window",
    )

    def __init__(
        self,
        key: _Key,
        detector: Detector,
        channel: str,
        t: float,
        window: float,
        observed: str,
        context: bytes,
        capture: ForensicCapture | None,
        other_ids: set[int] | None,
    ) -> None:
        self.key = key
        self.detector = detector
        self.channel = channel
        self.first_t = t
        self.last_t = t
        self.count = 1
        self.window = window
        self.closes_at = t + window
        self.observed = observed
        self.context = context
        self.capture = capture
        self.other_ids = other_ids


class EventAggregator:
    """Turns findings into :class:`SecurityEvent` objects (see the module docstring)."""

    def __init__(self, policy: AggregationPolicy, idsm_instance_id: int) -> None:
        self.policy = policy
        self.idsm_instance_id = idsm_instance_id
        self._open: dict[_Key, _Aggregate] = {}
        # Windows with their own id open per (rule, bus), for max_ids_per_rule.
        self._ids_open: dict[tuple[str, str], int] = {}
        # Per key, the end and length of its last window, while they matter for the next one.
        self._history: dict[_Key, tuple[float, float]] = {}
        self._closing: list[_Aggregate] = []  # closed, waiting for forensic frames
        self._ready: list[SecurityEvent] = []
        #: Findings recorded and events built so far.
        self.findings = 0
        self.events = 0

    def record(
        self,
        detector: Detector,
        channel: str,
        can_id: int | None,
        t: float,
        frame: Any,
        detail: object,
        forensics: ForensicBuffer | None,
    ) -> None:
        """One finding of *detector* at time *t* (*frame* is None for a silence)."""
        self.findings += 1
        rule_id = detector.rule.id
        key: _Key = (rule_id, channel, can_id)
        open_ = self._open
        agg = open_.get(key)
        if agg is not None:
            if not t >= agg.closes_at:  # also for a NaN time: never a new window for it
                agg.count += 1
                agg.last_t = max(agg.last_t, t)
                return
            self._close(agg, t)
        other_ids: set[int] | None = None
        if can_id is not None:
            per_rule = (rule_id, channel)
            n = self._ids_open.get(per_rule, 0)
            if n >= self.policy.max_ids_per_rule:
                key = (rule_id, channel, None)
                agg = open_.get(key)
                if agg is not None and not t >= agg.closes_at:
                    agg.count += 1
                    agg.last_t = max(agg.last_t, t)
                    if agg.other_ids is not None and len(agg.other_ids) < MAX_OVERFLOW_IDS:
                        agg.other_ids.add(can_id)
                    return
                if agg is not None:
                    self._close(agg, t)
                other_ids = {can_id}
            else:
                self._ids_open[per_rule] = n + 1
        window = self.policy.window_s
        previous = self._history.get(key)
        if previous is not None and t < previous[0] + previous[1]:
            window = min(previous[1] * 2, self.policy.max_window_s)
        if frame is not None:
            context = context_data(
                frame.arbitration_id, frame.data, extended=bool(frame.is_extended_id)
            )
        else:
            context = context_data(None, None)
        open_[key] = _Aggregate(
            key,
            detector,
            channel,
            t,
            window,
            detector.observed(detail),
            context,
            forensics.capture() if forensics is not None else None,
            other_ids,
        )

    def close_due(self, channel: str, now: float) -> None:
        """Close the windows of *channel* that ended by *now*; emit events that are ready."""
        for agg in [a for a in self._open.values() if a.channel == channel]:
            if now >= agg.closes_at:
                self._close(agg, now)
        if self._closing:
            waiting = []
            for agg in self._closing:
                if (
                    agg.channel == channel and not self._emit_if_ready(agg, now)
                ) or agg.channel != channel:
                    waiting.append(agg)
            self._closing = waiting
        if self._history:
            for key, (end, length) in list(self._history.items()):
                if key[1] == channel and not now < end + length:
                    del self._history[key]

    def flush(self) -> None:
        """Close every window and emit every event now (the end of a log, a shutdown)."""
        for agg in list(self._open.values()):
            self._close(agg, math.inf)
        for agg in self._closing:
            self._ready.append(self._event(agg))
        self._closing = []

    def pop_ready(self) -> list[SecurityEvent]:
        """The events built since the last call, oldest window first."""
        ready, self._ready = self._ready, []
        return ready

    # -- internals --------------------------------------------------------------------------

    def _close(self, agg: _Aggregate, now: float) -> None:
        del self._open[agg.key]
        rule_id, channel, can_id = agg.key
        if can_id is not None:
            per_rule = (rule_id, channel)
            n = self._ids_open.get(per_rule, 1) - 1
            if n > 0:
                self._ids_open[per_rule] = n
            else:
                self._ids_open.pop(per_rule, None)
        self._history[agg.key] = (agg.closes_at, agg.window)
        if not self._emit_if_ready(agg, now):
            self._closing.append(agg)

    def _emit_if_ready(self, agg: _Aggregate, now: float) -> bool:
        capture = agg.capture
        if (
            capture is None
            or capture.complete
            or not now < agg.first_t + self.policy.forensic_wait_s
        ):
            self._ready.append(self._event(agg))
            return True
        return False

    def _event(self, agg: _Aggregate) -> SecurityEvent:
        self.events += 1
        detector = agg.detector
        rule = detector.rule
        first_us = time_us(agg.first_t)
        observed = agg.observed
        can_id = agg.key[2]
        if agg.other_ids is not None:
            n = len(agg.other_ids)
            more = f"at least {n}" if n >= MAX_OVERFLOW_IDS else str(n)
            observed = (
                f"{agg.count} findings on {more} more CAN ids (more than "
                f"{self.policy.max_ids_per_rule} at once); first: {observed}"
            )
        return SecurityEvent(
            event_definition_id=rule.event_id,
            idsm_instance_id=self.idsm_instance_id,
            sensor_instance_id=rule.sensor_id,
            count=agg.count,
            time_us=first_us,
            context_data=agg.context,
            rule_id=rule.id,
            severity=rule.severity,
            channel=agg.channel,
            can_id=can_id,
            observed=observed,
            expected=detector.expected,
            description=rule.description,
            last_time_us=time_us(agg.last_t),
            frames=agg.capture.frames(first_us) if agg.capture is not None else (),
        )
