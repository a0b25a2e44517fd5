"""The IDS rule model: frozen dataclasses, one spec class per rule kind.

A :class:`RuleSet` is what a rule file loads into (:mod:`security.rulefile` documents the file
format) and what :class:`~security.engine.IdsEngine` compiles. Every :class:`Rule` has an id, a
:class:`Severity`, a description, the AUTOSAR IdsM event definition and sensor ids its events
carry, and a kind-specific *spec*. Kinds that check individual CAN ids or signals hold a tuple of
*entries* (one per id or signal), so a learned baseline is one rule per kind and bus rather than
hundreds; an event still names the id concerned.

Everything here is plain data validated by the loader; nothing runs per frame.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final

from agent.schemes.expression import Expression
from security.secoc import SecOcProfile

__all__ = [
    "DEFAULT_EVENT_IDS",
    "DEFAULT_FLOOD_SHARE",
    "DEFAULT_SENSOR_IDS",
    "KINDS",
    "AllowlistSpec",
    "BytePattern",
    "ChecksumEntry",
    "ChecksumSpec",
    "ContextSpec",
    "CounterEntry",
    "CounterSpec",
    "DlcEntry",
    "DlcSpec",
    "FloodSpec",
    "PayloadEntry",
    "PayloadSpec",
    "PlausibilityEntry",
    "PlausibilitySpec",
    "ReplayEntry",
    "ReplaySpec",
    "Rule",
    "RuleSet",
    "RuleSpec",
    "SecOcEntry",
    "SecOcSpec",
    "Severity",
    "SignalRangeEntry",
    "SignalRangeSpec",
    "SignalRateEntry",
    "SignalRateSpec",
    "SuspensionEntry",
    "SuspensionSpec",
    "TimingEntry",
    "TimingSpec",
    "UnknownBurstSpec",
]

#: The largest 29-bit CAN id.
MAX_CAN_ID: Final = 0x1FFFFFFF
#: The default ``share`` of a flood rule.
DEFAULT_FLOOD_SHARE: Final = 0.25


class Severity(enum.IntEnum):
    """How bad an event is; the numbers are those of ``tbox.v1.Severity``."""

    INFO = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5

    @property
    def label(self) -> str:
        """The name rule files use: ``"high"``."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class BytePattern:
    """Bits a payload must (or must not) have: ``data & mask == value``, byte for byte.

    A payload shorter than the pattern reads as padded with zero bytes; bytes past it are not
    compared. ``value`` has no bits outside ``mask`` (the loader checks).
    """

    mask: bytes
    value: bytes

    def matches(self, data: bytes | bytearray) -> bool:
        """Whether *data* has the pattern's bits."""
        n = len(self.mask)
        head = bytes(data[:n])
        if len(head) < n:
            head = head.ljust(n, b"\0")
        return int.from_bytes(head, "big") & int.from_bytes(self.mask, "big") == int.from_bytes(
            self.value, "big"
        )


# ---- entries: one CAN id or signal of a rule ------------------------------------------------


@dataclass(frozen=True, slots=True)
class DlcEntry:
    """The data lengths an id may have."""

    can_id: int
    dlcs: frozenset[int]


@dataclass(frozen=True, slots=True)
class TimingEntry:
    """A periodic id: any window of ``window_periods`` periods ending at one of its frames holds
    ``min_count`` … ``max_count`` frames (the current one included)."""

    can_id: int
    period_ms: float
    min_count: int
    max_count: int


@dataclass(frozen=True, slots=True)
class SuspensionEntry:
    """An id that must not stay silent longer than ``max_silence_ms``."""

    can_id: int
    max_silence_ms: float


@dataclass(frozen=True, slots=True)
class PayloadEntry:
    """A byte pattern an id's payload must have (or, with ``forbid``, must not have)."""

    can_id: int
    pattern: BytePattern


@dataclass(frozen=True, slots=True)
class SignalRangeEntry:
    """A decoded signal's allowed range (either bound may be open)."""

    signal: str
    min: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class SignalRateEntry:
    """A decoded signal's largest change between consecutive frames: ``max_step + max_rate·Δt``
    (``max_rate`` in units per second)."""

    signal: str
    max_rate: float
    max_step: float


@dataclass(frozen=True, slots=True)
class PlausibilityEntry:
    """Two signals physics ties together: ``signal ≈ scale × partner + offset``.

    Checked at every frame carrying ``signal``, against the latest value of ``partner`` (on
    ``partner_bus``, None: the rule's bus) if it is at most ``max_age_ms`` old. The two agree
    when ``|signal − (scale × partner + offset)| ≤ tolerance + relative × |scale × partner +
    offset|``; the frame is flagged once they have disagreed for ``persistence`` checks in a row
    spanning at least ``persistence_ms``.
    """

    signal: str
    partner: str
    scale: float
    offset: float
    tolerance: float
    relative: float
    max_age_ms: float
    persistence: int
    persistence_ms: float
    partner_bus: str | None = None


@dataclass(frozen=True, slots=True)
class CounterEntry:
    """A rolling counter that must advance by 1 … ``max_step`` (the DBC's counter when
    ``signal`` is None)."""

    can_id: int
    signal: str | None
    max_step: int


@dataclass(frozen=True, slots=True)
class ReplayEntry:
    """A rolling counter that must not repeat or go back by up to ``history`` values (None: half
    the counter's range, less one)."""

    can_id: int
    signal: str | None
    history: int | None


@dataclass(frozen=True, slots=True)
class ChecksumEntry:
    """A checksum the DBC declares; ``algorithm`` overrides or supplies its algorithm."""

    can_id: int
    algorithm: str | None


@dataclass(frozen=True, slots=True)
class SecOcEntry:
    """An authenticated message: its SecOC profile and the id of its key in the key file."""

    can_id: int
    key: str
    profile: SecOcProfile
    initial_freshness: int | None = None


# ---- specs: one per kind ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllowlistSpec:
    """The only CAN ids allowed on ``bus``."""

    KIND: ClassVar[str] = "allowlist"
    bus: str
    ids: frozenset[int]


@dataclass(frozen=True, slots=True)
class DlcSpec:
    """Allowed data lengths per id."""

    KIND: ClassVar[str] = "dlc"
    bus: str
    entries: tuple[DlcEntry, ...]


@dataclass(frozen=True, slots=True)
class TimingSpec:
    """Frame counts of periodic ids in sliding windows of ``window_periods`` periods."""

    KIND: ClassVar[str] = "timing"
    bus: str
    window_periods: int
    entries: tuple[TimingEntry, ...]


@dataclass(frozen=True, slots=True)
class FloodSpec:
    """At most ``max_frames`` frames in any ``window_ms``: of the whole bus, of ``can_ids``, or
    of ids up to ``max_id`` (high priority).

    Over the limit, the frames flagged are those of ids holding at least ``share`` of the
    window's frames — the ids making the load, not the real traffic caught in it (0: every
    frame).
    """

    KIND: ClassVar[str] = "flood"
    bus: str
    window_ms: float
    max_frames: int
    can_ids: frozenset[int] | None = None
    max_id: int | None = None
    share: float = DEFAULT_FLOOD_SHARE

    def counts(self, can_id: int) -> bool:
        """Whether frames of *can_id* count towards the limit."""
        if self.can_ids is not None:
            return can_id in self.can_ids
        return self.max_id is None or can_id <= self.max_id


@dataclass(frozen=True, slots=True)
class UnknownBurstSpec:
    """At most ``max_ids`` distinct ids outside the bus's allowlist in any ``window_ms``
    (fuzzing)."""

    KIND: ClassVar[str] = "unknown_burst"
    bus: str
    window_ms: float
    max_ids: int


@dataclass(frozen=True, slots=True)
class PayloadSpec:
    """Byte patterns per id; ``forbid`` turns required patterns into forbidden ones."""

    KIND: ClassVar[str] = "payload"
    bus: str
    forbid: bool
    entries: tuple[PayloadEntry, ...]


@dataclass(frozen=True, slots=True)
class SignalRangeSpec:
    """Allowed ranges of decoded signals."""

    KIND: ClassVar[str] = "signal_range"
    bus: str
    entries: tuple[SignalRangeEntry, ...]


@dataclass(frozen=True, slots=True)
class SignalRateSpec:
    """Largest plausible changes of decoded signals."""

    KIND: ClassVar[str] = "signal_rate"
    bus: str
    entries: tuple[SignalRateEntry, ...]


@dataclass(frozen=True, slots=True)
class PlausibilitySpec:
    """Cross-signal plausibility: pairs of signals from different messages that must agree
    (a forged value on one id disagrees with the physics other ids report)."""

    KIND: ClassVar[str] = "plausibility"
    bus: str
    entries: tuple[PlausibilityEntry, ...]


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """Rolling counter continuity (lost or injected frames)."""

    KIND: ClassVar[str] = "counter"
    bus: str
    entries: tuple[CounterEntry, ...]


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """Repeated or stale rolling counters (replayed frames)."""

    KIND: ClassVar[str] = "replay"
    bus: str
    entries: tuple[ReplayEntry, ...]


@dataclass(frozen=True, slots=True)
class ChecksumSpec:
    """Checksums as the DBC declares them (:mod:`can_dbc.integrity`)."""

    KIND: ClassVar[str] = "checksum"
    bus: str
    entries: tuple[ChecksumEntry, ...]


@dataclass(frozen=True, slots=True)
class SuspensionSpec:
    """Periodic ids that must not go silent."""

    KIND: ClassVar[str] = "suspension"
    bus: str
    entries: tuple[SuspensionEntry, ...]


@dataclass(frozen=True, slots=True)
class SecOcSpec:
    """SecOC verification of authenticated messages (:mod:`security.secoc`)."""

    KIND: ClassVar[str] = "secoc"
    bus: str
    entries: tuple[SecOcEntry, ...]


@dataclass(frozen=True, slots=True)
class ContextSpec:
    """A request on ``can_ids`` that is forbidden while ``condition`` holds.

    A frame is a request when its payload starts a UDS request with one of ``uds`` (ISO-TP single
    or first frame; bytes after the PCI) or matches one of ``patterns``. ``condition`` is a
    collection-scheme condition over decoded signals (:mod:`agent.schemes.expression`).
    """

    KIND: ClassVar[str] = "context"
    bus: str
    can_ids: frozenset[int]
    uds: tuple[bytes, ...]
    patterns: tuple[BytePattern, ...]
    condition: Expression


RuleSpec = (
    AllowlistSpec
    | DlcSpec
    | TimingSpec
    | FloodSpec
    | UnknownBurstSpec
    | PayloadSpec
    | SignalRangeSpec
    | SignalRateSpec
    | PlausibilitySpec
    | CounterSpec
    | ReplaySpec
    | ChecksumSpec
    | SuspensionSpec
    | SecOcSpec
    | ContextSpec
)

#: Spec class of every kind, in the order the documentation lists them.
SPEC_CLASSES: Final[Mapping[str, type[RuleSpec]]] = MappingProxyType(
    {
        cls.KIND: cls
        for cls in (
            AllowlistSpec,
            DlcSpec,
            TimingSpec,
            FloodSpec,
            UnknownBurstSpec,
            PayloadSpec,
            SignalRangeSpec,
            SignalRateSpec,
            CounterSpec,
            ChecksumSpec,
            ReplaySpec,
            ContextSpec,
            SuspensionSpec,
            SecOcSpec,
            PlausibilitySpec,
        )
    }
)
KINDS: Final = tuple(SPEC_CLASSES)

#: AUTOSAR IdsM security event definition id (16 bits) of each kind's events, unless a rule
#: sets ``event_id``. The 0xA0xx block is this project's; a backend maps them to its catalogue.
DEFAULT_EVENT_IDS: Final[Mapping[str, int]] = MappingProxyType(
    {kind: 0xA001 + i for i, kind in enumerate(KINDS)}
)

#: IdsM sensor instance id (6 bits) of each kind's detector, unless a rule sets ``sensor_id``:
#: 1 frame ids and lengths, 2 timing and load, 3 payload and signals, 4 counters and checksums,
#: 5 SecOC.
DEFAULT_SENSOR_IDS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "allowlist": 1,
        "dlc": 1,
        "unknown_burst": 1,
        "timing": 2,
        "flood": 2,
        "suspension": 2,
        "payload": 3,
        "signal_range": 3,
        "signal_rate": 3,
        "context": 3,
        "plausibility": 3,
        "counter": 4,
        "checksum": 4,
        "replay": 4,
        "secoc": 5,
    }
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: what it checks (``spec``) and how its events are labelled.

    ``index`` and ``line`` say where it was defined (``rule[index]`` of the document, and the line
    of its ``[[rule]]`` header), for error messages; they do not take part in equality.
    """

    id: str
    severity: Severity
    description: str
    spec: RuleSpec
    event_id: int
    sensor_id: int
    index: int | None = field(default=None, compare=False)
    line: int | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        """The rule kind (``"timing"``)."""
        return self.spec.KIND

    @property
    def bus(self) -> str:
        """The bus the rule watches."""
        return self.spec.bus


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one document, in file order, with where they came from.

    ``text`` is the document's text when it was a file (for locating keys in binding errors).
    ``revision`` is the document's ``revision`` (None when it has none): rule sets pushed to a
    vehicle must have one, and a vehicle refuses a lower one than it applied (anti-rollback).
    """

    rules: tuple[Rule, ...] = ()
    source: str = "<rules>"
    text: str | None = field(default=None, compare=False, repr=False)
    revision: int | None = None

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def buses(self) -> frozenset[str]:
        """Every bus some rule watches."""
        return frozenset(rule.bus for rule in self.rules)

    def get(self, rule_id: str) -> Rule | None:
        """The rule with id *rule_id*, if any."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        return None
