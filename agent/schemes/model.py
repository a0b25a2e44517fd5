"""Collection schemes as frozen dataclasses, and the records they produce.

A :class:`Scheme` says *what* to collect and *when*: periodically (:class:`Periodic`), when a value
changes (:class:`OnChange`), or when a condition becomes true (:class:`Condition`); with a
priority (0 most urgent … 9) and an optional [start, expiry) interval of bus time. The evaluator
(:mod:`agent.schemes.evaluator`) turns decoded frames into :class:`CollectedRecord` objects.

**Signal names and how they resolve.** A scheme names a signal in one of four spellings:

* ``SIGNAL`` — the signal of that name in *any* decoded message on any bus;
* ``MESSAGE.SIGNAL`` — the signal in that message, on any bus;
* ``bus:MESSAGE.SIGNAL`` — the signal in that message on that bus only (``can0:SPEED.SPEED``);
* ``bus:SIGNAL`` — the signal of that name in any message on that bus.

Each part is an identifier (``[A-Za-z_][A-Za-z0-9_]*``), as DBC names are. A decoded frame
(bus, message, signals) updates every spelling that matches it; the spellings are independent
(``SPEED`` and ``SPEED.SPEED`` are two names that happen to see the same samples). A bare name
that several messages carry (``CHECKSUM``) takes the value of whichever frame came last: prefer
``MESSAGE.SIGNAL``. Records name samples with the spelling the scheme used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from agent.schemes.expression import Expression
from agent.schemes.geofence import Geofence
from agent.schemes.history import Value

__all__ = [
    "MAX_CAPTURE_MS",
    "MAX_PERIOD_MS",
    "MIN_PERIOD_MS",
    "PRIORITIES",
    "CollectedRecord",
    "Condition",
    "OnChange",
    "Periodic",
    "Sample",
    "Scheme",
    "SignalRef",
    "SignalSpec",
    "Value",
]

#: Shortest and longest period of a periodic scheme (also the longest minimum interval).
MIN_PERIOD_MS: Final = 10
MAX_PERIOD_MS: Final = 86_400_000
#: Longest capture window before or after a trigger.
MAX_CAPTURE_MS: Final = 60_000
#: Valid priorities, most urgent first.
PRIORITIES: Final = range(10)

_NAME_RE: Final = re.compile(
    r"(?:(?P<bus>[A-Za-z_]\w*):)?(?:(?P<message>[A-Za-z_]\w*)\.)?(?P<signal>[A-Za-z_]\w*)",
    re.ASCII,
)


@dataclass(frozen=True, slots=True)
class SignalRef:
    """A parsed signal name: ``signal``, optionally qualified by ``message`` and ``bus``."""

    signal: str
    message: str | None = None
    bus: str | None = None

    @classmethod
    def parse(cls, name: str) -> SignalRef:
        """Parse ``[bus:][MESSAGE.]SIGNAL``; raises ValueError naming the accepted forms."""
        m = _NAME_RE.fullmatch(name) if isinstance(name, str) else None
        if m is None:
            raise ValueError(
                f"{name!r} is not a signal name (expected SIGNAL, MESSAGE.SIGNAL or "
                "bus:MESSAGE.SIGNAL, each part an identifier)"
            )
        return cls(m.group("signal"), m.group("message"), m.group("bus"))

    def matches(self, bus: str, message: str) -> bool:
        """True if frames of *message* on *bus* carry this signal (if they have it at all)."""
        return (self.bus is None or self.bus == bus) and (
            self.message is None or self.message == message
        )

    def decoder_name(self) -> str:
        """The spelling :class:`can_dbc.Decoder` accepts in ``signals=`` (no bus part)."""
        return self.signal if self.message is None else f"{self.message}.{self.signal}"

    def __str__(self) -> str:
        name = self.decoder_name()
        return name if self.bus is None else f"{self.bus}:{name}"


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """A signal a scheme records, with its per-signal settings.

    ``deadband`` (on-change schemes): a numeric value is reported only when it differs from the
    last reported one by more than this (absolute; 0 = any change; value-table names: any
    change). ``min_sample_period_ms``: of this signal's samples the scheme keeps at most one per
    period (0 = all).
    """

    name: str
    deadband: float = 0.0
    min_sample_period_ms: int = 0

    def __post_init__(self) -> None:
        SignalRef.parse(self.name)
        if not (math.isfinite(self.deadband) and self.deadband >= 0):
            raise ValueError(f"deadband of {self.name} must be a finite number ≥ 0")
        if not 0 <= self.min_sample_period_ms <= MAX_PERIOD_MS:
            raise ValueError(f"min_sample_period_ms of {self.name} is out of range")

    @property
    def ref(self) -> SignalRef:
        """The parsed name."""
        return SignalRef.parse(self.name)


def _check_signals(specs: tuple[SignalSpec, ...], what: str) -> None:
    if not specs:
        raise ValueError(f"{what} needs at least one signal")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} lists a signal twice")


@dataclass(frozen=True, slots=True)
class Periodic:
    """Every ``period_ms``, one record with the latest value of each listed signal.

    Records fall on bus times that are whole multiples of the period (so records of different
    vehicles line up); each holds the values as they were just before that time. Signals never
    seen are left out; a record with no signal at all is not made.
    """

    period_ms: int
    signals: tuple[SignalSpec, ...]

    def __post_init__(self) -> None:
        if not MIN_PERIOD_MS <= self.period_ms <= MAX_PERIOD_MS:
            raise ValueError(f"period_ms must be {MIN_PERIOD_MS}–{MAX_PERIOD_MS}")
        _check_signals(self.signals, "a periodic scheme")


@dataclass(frozen=True, slots=True)
class OnChange:
    """A record whenever a listed signal changes beyond its deadband.

    The first value seen is a change. One frame that changes several listed signals gives one
    record holding them all.
    """

    signals: tuple[SignalSpec, ...]

    def __post_init__(self) -> None:
        _check_signals(self.signals, "an on-change scheme")


@dataclass(frozen=True, slots=True)
class Condition:
    """A record when ``expression`` triggers, holding ``capture`` from ``pre_ms`` to ``post_ms``.

    The expression is evaluated on every update of a signal it reads. With
    ``rising_edge_only`` it triggers only when its result goes from false (or unknown) to true;
    otherwise on every evaluation that is true. Triggers closer than ``min_interval_ms`` to the
    previous trigger are dropped, as are triggers while the previous one's post window is still
    open (its record covers them). An empty ``capture`` means the signals the expression reads.
    ``geofences`` are the areas its ``inside()`` tests name (each exactly once).
    """

    expression: Expression
    capture: tuple[SignalSpec, ...] = ()
    rising_edge_only: bool = True
    min_interval_ms: int = 0
    pre_ms: int = 0
    post_ms: int = 0
    geofences: tuple[Geofence, ...] = ()

    def __post_init__(self) -> None:
        declared = {g.id for g in self.geofences}
        if len(declared) != len(self.geofences):
            raise ValueError("a condition's geofences must have distinct ids")
        missing = sorted(self.expression.zones - declared)
        if missing:
            raise ValueError(f"no geofence {missing[0]!r} is declared")
        if not self.capture:
            specs = tuple(SignalSpec(n) for n in sorted(self.expression.signals))
            object.__setattr__(self, "capture", specs)
        _check_signals(self.capture, "a condition scheme's capture")
        if not 0 <= self.min_interval_ms <= MAX_PERIOD_MS:
            raise ValueError(f"min_interval_ms must be 0–{MAX_PERIOD_MS}")
        if not (0 <= self.pre_ms <= MAX_CAPTURE_MS and 0 <= self.post_ms <= MAX_CAPTURE_MS):
            raise ValueError(f"pre_ms and post_ms must be 0–{MAX_CAPTURE_MS}")


@dataclass(frozen=True, slots=True)
class Scheme:
    """One collection scheme: an id, what triggers it (``collection``), and when it is active.

    ``start`` and ``expiry`` are bus times (epoch seconds); the scheme acts only for frames in
    [start, expiry). ``None`` means no bound.
    """

    id: str
    collection: Periodic | OnChange | Condition
    priority: int = 5
    start: float | None = None
    expiry: float | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a scheme needs an id")
        if self.priority not in PRIORITIES:
            raise ValueError("priority must be 0–9")
        if self.start is not None and self.expiry is not None and self.expiry <= self.start:
            raise ValueError("expiry must be after start")

    @property
    def kind(self) -> str:
        """``"periodic"``, ``"on_change"`` or ``"condition"``."""
        if isinstance(self.collection, Periodic):
            return "periodic"
        if isinstance(self.collection, OnChange):
            return "on_change"
        return "condition"

    @property
    def recorded(self) -> tuple[SignalSpec, ...]:
        """The signals this scheme's records hold."""
        c = self.collection
        return c.capture if isinstance(c, Condition) else c.signals

    def active_at(self, t: float) -> bool:
        """True if the scheme acts at bus time *t*."""
        return (self.start is None or t >= self.start) and (self.expiry is None or t < self.expiry)

    def signals_used(self) -> frozenset[str]:
        """Every signal name the scheme reads or records."""
        names = {s.name for s in self.recorded}
        if isinstance(self.collection, Condition):
            names |= self.collection.expression.signals
        return frozenset(names)


class Sample(NamedTuple):
    """One value of one signal at bus time ``t``; ``signal`` is spelled as the scheme spells it."""

    signal: str
    t: float
    value: Value


@dataclass(frozen=True, slots=True)
class CollectedRecord:
    """What a scheme collected: one period, one change, or one trigger with its capture window.

    ``trigger_time`` is the period boundary, the time of the change, or the time of the frame
    that made the condition true. Samples are grouped by signal (in the scheme's order), each
    group oldest first.
    """

    scheme_id: str
    priority: int
    trigger_time: float
    samples: tuple[Sample, ...]
