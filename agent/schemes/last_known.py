"""Last-known state: the latest value of chosen signals, for the retained ``state`` topic.

:class:`LastKnownState` follows a set of signals (named as in schemes, see
:mod:`agent.schemes.model`) and says which values to publish: a value is published when it
differs from the one last published for that signal, and each signal is published at most once
per ``min_interval_ms`` of bus time. A change that comes too soon is held back, not lost: the
newest value goes out as soon as the interval has passed — at the signal's next frame, or at
:meth:`~LastKnownState.poll`, which the agent calls now and then (:meth:`~LastKnownState.next_due`
says when). So a retained topic always ends up showing the latest value, while a signal that
flickers costs at most one publication per interval.

Pure like the evaluator: bus time only, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

from agent.schemes.history import Value
from agent.schemes.model import Sample, SignalRef

__all__ = ["LastKnownState"]

_EPS: Final = 1e-9
# Same rule as the evaluator: a frame more than this far back in time starts a new clock.
_CLOCK_STEP_S: Final = 1.0


class _Entry:
    __slots__ = ("name", "published", "published_t", "t", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value: Value | None = None
        self.t = 0.0
        self.published: Value | None = None
        self.published_t = -math.inf


def _same(a: Value | None, b: Value | None) -> bool:
    # NaN never equals itself; two NaNs in a row are no change.
    return a == b or (a != a and b != b)  # noqa: PLR0124


class LastKnownState:
    """Latest values of *signals*, published on change, at most once per interval per signal."""

    def __init__(self, signals: Iterable[str], *, min_interval_ms: int = 1000) -> None:
        if min_interval_ms < 0:
            raise ValueError("min_interval_ms must be ≥ 0")
        names = sorted(set(signals))
        self._refs = {name: SignalRef.parse(name) for name in names}
        self._entries = {name: _Entry(name) for name in names}
        self._interval = min_interval_ms / 1000 - _EPS
        self._routes: dict[tuple[str, str], tuple[tuple[str, _Entry], ...]] = {}
        # Signals with a change held back by the rate limit, in the order they changed.
        self._pending: dict[str, _Entry] = {}
        self._now = -math.inf

    def signals_used(self) -> frozenset[str]:
        """The signal names followed."""
        return frozenset(self._entries)

    def feed(self, t: float, bus: str, message: str, signals: Mapping[str, Value]) -> list[Sample]:
        """Take one decoded frame; return the values to publish now."""
        self._advance(t)
        key = (bus, message)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = tuple(
                (ref.signal, self._entries[name])
                for name, ref in self._refs.items()
                if ref.matches(bus, message)
            )
        out: list[Sample] = []
        for signal, entry in route:
            v = signals.get(signal)
            if v is None:
                continue
            entry.value = v
            entry.t = t
            if entry.published is not None and _same(v, entry.published):
                self._pending.pop(entry.name, None)  # back to what was published: nothing to say
            elif t - entry.published_t >= self._interval:
                self._pending.pop(entry.name, None)
                out.append(self._publish(entry, t))
            else:
                self._pending[entry.name] = entry
        return out

    def poll(self, t: float) -> list[Sample]:
        """Values held back by the rate limit whose interval has passed by bus time *t*."""
        self._advance(t)
        out = []
        for entry in list(self._pending.values()):
            if t - entry.published_t >= self._interval:
                del self._pending[entry.name]
                out.append(self._publish(entry, t))
        return out

    def next_due(self) -> float | None:
        """The earliest bus time at which :meth:`poll` has something to publish, if any."""
        if not self._pending:
            return None
        return min(e.published_t for e in self._pending.values()) + self._interval + _EPS

    def snapshot(self) -> dict[str, Sample]:
        """The latest value of every followed signal seen so far (for a full state message)."""
        return {
            e.name: Sample(e.name, e.t, e.value)
            for e in self._entries.values()
            if e.value is not None
        }

    def _publish(self, entry: _Entry, t: float) -> Sample:
        assert entry.value is not None
        entry.published = entry.value
        entry.published_t = t
        return Sample(entry.name, entry.t, entry.value)

    def _advance(self, t: float) -> None:
        if t < self._now - _CLOCK_STEP_S:
            # A new clock: publication times from the old one would hold values back for ever.
            for entry in self._entries.values():
                entry.published_t = -math.inf
        if t > self._now or t < self._now - _CLOCK_STEP_S:
            self._now = t
