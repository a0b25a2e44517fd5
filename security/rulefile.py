"""IDS rule files: TOML documents of ``[[rule]]`` tables, loaded into a frozen :class:`RuleSet`.

**The format.** A document holds any number of rules; ``tbox ids learn`` writes one from clean
traffic, and people add to it by hand::

    version = 1                                    # optional; the only version so far
    revision = 7                                   # optional: this rule set's revision

    [[rule]]
    id = "can0.allowlist"                          # required, unique: 1–64 of A-Z a-z 0-9 _ . : -
    kind = "allowlist"                             # required: one of the kinds below
    severity = "high"                              # required: info, low, medium, high, critical
    description = "CAN ids of the clean recording" # required: one line for a human
    bus = "can0"                                   # required: the bus name (a frame's channel)
    ids = [0x025, 0x0B4, 0x2C1]                    # allowlist: the only ids allowed on the bus
    event_id = 0xA001                              # optional: IdsM event definition id (16 bits)
    sensor_id = 1                                  # optional: IdsM sensor instance id (6 bits)

    [[rule]]                                       # one CAN id per rule …
    id = "speed-timing"
    kind = "timing"
    severity = "medium"
    description = "SPEED arrives every 24 ms"
    bus = "can0"
    can_id = 0x0B4
    period_ms = 24.1

    [[rule]]                                       # … or many, one inline table each
    id = "can0.timing"
    kind = "timing"
    severity = "medium"
    description = "periodic ids keep their rate"
    bus = "can0"
    window_periods = 10
    messages = [
      { can_id = 0x024, period_ms = 12.06, min_count = 8, max_count = 13 },
      { can_id = 0x0B4, period_ms = 24.12, min_count = 8, max_count = 13 },
    ]

Every rule has ``id``, ``kind``, ``severity``, ``description`` and ``bus``, and may set
``event_id`` (0–65535) and ``sensor_id`` (0–63); the defaults per kind are
:data:`security.rules.DEFAULT_EVENT_IDS` and :data:`~security.rules.DEFAULT_SENSOR_IDS`. Kinds
that check single ids or signals take their *entry keys* either in the rule itself (one entry) or
as inline tables in ``messages`` (ids) or ``signals`` (signals). CAN ids are numbers (``0x7DF``
or ``2015``); 11- and 29-bit ids share one number space per bus.

=================  ==============================================================================
kind               keys (entry keys in ``messages`` / ``signals``; * = required)
=================  ==============================================================================
``allowlist``      ``ids``\\* — every other id on the bus is flagged, frame by frame. At most one
                   per bus.
``dlc``            messages: ``can_id``\\*, ``dlc``\\* (a length 0–64 or a list of them).
``timing``         ``window_periods`` (2–1,000, default 10); messages: ``can_id``\\*,
                   ``period_ms``\\*, ``min_count`` (default window_periods − 2), ``max_count``
                   (default window_periods + 2). At every frame of the id, the frames in the last
                   ``window_periods × period_ms`` (this one included) are counted; fewer than
                   ``min_count`` (once a whole window has passed) or more than ``max_count`` is
                   flagged. Counting over a window tolerates the jitter of real traffic (20–40 %
                   of the period): a single early or late frame does not change a count by more
                   than one.
``suspension``     messages: ``can_id``\\*, ``max_silence_ms``\\* — flagged when the id has not
                   been seen for that long (measured on the bus's clock, from its first frame).
``flood``          ``window_ms`` (default 100), ``max_frames``\\*, and optionally ``can_ids`` (a
                   list) or ``max_id`` (ids ≤ it: high priority) — more frames in any window than
                   that is flagged. Without either, every frame on the bus counts (bus load).
                   ``share`` (0–1, default 0.25): over the limit, only frames of ids holding at
                   least that share of the window are flagged — the flood, not the real traffic
                   caught in it (0: every frame).
``unknown_burst``  ``window_ms`` (default 100), ``max_ids`` (default 3) — more distinct ids
                   outside the bus's allowlist in any window is flagged (fuzzing). Needs an
                   ``allowlist`` rule for the bus.
``payload``        ``forbid`` (default false); messages: ``can_id``\\*, ``mask``\\*,
                   ``value``\\* (hex strings of equal length, e.g. ``"FF 00"``) — a payload
                   whose masked bits differ from ``value`` is flagged (with ``forbid``: equal).
``signal_range``   signals: ``signal``\\*, ``min``, ``max`` (at least one).
``signal_rate``    signals: ``signal``\\*, ``max_rate``\\* (units per second), ``max_step``
                   (default 0) — a change between consecutive frames larger than
                   ``max_step + max_rate × Δt`` is flagged.
``plausibility``   signals: ``signal``\\*, ``partner``\\* (a signal of another message, on
                   ``partner_bus``, default the rule's bus), ``scale`` (default 1), ``offset``
                   (default 0), ``tolerance`` (absolute) and/or ``relative`` (a share of the
                   expected value; at least one > 0), ``max_age_ms``\\*, ``persistence``
                   (checks, default 3), ``persistence_ms`` (default 0) — at every frame carrying
                   ``signal``, its value must be within ``tolerance + relative × |expected|`` of
                   ``expected = scale × partner + offset``, the partner's latest value, if that
                   is at most ``max_age_ms`` old (else the frame is not judged). Flagged once
                   they have disagreed for ``persistence`` checks in a row spanning at least
                   ``persistence_ms``, so single noisy samples raise nothing; the frame flagged is
                   the one carrying ``signal``. A masquerade with a plausible value (a forged
                   vehicle speed of 30 km/h while the wheel speeds say 62) is found this way. A
                   partner frame that another rule condemns (out of range, bad checksum) is no
                   partner value.
``counter``        messages: ``can_id``\\*, ``signal`` (default: the counter the DBC declares),
                   ``max_step`` (default 1) — a counter that jumps further ahead is flagged.
``replay``         messages: ``can_id``\\*, ``signal`` (as for counter), ``history`` (default:
                   half the counter's range less one) — a counter that repeats or goes back by
                   up to ``history`` values is flagged (stale or replayed frame).
``checksum``       messages: ``can_id``\\*, ``algorithm`` (``crc8_sae_j1850``, ``crc8_h2f``,
                   ``xor8``, ``sum8``; needed where the DBC names a checksum without declaring
                   its ``ChecksumAlgo``, as opendbc's naming conventions do) — a wrong checksum
                   is flagged (coverage: :mod:`can_dbc.integrity`).
``context``        ``can_ids``\\*, ``uds`` (hex prefixes of UDS requests, e.g. ``"10 02"`` for a
                   programming session, ``"27"`` for SecurityAccess) and/or ``patterns`` (a list
                   of ``{ mask, value }``), ``condition``\\* (a collection-scheme condition such
                   as ``"SPEED.SPEED > 5"``) — a matching request while the condition holds is
                   flagged. UDS prefixes match ISO-TP single frames and first frames.
``secoc``          messages: ``can_id``\\*, ``key``\\* (key id in the key file), ``data_id``\\*
                   (16 bits), ``payload_bytes``\\*, ``freshness_bits`` (default 64),
                   ``freshness_tx_bits`` (default 8), ``mac_bits`` (default 24),
                   ``freshness_window`` (default 0: none), ``initial_freshness`` — a frame whose
                   truncated AES-CMAC does not verify, or whose freshness is stale, is flagged
                   (:mod:`security.secoc`).
=================  ==============================================================================

Signal names are ``MESSAGE.SIGNAL`` or a ``SIGNAL`` that only one message of the bus's DBC files
has; a context condition's signals are on the rule's bus unless named with theirs
(``can1:SPEED.SPEED``). Signal, counter
and checksum rules need the DBC files of their bus (``--dbc``); SecOC rules a key file
(``--keys``, :mod:`security.keys`).

**Revision.** ``revision`` (a whole number, 0 … 2⁶³ − 1) numbers the versions of one vehicle's
rule set; ``version`` is the file *format*'s. A rule set pushed to a vehicle (``cmd/ids-rules``)
must have one, and the vehicle refuses a lower revision than the one it applied, or the same
revision with other rules (anti-rollback: a replayed old update cannot weaken detection). Files
read by ``tbox ids run`` may leave it out.

**Errors** are :class:`~security.errors.RuleFileError` naming the source, the line, the key and
the rule: ``rules.toml:31: rule[2].messages[4].period_ms: -3 must be > 0 and ≤ 3.6e+06 (rule
'can0.timing')``.
Unknown keys are errors, so a misspelt option never goes unnoticed.

:func:`parse_rule_document` validates the same structure arriving decoded (a command payload);
:func:`format_rules` writes a rule set back as TOML that loads into an equal rule set.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

from agent.errors import describe_toml_error
from agent.errors import kind_of_value as _kind
from agent.schemes.errors import ExpressionError
from agent.schemes.expression import Expression, parse_expression
from agent.toml_lines import KeyPath, dotted_key, line_of
from security.errors import RuleFileError
from security.rules import (
    DEFAULT_EVENT_IDS,
    DEFAULT_FLOOD_SHARE,
    DEFAULT_SENSOR_IDS,
    KINDS,
    MAX_CAN_ID,
    AllowlistSpec,
    BytePattern,
    ChecksumEntry,
    ChecksumSpec,
    ContextSpec,
    CounterEntry,
    CounterSpec,
    DlcEntry,
    DlcSpec,
    FloodSpec,
    PayloadEntry,
    PayloadSpec,
    PlausibilityEntry,
    PlausibilitySpec,
    ReplayEntry,
    ReplaySpec,
    Rule,
    RuleSet,
    RuleSpec,
    SecOcEntry,
    SecOcSpec,
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
from security.secoc import SecOcProfile

__all__ = [
    "FORMAT_VERSION",
    "MAX_ENTRIES",
    "MAX_REVISION",
    "MAX_RULES",
    "format_rules",
    "load_rules",
    "parse_rule_document",
    "parse_rules",
    "rollback_problem",
]

#: The document format's version (``version = 1``).
FORMAT_VERSION: Final = 1
#: The largest ``revision`` (an int64 in any backend's database).
MAX_REVISION: Final = 2**63 - 1
#: Most rules in one document, and most entries (or allowlisted ids) in one rule.
MAX_RULES: Final = 4096
MAX_ENTRIES: Final = 65536
#: Longest sliding window (flood, unknown bursts) and silence, in ms.
MAX_WINDOW_MS: Final = 3_600_000.0
#: Largest frame count a flood rule may allow in its window (its ring buffer holds that many).
MAX_FLOOD_FRAMES: Final = 100_000

_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_SIGNAL_RE: Final = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*")
_HEX_SEPARATORS: Final = re.compile(r"[\s:_]")
_HEX_RE: Final = re.compile(r"(?:[0-9A-Fa-f]{2})*")
_COMMON_KEYS: Final = ("id", "kind", "severity", "description", "bus", "event_id", "sensor_id")
_SEVERITIES: Final = {s.label: s for s in Severity}

# Per kind: rule-level keys, the list key of its entries (None: no entries) and entry keys.
_RULE_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "allowlist": ("ids",),
    "dlc": (),
    "timing": ("window_periods",),
    "suspension": (),
    "flood": ("window_ms", "max_frames", "can_ids", "max_id", "share"),
    "unknown_burst": ("window_ms", "max_ids"),
    "payload": ("forbid",),
    "signal_range": (),
    "signal_rate": (),
    "plausibility": (),
    "counter": (),
    "replay": (),
    "checksum": (),
    "context": ("can_ids", "uds", "patterns", "condition"),
    "secoc": (),
}
_LIST_KEY: Final[Mapping[str, str]] = {
    "dlc": "messages",
    "timing": "messages",
    "suspension": "messages",
    "payload": "messages",
    "signal_range": "signals",
    "signal_rate": "signals",
    "plausibility": "signals",
    "counter": "messages",
    "replay": "messages",
    "checksum": "messages",
    "secoc": "messages",
}
_ENTRY_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "dlc": ("can_id", "dlc"),
    "timing": ("can_id", "period_ms", "min_count", "max_count"),
    "suspension": ("can_id", "max_silence_ms"),
    "payload": ("can_id", "mask", "value"),
    "signal_range": ("signal", "min", "max"),
    "signal_rate": ("signal", "max_rate", "max_step"),
    "plausibility": (
        "signal",
        "partner",
        "partner_bus",
        "scale",
        "offset",
        "tolerance",
        "relative",
        "max_age_ms",
        "persistence",
        "persistence_ms",
    ),
    "counter": ("can_id", "signal", "max_step"),
    "replay": ("can_id", "signal", "history"),
    "checksum": ("can_id", "algorithm"),
    "secoc": (
        "can_id",
        "key",
        "data_id",
        "payload_bytes",
        "freshness_bits",
        "freshness_tx_bits",
        "mac_bits",
        "freshness_window",
        "initial_freshness",
    ),
}


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """Load and validate the rule file at *path*; raises :class:`RuleFileError`."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleFileError(name, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RuleFileError(name, None, f"cannot read the file: {e}") from None
    return parse_rules(text, source=name)


def parse_rules(text: str, source: str = "<string>") -> RuleSet:
    """Parse and validate rule-file TOML *text*; *source* names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem, line = describe_toml_error(e, text)
        raise RuleFileError(source, None, f"TOML syntax error: {problem}", line=line) from None
    return _Builder(text, source).document(data)


def rollback_problem(applied: RuleSet, update: RuleSet) -> str | None:
    """Why *update* must not replace *applied* — it would roll the rules back — or None.

    Refused: no revision when the applied rules have one, a lower revision, or the applied
    revision with other rules (two rule sets must not share a number). The same rules again are
    fine: a resent update changes nothing.
    """
    old, new = applied.revision, update.revision
    if old is None:
        return None
    if new is None:
        return f"the rule set has no revision; the applied one is revision {old}"
    if new < old:
        return f"revision {new} is older than the applied revision {old} (a rollback)"
    if new == old and update.rules != applied.rules:
        return (
            f"revision {new} is applied already, with other rules: a changed rule set needs a "
            "higher revision"
        )
    return None


def parse_rule_document(data: Mapping[str, Any], source: str) -> RuleSet:
    """Validate a rule document that arrived decoded (JSON, a command payload) into a rule set.

    *data* has the TOML file's structure (``{"version": 1, "rule": [{...}, ...]}``); errors name
    *source* and the key but no line.
    """
    return _Builder(None, source).document(data)


# ---- validation ----------------------------------------------------------------------------


class _Builder:
    """Validates one parsed document and builds the frozen rules, naming keys in errors."""

    def __init__(self, text: str | None, source: str) -> None:
        self.text = text
        self.source = source
        # The rule being built: its index and (once known) id, for error messages.
        self.index: int | None = None
        self.rule_id: str | None = None

    def fail(self, path: Sequence[str | int], problem: str) -> NoReturn:
        """Raise a RuleFileError for the key at *path* within the current rule."""
        full: KeyPath = tuple(path) if self.index is None else ("rule", self.index, *path)
        line = None
        if self.text is not None and full:
            line = line_of(self.text, full, min_depth=1 if self.index is None else 2)
        key = dotted_key(full) if full else None
        raise RuleFileError(self.source, key, problem, line=line, rule_id=self.rule_id)

    # -- the document -------------------------------------------------------------------------

    def document(self, data: object) -> RuleSet:
        if not isinstance(data, Mapping):
            raise RuleFileError(self.source, None, f"must be a table, not {_kind(data)}")
        for key in data:
            if key not in ("version", "revision", "rule"):
                self.fail((str(key),), "unknown key (expected one of: version, revision, rule)")
        if "version" in data:
            version = data["version"]
            if isinstance(version, bool) or version != FORMAT_VERSION:
                self.fail(("version",), f"{version!r} is not supported (expected 1)")
        revision = None
        if "revision" in data:
            revision = data["revision"]
            # Strictly an integer: 7.0 or "7" are more likely mistakes than intent here.
            if isinstance(revision, bool) or not isinstance(revision, int):
                self.fail(("revision",), f"must be a whole number, not {_kind(revision)}")
            if not 0 <= revision <= MAX_REVISION:
                self.fail(("revision",), f"{revision} is out of range [0, 2**63 - 1]")
        raw = data.get("rule", [])
        if not isinstance(raw, list):
            self.fail(("rule",), f"must be an array of tables ([[rule]]), not {_kind(raw)}")
        if len(raw) > MAX_RULES:
            self.fail(("rule",), f"{len(raw)} rules; at most {MAX_RULES} in one document")
        rules: list[Rule] = []
        ids: dict[str, int] = {}
        allowlists: dict[str, int] = {}
        for index, item in enumerate(raw):
            self.index, self.rule_id = index, None
            rule = self.rule(index, item)
            if rule.id in ids:
                self.fail(("id",), f"{rule.id!r} is already the id of rule[{ids[rule.id]}]")
            ids[rule.id] = index
            if isinstance(rule.spec, AllowlistSpec):
                if rule.bus in allowlists:
                    self.fail(
                        ("bus",),
                        f"bus {rule.bus!r} already has an allowlist: rule[{allowlists[rule.bus]}]",
                    )
                allowlists[rule.bus] = index
            rules.append(rule)
        for rule in rules:
            if isinstance(rule.spec, UnknownBurstSpec) and rule.bus not in allowlists:
                self.index, self.rule_id = rule.index, rule.id
                self.fail(
                    ("bus",),
                    f"an unknown_burst rule needs an allowlist rule for bus {rule.bus!r}, "
                    "which defines what is unknown",
                )
        self.index = self.rule_id = None
        return RuleSet(tuple(rules), self.source, self.text, revision)

    def rule(self, index: int, tbl: object) -> Rule:
        if not isinstance(tbl, Mapping):
            self.fail((), f"must be a table, not {_kind(tbl)}")
        if "id" not in tbl:
            self.fail(("id",), "is required")
        rule_id = tbl["id"]
        if not isinstance(rule_id, str):
            self.fail(("id",), f"must be a string, not {_kind(rule_id)}")
        if not _ID_RE.fullmatch(rule_id):
            self.fail(("id",), f"{rule_id!r} must be 1–64 characters of A-Z a-z 0-9 _ . : -")
        self.rule_id = rule_id
        if "kind" not in tbl:
            self.fail(("kind",), f"is required: one of {', '.join(KINDS)}")
        kind = tbl["kind"]
        if kind not in KINDS:
            self.fail(("kind",), f"{kind!r} is not one of {', '.join(KINDS)}")
        list_key = _LIST_KEY.get(kind)
        entry_keys = _ENTRY_KEYS.get(kind, ())
        allowed = (*_COMMON_KEYS, *_RULE_KEYS[kind], *((list_key,) if list_key else ()))
        allowed_all = (*allowed, *entry_keys)
        for key in tbl:
            if key not in allowed_all:
                self.fail(
                    (str(key),),
                    f"unknown key for a rule of kind {kind!r} "
                    f"(expected one of: {', '.join(allowed_all)})",
                )
        severity_text = self.required(tbl, "severity")
        if severity_text not in _SEVERITIES:
            self.fail(
                ("severity",),
                f"{severity_text!r} is not one of {', '.join(_SEVERITIES)}",
            )
        description = self.required(tbl, "description")
        if not description.strip():
            self.fail(("description",), "must not be empty")
        bus = self.required(tbl, "bus")
        if not bus or not bus.isprintable() or len(bus) > 64:
            self.fail(("bus",), f"{bus!r} is not a bus name (1–64 printable characters)")
        event_id = self.integer(tbl, ("event_id",), DEFAULT_EVENT_IDS[kind], 0, 0xFFFF)
        sensor_id = self.integer(tbl, ("sensor_id",), DEFAULT_SENSOR_IDS[kind], 0, 63)

        entries: list[Any] = []
        if list_key is not None:
            entries = self.entries(tbl, kind, list_key, entry_keys)
        spec = self.spec(kind, bus, tbl, entries)
        line = None
        if self.text is not None:
            line = line_of(self.text, ("rule", index), min_depth=2)
        return Rule(
            id=rule_id,
            severity=_SEVERITIES[severity_text],
            description=description,
            spec=spec,
            event_id=event_id,
            sensor_id=sensor_id,
            index=index,
            line=line,
        )

    def entries(
        self, tbl: Mapping[str, Any], kind: str, list_key: str, entry_keys: tuple[str, ...]
    ) -> list[Any]:
        """The rule's entries, from its ``messages``/``signals`` list or its own keys."""
        inline = [k for k in entry_keys if k in tbl]
        build = _ENTRY_BUILDERS[kind]
        if list_key not in tbl:
            if not inline:
                self.fail(
                    (list_key,),
                    f"is required: a list of {{ {', '.join(entry_keys)} }} tables, or those "
                    "keys in the rule itself for one entry",
                )
            return [build(self, tbl, ())]
        if inline:
            self.fail(
                (inline[0],),
                f"belongs in the tables of {list_key} when the rule has a {list_key} list",
            )
        raw = tbl[list_key]
        if not isinstance(raw, list):
            self.fail((list_key,), f"must be a list of tables, not {_kind(raw)}")
        if not raw:
            self.fail((list_key,), "must hold at least one entry")
        if len(raw) > MAX_ENTRIES:
            self.fail((list_key,), f"{len(raw)} entries; at most {MAX_ENTRIES}")
        out: list[Any] = []
        seen: dict[object, int] = {}
        for j, item in enumerate(raw):
            path = (list_key, j)
            if not isinstance(item, Mapping):
                self.fail(path, f"must be a table, not {_kind(item)}")
            for key in item:
                if key not in entry_keys:
                    self.fail(
                        (*path, str(key)),
                        f"unknown key (expected one of: {', '.join(entry_keys)})",
                    )
            entry = build(self, item, path)
            what = getattr(entry, "can_id", None)
            if what is None:
                what = getattr(entry, "signal", None)
            if isinstance(entry, PlausibilityEntry):  # a signal may have several partners
                what = (entry.signal, entry.partner_bus, entry.partner)
            if what in seen:
                if isinstance(what, int):
                    shown = f"0x{what:X}"
                elif isinstance(what, tuple):
                    shown = f"the pair {what[0]!r} ~ {what[2]!r}"
                else:
                    shown = repr(what)
                self.fail((*path, entry_keys[0]), f"{shown} is already in {list_key}[{seen[what]}]")
            seen[what] = j
            out.append(entry)
        return out

    def spec(self, kind: str, bus: str, tbl: Mapping[str, Any], entries: list[Any]) -> RuleSpec:
        if kind == "allowlist":
            return AllowlistSpec(bus, frozenset(self.can_ids(tbl, ("ids",), allow_empty=True)))
        if kind == "dlc":
            return DlcSpec(bus, tuple(entries))
        if kind == "timing":
            window = self.integer(tbl, ("window_periods",), 10, 2, 1000)
            checked = []
            for entry in entries:
                min_count = entry.min_count if entry.min_count >= 0 else max(0, window - 2)
                max_count = entry.max_count if entry.max_count >= 0 else window + 2
                if min_count > max_count:
                    self.fail(
                        self._entry_path(tbl, entries, entry, "min_count"),
                        f"min_count {min_count} is above max_count {max_count}",
                    )
                checked.append(TimingEntry(entry.can_id, entry.period_ms, min_count, max_count))
            return TimingSpec(bus, window, tuple(checked))
        if kind == "suspension":
            return SuspensionSpec(bus, tuple(entries))
        if kind == "flood":
            window_ms = self.number(tbl, ("window_ms",), 100.0, 0.0, MAX_WINDOW_MS, open_lo=True)
            if "max_frames" not in tbl:
                self.fail(("max_frames",), "is required: the most frames allowed in a window")
            max_frames = self.integer(tbl, ("max_frames",), 0, 1, MAX_FLOOD_FRAMES)
            can_ids = None
            if "can_ids" in tbl:
                can_ids = frozenset(self.can_ids(tbl, ("can_ids",), allow_empty=False))
            max_id = None
            if "max_id" in tbl:
                if can_ids is not None:
                    self.fail(("max_id",), "give can_ids or max_id, not both")
                max_id = self.can_id(tbl, ("max_id",))
            share = self.number(tbl, ("share",), DEFAULT_FLOOD_SHARE, 0.0, 1.0)
            return FloodSpec(bus, window_ms, max_frames, can_ids, max_id, share)
        if kind == "unknown_burst":
            window_ms = self.number(tbl, ("window_ms",), 100.0, 0.0, MAX_WINDOW_MS, open_lo=True)
            max_ids = self.integer(tbl, ("max_ids",), 3, 0, MAX_ENTRIES)
            return UnknownBurstSpec(bus, window_ms, max_ids)
        if kind == "payload":
            forbid = self.boolean(tbl, ("forbid",), False)
            return PayloadSpec(bus, forbid, tuple(entries))
        if kind == "signal_range":
            return SignalRangeSpec(bus, tuple(entries))
        if kind == "signal_rate":
            return SignalRateSpec(bus, tuple(entries))
        if kind == "plausibility":
            for entry in entries:
                if entry.signal == entry.partner and entry.partner_bus in (None, bus):
                    self.fail(
                        self._entry_path(tbl, entries, entry, "partner", "signals"),
                        f"{entry.partner!r} is the checked signal itself",
                    )
            return PlausibilitySpec(bus, tuple(entries))
        if kind == "counter":
            return CounterSpec(bus, tuple(entries))
        if kind == "replay":
            return ReplaySpec(bus, tuple(entries))
        if kind == "checksum":
            return ChecksumSpec(bus, tuple(entries))
        if kind == "secoc":
            return SecOcSpec(bus, tuple(entries))
        return self.context(bus, tbl)

    @staticmethod
    def _entry_path(
        tbl: Mapping[str, Any],
        entries: list[Any],
        entry: object,
        key: str,
        list_key: str = "messages",
    ) -> tuple[str | int, ...]:
        if list_key in tbl:
            return (list_key, entries.index(entry), key)
        return (key,)

    def context(self, bus: str, tbl: Mapping[str, Any]) -> ContextSpec:
        if "can_ids" not in tbl:
            self.fail(("can_ids",), "is required: the ids requests arrive on (e.g. [0x7DF])")
        can_ids = frozenset(self.can_ids(tbl, ("can_ids",), allow_empty=False))
        uds: list[bytes] = []
        if "uds" in tbl:
            raw = tbl["uds"]
            if not isinstance(raw, list) or not raw:
                self.fail(("uds",), 'must be a non-empty list of hex strings such as "10 02"')
            for j, item in enumerate(raw):
                prefix = self.hex_bytes(item, ("uds", j))
                if not 1 <= len(prefix) <= 7:
                    self.fail(("uds", j), "a UDS prefix has 1–7 bytes (service id first)")
                uds.append(prefix)
        patterns: list[BytePattern] = []
        if "patterns" in tbl:
            raw = tbl["patterns"]
            if not isinstance(raw, list) or not raw:
                self.fail(("patterns",), "must be a non-empty list of { mask, value } tables")
            for j, item in enumerate(raw):
                if not isinstance(item, Mapping):
                    self.fail(("patterns", j), f"must be a table, not {_kind(item)}")
                for key in item:
                    if key not in ("mask", "value"):
                        self.fail(("patterns", j, str(key)), "unknown key (expected mask, value)")
                patterns.append(self.pattern(item, ("patterns", j)))
        if not uds and not patterns:
            self.fail(("uds",), "a context rule needs uds prefixes or patterns (or both)")
        if "condition" not in tbl:
            self.fail(("condition",), "is required: e.g. 'SPEED.SPEED > 5'")
        text = tbl["condition"]
        if not isinstance(text, str):
            self.fail(("condition",), f"must be a string, not {_kind(text)}")
        expression: Expression
        try:
            expression = parse_expression(text)
        except ExpressionError as e:
            self.fail(("condition",), str(e))
        if expression.zones:
            self.fail(("condition",), "inside() needs geofences, which IDS rules do not have")
        return ContextSpec(bus, can_ids, tuple(uds), tuple(patterns), expression)

    # -- entries of each kind -----------------------------------------------------------------

    def dlc_entry(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> DlcEntry:
        can_id = self.required_can_id(tbl, path)
        if "dlc" not in tbl:
            self.fail((*path, "dlc"), "is required: a length 0–64 or a list of them")
        raw = tbl["dlc"]
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            self.fail((*path, "dlc"), "must list at least one length")
        dlcs = set()
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
                self.fail((*path, "dlc"), f"{value!r} is not a data length 0–64")
            dlcs.add(value)
        return DlcEntry(can_id, frozenset(dlcs))

    def timing_entry(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> TimingEntry:
        can_id = self.required_can_id(tbl, path)
        if "period_ms" not in tbl:
            self.fail((*path, "period_ms"), "is required: the id's period in ms")
        period = self.number(tbl, (*path, "period_ms"), 0.0, 0.0, MAX_WINDOW_MS, open_lo=True)
        # -1: "the default for the rule's window", resolved once the window is known.
        min_count = self.integer(tbl, (*path, "min_count"), -1, 0, 1_000_000)
        max_count = self.integer(tbl, (*path, "max_count"), -1, 1, 1_000_000)
        return TimingEntry(can_id, period, min_count, max_count)

    def suspension_entry(
        self, tbl: Mapping[str, Any], path: tuple[str | int, ...]
    ) -> SuspensionEntry:
        can_id = self.required_can_id(tbl, path)
        if "max_silence_ms" not in tbl:
            self.fail((*path, "max_silence_ms"), "is required: the longest silence in ms")
        silence = self.number(tbl, (*path, "max_silence_ms"), 0.0, 0.0, MAX_WINDOW_MS, open_lo=True)
        return SuspensionEntry(can_id, silence)

    def payload_entry(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> PayloadEntry:
        can_id = self.required_can_id(tbl, path)
        return PayloadEntry(can_id, self.pattern(tbl, path))

    def signal_range_entry(
        self, tbl: Mapping[str, Any], path: tuple[str | int, ...]
    ) -> SignalRangeEntry:
        signal = self.signal(tbl, path)
        lo = self.number(tbl, (*path, "min"), None, -math.inf, math.inf)
        hi = self.number(tbl, (*path, "max"), None, -math.inf, math.inf)
        if lo is None and hi is None:
            self.fail((*path, "min"), "give min, max or both")
        if lo is not None and hi is not None and lo > hi:
            self.fail((*path, "max"), f"max {hi!r} is below min {lo!r}")
        return SignalRangeEntry(signal, lo, hi)

    def signal_rate_entry(
        self, tbl: Mapping[str, Any], path: tuple[str | int, ...]
    ) -> SignalRateEntry:
        signal = self.signal(tbl, path)
        if "max_rate" not in tbl:
            self.fail((*path, "max_rate"), "is required: the largest change per second")
        rate = self.number(tbl, (*path, "max_rate"), 0.0, 0.0, math.inf)
        step = self.number(tbl, (*path, "max_step"), 0.0, 0.0, math.inf)
        return SignalRateEntry(signal, rate, step)

    def plausibility_entry(
        self, tbl: Mapping[str, Any], path: tuple[str | int, ...]
    ) -> PlausibilityEntry:
        signal = self.signal(tbl, path)
        if "partner" not in tbl:
            self.fail(
                (*path, "partner"),
                "is required: the signal of another message that signal must agree with",
            )
        partner = self.signal_name(tbl["partner"], (*path, "partner"))
        partner_bus = None
        if "partner_bus" in tbl:
            partner_bus = tbl["partner_bus"]
            if (
                not isinstance(partner_bus, str)
                or not partner_bus
                or not partner_bus.isprintable()
                or len(partner_bus) > 64
            ):
                self.fail(
                    (*path, "partner_bus"),
                    f"{partner_bus!r} is not a bus name (1–64 printable characters)",
                )
        scale = self.number(tbl, (*path, "scale"), 1.0, -math.inf, math.inf)
        if scale == 0:
            self.fail((*path, "scale"), "must not be 0 (the partner would not matter)")
        offset = self.number(tbl, (*path, "offset"), 0.0, -math.inf, math.inf)
        tolerance = self.number(tbl, (*path, "tolerance"), 0.0, 0.0, math.inf)
        relative = self.number(tbl, (*path, "relative"), 0.0, 0.0, 10.0)
        if tolerance == 0 and relative == 0:
            self.fail(
                (*path, "tolerance"),
                "give tolerance (absolute) or relative (a share of the expected value), or "
                "both, > 0: two real signals never agree exactly",
            )
        if "max_age_ms" not in tbl:
            self.fail(
                (*path, "max_age_ms"),
                "is required: how old the partner's latest value may be, in ms",
            )
        max_age = self.number(tbl, (*path, "max_age_ms"), 0.0, 0.0, MAX_WINDOW_MS, open_lo=True)
        persistence = self.integer(tbl, (*path, "persistence"), 3, 1, 100_000)
        persistence_ms = self.number(tbl, (*path, "persistence_ms"), 0.0, 0.0, MAX_WINDOW_MS)
        return PlausibilityEntry(
            signal,
            partner,
            scale,
            offset,
            tolerance,
            relative,
            max_age,
            persistence,
            persistence_ms,
            partner_bus,
        )

    def counter_entry(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> CounterEntry:
        can_id = self.required_can_id(tbl, path)
        signal = self.optional_signal(tbl, path)
        step = self.integer(tbl, (*path, "max_step"), 1, 1, 1 << 16)
        return CounterEntry(can_id, signal, step)

    def replay_entry(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> ReplayEntry:
        can_id = self.required_can_id(tbl, path)
        signal = self.optional_signal(tbl, path)
        history = None
        if "history" in tbl:
            history = self.integer(tbl, (*path, "history"), 0, 1, 1 << 16)
        return ReplayEntry(can_id, signal, history)

    def checksum_entry(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> ChecksumEntry:
        from can_dbc.integrity import ALGORITHMS

        can_id = self.required_can_id(tbl, path)
        algorithm = None
        if "algorithm" in tbl:
            algorithm = tbl["algorithm"]
            if algorithm not in ALGORITHMS:
                self.fail(
                    (*path, "algorithm"),
                    f"{algorithm!r} is not one of {', '.join(ALGORITHMS)}",
                )
        return ChecksumEntry(can_id, algorithm)

    def secoc_entry(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> SecOcEntry:
        can_id = self.required_can_id(tbl, path)
        if "key" not in tbl:
            self.fail((*path, "key"), "is required: the key's id in the key file")
        key = tbl["key"]
        if not isinstance(key, str) or not key:
            self.fail((*path, "key"), "must be a non-empty string (a key id)")
        for required in ("data_id", "payload_bytes"):
            if required not in tbl:
                self.fail((*path, required), "is required")
        data_id = self.integer(tbl, (*path, "data_id"), 0, 0, 0xFFFF)
        payload = self.integer(tbl, (*path, "payload_bytes"), 0, 0, 64)
        fv_bits = self.integer(tbl, (*path, "freshness_bits"), 64, 1, 64)
        tx_bits = self.integer(tbl, (*path, "freshness_tx_bits"), min(8, fv_bits), 0, fv_bits)
        mac_bits = self.integer(tbl, (*path, "mac_bits"), 24, 1, 128)
        window = self.integer(tbl, (*path, "freshness_window"), 0, 0, (1 << 64) - 1)
        initial = None
        if "initial_freshness" in tbl:
            initial = self.integer(tbl, (*path, "initial_freshness"), 0, 0, (1 << fv_bits) - 1)
        try:
            profile = SecOcProfile(data_id, payload, fv_bits, tx_bits, mac_bits, window)
        except ValueError as e:
            self.fail((*path, "payload_bytes"), str(e))
        return SecOcEntry(can_id, key, profile, initial)

    # -- values -------------------------------------------------------------------------------

    def required(self, tbl: Mapping[str, Any], key: str) -> str:
        if key not in tbl:
            self.fail((key,), "is required")
        value = tbl[key]
        if not isinstance(value, str):
            self.fail((key,), f"must be a string, not {_kind(value)}")
        return value

    def integer(
        self, tbl: Mapping[str, Any], path: Sequence[str | int], default: int, lo: int, hi: int
    ) -> int:
        key = path[-1]
        if key not in tbl:
            return default
        value = tbl[str(key)]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a whole number, not {_kind(value)}")
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            self.fail(path, f"must be a whole number, not {value!r}")
        number = int(value)
        if not lo <= number <= hi:
            self.fail(path, f"{number} is out of range [{lo:,}, {hi:,}]")
        return number

    def number(
        self,
        tbl: Mapping[str, Any],
        path: Sequence[str | int],
        default: Any,
        lo: float,
        hi: float,
        *,
        open_lo: bool = False,
    ) -> Any:
        key = path[-1]
        if key not in tbl:
            return default
        value = tbl[str(key)]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a number, not {_kind(value)}")
        number = float(value)
        if not math.isfinite(number):
            self.fail(path, f"{value!r} is not a finite number")
        if number < lo or (open_lo and number <= lo) or number > hi:
            bound = f"> {lo:g}" if open_lo else f"≥ {lo:g}"
            limit = "" if math.isinf(hi) else f" and ≤ {hi:g}"
            self.fail(path, f"{value!r} must be {bound}{limit}")
        return number

    def boolean(self, tbl: Mapping[str, Any], path: Sequence[str | int], default: bool) -> bool:
        value = tbl.get(str(path[-1]), default)
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, not {_kind(value)}")
        return value

    def can_id(self, tbl: Mapping[str, Any], path: Sequence[str | int]) -> int:
        value = tbl[str(path[-1])]
        return self.can_id_value(value, path)

    def can_id_value(self, value: object, path: Sequence[str | int]) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be a CAN id (a number such as 0x7DF), not {_kind(value)}")
        if not 0 <= value <= MAX_CAN_ID:
            self.fail(path, f"{value} is not a CAN id (0 … 0x1FFFFFFF)")
        return value

    def required_can_id(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> int:
        if "can_id" not in tbl:
            self.fail((*path, "can_id"), "is required")
        return self.can_id(tbl, (*path, "can_id"))

    def can_ids(
        self, tbl: Mapping[str, Any], path: tuple[str, ...], *, allow_empty: bool
    ) -> list[int]:
        key = path[-1]
        if key not in tbl:
            self.fail(path, "is required: a list of CAN ids")
        raw = tbl[key]
        if not isinstance(raw, list):
            self.fail(path, f"must be a list of CAN ids, not {_kind(raw)}")
        if not raw and not allow_empty:
            self.fail(path, "must list at least one CAN id")
        if len(raw) > MAX_ENTRIES:
            self.fail(path, f"{len(raw)} ids; at most {MAX_ENTRIES}")
        ids: list[int] = []
        seen: set[int] = set()
        for j, value in enumerate(raw):
            can_id = self.can_id_value(value, (*path, j))
            if can_id in seen:
                self.fail((*path, j), f"0x{can_id:X} is listed twice")
            seen.add(can_id)
            ids.append(can_id)
        return ids

    def signal(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> str:
        if "signal" not in tbl:
            self.fail((*path, "signal"), "is required: MESSAGE.SIGNAL or SIGNAL")
        return self.signal_name(tbl["signal"], (*path, "signal"))

    def optional_signal(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> str | None:
        if "signal" not in tbl:
            return None
        return self.signal_name(tbl["signal"], (*path, "signal"))

    def signal_name(self, value: object, path: Sequence[str | int]) -> str:
        if not isinstance(value, str):
            self.fail(path, f"must be a signal name, not {_kind(value)}")
        if not _SIGNAL_RE.fullmatch(value):
            self.fail(path, f"{value!r} is not MESSAGE.SIGNAL or SIGNAL (identifiers)")
        return value

    def hex_bytes(self, value: object, path: Sequence[str | int]) -> bytes:
        if not isinstance(value, str):
            self.fail(path, f"must be a string of hex bytes, not {_kind(value)}")
        digits = _HEX_SEPARATORS.sub("", value)
        if not _HEX_RE.fullmatch(digits):
            self.fail(path, f"{value!r} is not whole bytes of hex digits")
        return bytes.fromhex(digits)

    def pattern(self, tbl: Mapping[str, Any], path: tuple[str | int, ...]) -> BytePattern:
        for key in ("mask", "value"):
            if key not in tbl:
                self.fail((*path, key), 'is required: hex bytes such as "FF 00"')
        mask = self.hex_bytes(tbl["mask"], (*path, "mask"))
        value = self.hex_bytes(tbl["value"], (*path, "value"))
        if not 1 <= len(mask) <= 64:
            self.fail((*path, "mask"), f"has {len(mask)} bytes; 1–64 expected")
        if len(value) != len(mask):
            self.fail((*path, "value"), f"has {len(value)} bytes, the mask {len(mask)}")
        if any(v & ~m for v, m in zip(value, mask, strict=True)):
            self.fail((*path, "value"), "sets bits that the mask does not cover")
        return BytePattern(mask, value)


_ENTRY_BUILDERS: Final[
    Mapping[str, Callable[[_Builder, Mapping[str, Any], tuple[str | int, ...]], Any]]
] = {
    "dlc": _Builder.dlc_entry,
    "timing": _Builder.timing_entry,
    "suspension": _Builder.suspension_entry,
    "payload": _Builder.payload_entry,
    "signal_range": _Builder.signal_range_entry,
    "signal_rate": _Builder.signal_rate_entry,
    "plausibility": _Builder.plausibility_entry,
    "counter": _Builder.counter_entry,
    "replay": _Builder.replay_entry,
    "checksum": _Builder.checksum_entry,
    "secoc": _Builder.secoc_entry,
}


# ---- writing -------------------------------------------------------------------------------


def format_rules(rules: RuleSet | Iterable[Rule], *, header: str = "") -> str:
    """*rules* as a rule file (TOML) that loads into an equal rule set.

    *header* lines become comments at the top. CAN ids are written in hex, entries one inline
    table per line; a rule set's ``revision`` is kept.
    """
    out: list[str] = []
    for line in header.splitlines():
        out.append(f"# {line}".rstrip())
    out.append(f"version = {FORMAT_VERSION}")
    if isinstance(rules, RuleSet) and rules.revision is not None:
        out.append(f"revision = {rules.revision}")
    for rule in rules:
        out.append("")
        out.append("[[rule]]")
        out.append(f"id = {_string(rule.id)}")
        out.append(f"kind = {_string(rule.kind)}")
        out.append(f"severity = {_string(rule.severity.label)}")
        out.append(f"description = {_string(rule.description)}")
        out.append(f"bus = {_string(rule.bus)}")
        if rule.event_id != DEFAULT_EVENT_IDS[rule.kind]:
            out.append(f"event_id = 0x{rule.event_id:04X}")
        if rule.sensor_id != DEFAULT_SENSOR_IDS[rule.kind]:
            out.append(f"sensor_id = {rule.sensor_id}")
        out.extend(_spec_lines(rule.spec))
    return "\n".join(out) + "\n"


def _spec_lines(spec: RuleSpec) -> list[str]:
    if isinstance(spec, AllowlistSpec):
        return _id_list("ids", sorted(spec.ids))
    if isinstance(spec, FloodSpec):
        lines = [f"window_ms = {_float(spec.window_ms)}", f"max_frames = {spec.max_frames}"]
        if spec.can_ids is not None:
            lines += _id_list("can_ids", sorted(spec.can_ids))
        if spec.max_id is not None:
            lines.append(f"max_id = {_hex_id(spec.max_id)}")
        if spec.share != DEFAULT_FLOOD_SHARE:
            lines.append(f"share = {_float(spec.share)}")
        return lines
    if isinstance(spec, UnknownBurstSpec):
        return [f"window_ms = {_float(spec.window_ms)}", f"max_ids = {spec.max_ids}"]
    if isinstance(spec, ContextSpec):
        lines = _id_list("can_ids", sorted(spec.can_ids))
        if spec.uds:
            lines.append("uds = [" + ", ".join(_string(p.hex(" ").upper()) for p in spec.uds) + "]")
        if spec.patterns:
            lines.append("patterns = [")
            lines += [f"  {{ {_pattern_fields(p)} }}," for p in spec.patterns]
            lines.append("]")
        lines.append(f"condition = {_string(spec.condition.text)}")
        return lines
    lines = []
    if isinstance(spec, TimingSpec):
        lines.append(f"window_periods = {spec.window_periods}")
    if isinstance(spec, PayloadSpec) and spec.forbid:
        lines.append("forbid = true")
    list_key = _LIST_KEY[spec.KIND]
    lines.append(f"{list_key} = [")
    lines += [f"  {{ {_entry_fields(entry)} }}," for entry in spec.entries]
    lines.append("]")
    return lines


def _entry_fields(entry: object) -> str:
    parts: list[str] = []
    if isinstance(entry, DlcEntry):
        dlcs = sorted(entry.dlcs)
        text = str(dlcs[0]) if len(dlcs) == 1 else "[" + ", ".join(map(str, dlcs)) + "]"
        parts = [f"can_id = {_hex_id(entry.can_id)}", f"dlc = {text}"]
    elif isinstance(entry, TimingEntry):
        parts = [
            f"can_id = {_hex_id(entry.can_id)}",
            f"period_ms = {_float(entry.period_ms)}",
            f"min_count = {entry.min_count}",
            f"max_count = {entry.max_count}",
        ]
    elif isinstance(entry, SuspensionEntry):
        parts = [
            f"can_id = {_hex_id(entry.can_id)}",
            f"max_silence_ms = {_float(entry.max_silence_ms)}",
        ]
    elif isinstance(entry, PayloadEntry):
        parts = [f"can_id = {_hex_id(entry.can_id)}", _pattern_fields(entry.pattern)]
    elif isinstance(entry, SignalRangeEntry):
        parts = [f"signal = {_string(entry.signal)}"]
        if entry.min is not None:
            parts.append(f"min = {_float(entry.min)}")
        if entry.max is not None:
            parts.append(f"max = {_float(entry.max)}")
    elif isinstance(entry, SignalRateEntry):
        parts = [
            f"signal = {_string(entry.signal)}",
            f"max_rate = {_float(entry.max_rate)}",
            f"max_step = {_float(entry.max_step)}",
        ]
    elif isinstance(entry, PlausibilityEntry):
        parts = [f"signal = {_string(entry.signal)}", f"partner = {_string(entry.partner)}"]
        if entry.partner_bus is not None:
            parts.append(f"partner_bus = {_string(entry.partner_bus)}")
        parts += [
            f"scale = {_float(entry.scale)}",
            f"offset = {_float(entry.offset)}",
            f"tolerance = {_float(entry.tolerance)}",
            f"relative = {_float(entry.relative)}",
            f"max_age_ms = {_float(entry.max_age_ms)}",
            f"persistence = {entry.persistence}",
            f"persistence_ms = {_float(entry.persistence_ms)}",
        ]
    elif isinstance(entry, CounterEntry):
        parts = [f"can_id = {_hex_id(entry.can_id)}"]
        if entry.signal is not None:
            parts.append(f"signal = {_string(entry.signal)}")
        parts.append(f"max_step = {entry.max_step}")
    elif isinstance(entry, ReplayEntry):
        parts = [f"can_id = {_hex_id(entry.can_id)}"]
        if entry.signal is not None:
            parts.append(f"signal = {_string(entry.signal)}")
        if entry.history is not None:
            parts.append(f"history = {entry.history}")
    elif isinstance(entry, ChecksumEntry):
        parts = [f"can_id = {_hex_id(entry.can_id)}"]
        if entry.algorithm is not None:
            parts.append(f"algorithm = {_string(entry.algorithm)}")
    elif isinstance(entry, SecOcEntry):
        p = entry.profile
        parts = [
            f"can_id = {_hex_id(entry.can_id)}",
            f"key = {_string(entry.key)}",
            f"data_id = 0x{p.data_id:04X}",
            f"payload_bytes = {p.payload_bytes}",
            f"freshness_bits = {p.freshness_bits}",
            f"freshness_tx_bits = {p.freshness_tx_bits}",
            f"mac_bits = {p.mac_bits}",
        ]
        if p.freshness_window:
            parts.append(f"freshness_window = {p.freshness_window}")
        if entry.initial_freshness is not None:
            parts.append(f"initial_freshness = {entry.initial_freshness}")
    return ", ".join(parts)


def _pattern_fields(pattern: BytePattern) -> str:
    mask = pattern.mask.hex(" ").upper()
    value = pattern.value.hex(" ").upper()
    return f"mask = {_string(mask)}, value = {_string(value)}"


def _id_list(key: str, ids: list[int]) -> list[str]:
    if len(ids) <= 8:
        return [f"{key} = [" + ", ".join(_hex_id(i) for i in ids) + "]"]
    lines = [f"{key} = ["]
    for start in range(0, len(ids), 8):
        lines.append("  " + ", ".join(_hex_id(i) for i in ids[start : start + 8]) + ",")
    lines.append("]")
    return lines


def _hex_id(can_id: int) -> str:
    """``0x0B4`` for 11-bit ids, ``0x18DAF110`` for 29-bit ones, as candump writes them."""
    return f"0x{can_id:03X}" if can_id <= 0x7FF else f"0x{can_id:08X}"


def _float(value: float) -> str:
    """A TOML float that reads back as exactly *value* (finite values only)."""
    text = repr(float(value))
    return text if ("." in text or "e" in text) else text + ".0"


def _string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for c in text:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c < " " or c == "\x7f":
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)
