"""Per-signal state shared by the evaluator and compiled conditions.

A :class:`SignalSlot` holds one signal name's latest and previous value. Signals that a window
function (``avg(X, "2s")``) or a capture window (``pre_ms``/``post_ms``) needs also get a
:class:`History`: the samples of the last ``keep`` seconds in two parallel arrays, oldest first.

**Memory bound.** A history keeps the samples of the last ``keep`` seconds, where ``keep`` is the
longest span any scheme needs for that signal (a window function's span, or a capture's
``pre_ms + post_ms``; each at most 60 s), and never more than :data:`MAX_HISTORY_SAMPLES`
samples: a signal faster than that many per ``keep`` has its history shortened to its newest
samples. A sample costs about 40 bytes (an 8-byte time in an ``array('d')``, a list slot and the
value), so a history stays under ~160 KiB; signals nobody windows or captures keep no history.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from typing import Final

__all__ = ["MAX_HISTORY_SAMPLES", "Clock", "History", "SignalSlot", "Value", "WindowExtreme"]

#: A decoded signal value: a scaled number, or a value table's name.
Value = float | int | str

#: The most samples one signal's history keeps, whatever its rate.
MAX_HISTORY_SAMPLES: Final = 4096

# Compacting the arrays costs a memmove of what is left; doing it only once the dead prefix is
# large and at least half of the arrays keeps the cost per sample constant.
_COMPACT_MIN: Final = 256


class History:
    """Samples of one signal from the last ``keep`` seconds, at most ``cap`` of them.

    Times must not decrease (the evaluator keeps its clock monotonic). ``times[head:]`` and
    ``values[head:]`` are the live samples; older ones are dropped lazily as new ones arrive.
    """

    __slots__ = ("base", "cap", "extremes", "has_strings", "head", "keep", "times", "values")

    def __init__(self, keep: float, cap: int = MAX_HISTORY_SAMPLES) -> None:
        self.keep = keep
        self.cap = cap
        self.times: array[float] = array("d")
        self.values: list[Value] = []
        self.head = 0
        # Samples compacted away so far: values[i] is the (base + i)-th sample ever added.
        self.base = 0
        self.extremes: list[WindowExtreme] = []
        # Window functions skip value-table names; remembering whether any were seen lets the
        # common, all-numeric case use min()/max()/sum() on a slice directly.
        self.has_strings = False

    def __len__(self) -> int:
        return len(self.values) - self.head

    def add(self, t: float, value: Value) -> None:
        """Append a sample taken at *t* (not before the newest one) and drop expired ones."""
        times = self.times
        times.append(t)
        self.values.append(value)
        if isinstance(value, str):
            self.has_strings = True
        elif self.extremes:
            index = self.base + len(times) - 1
            for extreme in self.extremes:
                extreme.push(index, t, value)
        head = self.head
        cutoff = t - self.keep
        if times[head] < cutoff:
            head = bisect_left(times, cutoff, head)
        n = len(times)
        if n - head > self.cap:
            head = n - self.cap
        if head >= _COMPACT_MIN and 2 * head >= n:
            del times[:head]
            del self.values[:head]
            self.base += head
            head = 0
        self.head = head

    def extreme(self, span: float, *, largest: bool) -> WindowExtreme:
        """A running ``max`` (*largest*) or ``min`` over the last *span* seconds of this history.

        It starts from the samples already kept and follows every later :meth:`add`; window
        functions with the same span and kind share one.
        """
        for extreme in self.extremes:
            if extreme.span == span and extreme.largest is largest:
                return extreme
        extreme = WindowExtreme(self, span, largest=largest)
        times, values = self.times, self.values
        for i in range(self.head, len(values)):
            v = values[i]
            if not isinstance(v, str):
                extreme.push(self.base + i, times[i], v)
        self.extremes.append(extreme)
        return extreme

    def since(self, lo: float) -> list[Value]:
        """Values of the samples taken at or after *lo*, oldest first."""
        return self.values[bisect_left(self.times, lo, self.head) :]

    def between(self, lo: float, hi: float) -> tuple[list[float], list[Value]]:
        """Times and values of the samples taken in [*lo*, *hi*], oldest first."""
        times = self.times
        i = bisect_left(times, lo, self.head)
        j = bisect_right(times, hi, i)
        return times[i:j].tolist(), self.values[i:j]

    def retain_extremes(self, wanted: set[tuple[float, bool]]) -> None:
        """Stop feeding the running extremes whose ``(span, largest)`` is not in *wanted*."""
        self.extremes = [e for e in self.extremes if (e.span, e.largest) in wanted]

    def clear(self) -> None:
        """Forget every sample (the clock went backwards: old times mean nothing any more)."""
        self.base += len(self.values)
        self.times = array("d")
        self.values = []
        self.head = 0
        self.has_strings = False
        for extreme in self.extremes:
            extreme.samples.clear()


class WindowExtreme:
    """The largest or smallest numeric value of a :class:`History` within a trailing time span.

    A monotonic queue: it keeps only the samples that may still become the window's extreme (each
    newer than, and larger than (for max) every sample after it), so an update and a query cost
    O(1) amortised instead of a scan of the window. The answer equals ``max()``/``min()`` over the
    window's numeric samples; NaN samples are left out (a NaN has no order).
    """

    __slots__ = ("history", "largest", "samples", "span")

    def __init__(self, history: History, span: float, *, largest: bool) -> None:
        self.history = history
        self.span = span
        self.largest = largest
        # (sample index, time, value), oldest first, values strictly decreasing (max) or
        # increasing (min).
        self.samples: deque[tuple[int, float, float | int]] = deque()

    def push(self, index: int, t: float, value: float | int) -> None:
        """Take the *index*-th sample of the history, taken at *t*."""
        if value != value:  # noqa: PLR0124 - NaN
            return
        samples = self.samples
        if self.largest:
            while samples and samples[-1][2] <= value:
                samples.pop()
        else:
            while samples and samples[-1][2] >= value:
                samples.pop()
        samples.append((index, t, value))

    def value(self, now: float) -> float | int | None:
        """The extreme over the samples taken at or after ``now - span``; None if none."""
        samples = self.samples
        lo = now - self.span
        h = self.history
        # The history may have dropped samples by count (its cap) before they aged out.
        first = h.base + h.head
        while samples and (samples[0][1] < lo or samples[0][0] < first):
            samples.popleft()
        return samples[0][2] if samples else None


class SignalSlot:
    """One signal name as schemes spell it: latest and previous value, optional history.

    ``value`` and ``prev`` are ``None`` until the signal has been seen once and twice; ``t`` and
    ``prev_t`` are their times.
    """

    __slots__ = ("history", "name", "prev", "prev_t", "t", "value")

    def __init__(self, name: str, history: History | None = None) -> None:
        self.name = name
        self.value: Value | None = None
        self.t = 0.0
        self.prev: Value | None = None
        self.prev_t = 0.0
        self.history = history

    def update(self, t: float, value: Value) -> None:
        """Record a new value (the hot path inlines this; kept for clarity and for tests)."""
        self.prev = self.value
        self.prev_t = self.t
        self.value = value
        self.t = t
        if self.history is not None:
            self.history.add(t, value)

    def __repr__(self) -> str:
        return f"<SignalSlot {self.name}={self.value!r} prev={self.prev!r}>"


class Clock:
    """The evaluation time that window functions measure their spans back from."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
