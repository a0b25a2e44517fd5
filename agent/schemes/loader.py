"""Loading collection schemes: TOML files on the vehicle, decoded payloads from the command channel.

A scheme document holds any number of ``[[scheme]]`` tables (none is valid: an empty set)::

    version = 1                                   # optional; the only version so far

    [[scheme]]                                    # every 100 ms: speed and engine speed
    id = "drive-10hz"                             # required, unique: 1–64 of A-Z a-z 0-9 _ . : -
    kind = "periodic"                             # required: "periodic", "on_change", "condition"
    priority = 5                                  # 0 (most urgent) … 9; default 5
    start = 2025-06-01T00:00:00Z                  # optional: TOML date-time with an offset,
    expiry = "2025-12-31T23:59:59+01:00"          #   ISO 8601 string, or epoch seconds;
                                                  #   the scheme acts in [start, expiry) of bus time
    description = "speed profile"                 # free text
    period_ms = 100                               # periodic: required, 10 … 86,400,000
    signals = ["SPEED.SPEED", "can0:ENGINE_RPM.RPM"]  # periodic, on_change: required, 1–256 names
    min_sample_period_ms = 500                    # any kind; see below

    [[scheme]]                                    # gear changes; speed when it moves by 2 km/h
    id = "changes"
    kind = "on_change"
    signals = ["GEAR_PACKET.GEAR", "SPEED.SPEED"]
    deadband = { "SPEED.SPEED" = 2.0 }            # absolute; default 0 = any change

    [[scheme]]                                    # crossing 60 km/h: 5 s before to 2 s after
    id = "over-60"
    kind = "condition"
    priority = 1
    condition = 'SPEED.SPEED > 60 and prev(SPEED.SPEED) <= 60'   # see agent.schemes.expression
    rising_edge_only = true                       # default true: trigger on false → true only
    min_interval_ms = 10000                       # default 0: gap between two triggers
    capture = ["SPEED.SPEED", "GAS_PEDAL.GAS_PEDAL"]   # default: the signals the condition reads
    pre_ms = 5000                                 # 0 … 60,000 (default 0)
    post_ms = 2000                                # 0 … 60,000 (default 0)

    [[scheme]]                                    # entering the depot (GNSS position)
    id = "at-depot"
    kind = "condition"
    condition = 'inside("depot")'

    [[geofence]]                                  # areas for inside(); see agent.schemes.geofence
    id = "depot"
    circle = { lat = 48.1374, lon = 11.5755, radius_m = 300 }

Keys by kind: every scheme takes ``id``, ``kind``, ``priority``, ``start``, ``expiry``,
``description`` and ``min_sample_period_ms``; ``periodic`` adds ``period_ms`` and ``signals``;
``on_change`` adds ``signals`` and ``deadband``; ``condition`` adds ``condition``,
``rising_edge_only``, ``min_interval_ms``, ``capture``, ``pre_ms`` and ``post_ms``. Any other key
is an error.

* Signal names are ``SIGNAL``, ``MESSAGE.SIGNAL``, ``bus:MESSAGE.SIGNAL`` or ``bus:SIGNAL`` (how
  they match decoded frames: :mod:`agent.schemes.model`).
* ``deadband`` is a number for every signal or a table by signal name; values ≥ 0. A value-table
  name (a string) is reported on any change.
* ``min_sample_period_ms`` (whole ms, 0 … 86,400,000) is a number for every recorded signal or a
  table by signal name: of a signal's samples the scheme keeps at most one per period (periodic
  and on-change schemes across records, condition schemes within each capture).
* Times: a TOML offset date-time, an ISO 8601 string with an offset (``Z`` or ``+02:00``) or a
  number of epoch seconds. Times without an offset are rejected: a vehicle's clock zone is not
  the fleet operator's. ``expiry`` must be after ``start``.
* Integers given as integral floats (``100.0``, as JSON may carry them) are accepted.

Errors are :class:`~agent.schemes.errors.SchemeError` naming the source, the line (TOML syntax
errors from tomllib; other errors found by scanning the text for the key), the key
(``scheme[2].period_ms``) and the problem; a condition's error adds the column in the
expression: ``schemes.toml:14: scheme[2].condition: col 14: unknown function 'foo' (…)``.

:func:`parse_scheme_document` validates the same structure arriving as a decoded command payload
(JSON or protobuf turned into dicts and lists): errors then name keys but no lines.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, NoReturn

from agent.errors import describe_toml_error
from agent.errors import kind_of_value as _kind
from agent.schemes.errors import ExpressionError, SchemeError
from agent.schemes.expression import Expression, parse_expression
from agent.schemes.geofence import Geofence, GeofenceError, parse_geofence
from agent.schemes.model import (
    MAX_CAPTURE_MS,
    MAX_PERIOD_MS,
    MIN_PERIOD_MS,
    Condition,
    OnChange,
    Periodic,
    Scheme,
    SignalRef,
    SignalSpec,
)
from agent.toml_lines import line_in_value, line_of

__all__ = [
    "FORMAT_VERSION",
    "MAX_SCHEMES",
    "MAX_SIGNALS",
    "load_schemes",
    "parse_scheme_document",
    "parse_schemes",
]

#: The document format's version (``version = 1``).
FORMAT_VERSION: Final = 1
#: Most schemes in one document, and most signals in one scheme's list.
MAX_SCHEMES: Final = 256
MAX_SIGNALS: Final = 256
#: Most geofences in one document (each of at most geofence.MAX_VERTICES vertices).
MAX_GEOFENCES: Final = 64

KINDS: Final = ("periodic", "on_change", "condition")
_COMMON_KEYS: Final = (
    "id",
    "kind",
    "priority",
    "start",
    "expiry",
    "description",
    "min_sample_period_ms",
)
_KIND_KEYS: Final = {
    "periodic": ("period_ms", "signals"),
    "on_change": ("signals", "deadband"),
    "condition": (
        "condition",
        "rising_edge_only",
        "min_interval_ms",
        "capture",
        "pre_ms",
        "post_ms",
    ),
}
_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def load_schemes(path: str | os.PathLike[str]) -> tuple[Scheme, ...]:
    """Load and validate the scheme file at *path*; raises :class:`SchemeError`."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemeError(name, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SchemeError(name, None, f"cannot read the file: {e}") from None
    return parse_schemes(text, source=name)


def parse_schemes(text: str, source: str = "<string>") -> tuple[Scheme, ...]:
    """Parse and validate scheme TOML *text*; *source* names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem, line = describe_toml_error(e, text)
        raise SchemeError(source, None, f"TOML syntax error: {problem}", line=line) from None
    return _Builder(text, source).document(data)


def parse_scheme_document(data: Mapping[str, Any], source: str) -> tuple[Scheme, ...]:
    """Validate a scheme document that arrived decoded (a command payload) into schemes.

    *data* has the TOML file's structure: ``{"version": 1, "scheme": [{...}, ...]}``, with times
    as epoch seconds or ISO 8601 strings. Raises :class:`SchemeError` naming *source* and the key.
    """
    return _Builder(None, source).document(data)


class _Builder:
    """Validates one parsed document and builds the frozen schemes, naming keys in errors."""

    def __init__(self, text: str | None, source: str) -> None:
        self.text = text
        self.source = source

    # -- errors -------------------------------------------------------------------------------

    def fail(
        self,
        index: int | None,
        key: str | None,
        problem: str,
        *,
        hint: str | None = None,
        nth: int = 1,
        table: str = "scheme",
    ) -> NoReturn:
        if index is None:
            path = key
        else:
            path = f"{table}[{index}]" if key is None else f"{table}[{index}].{key}"
        line = None if self.text is None else _locate(self.text, index, key, hint, nth, table)
        raise SchemeError(self.source, path, problem, line=line)

    # -- the document -------------------------------------------------------------------------

    def document(self, data: object) -> tuple[Scheme, ...]:
        if not isinstance(data, Mapping):
            raise SchemeError(self.source, None, f"must be a table, not {_kind(data)}")
        for key in data:
            if key not in ("version", "scheme", "geofence"):
                self.fail(
                    None, str(key), "unknown key (expected one of: version, scheme, geofence)"
                )
        if "version" in data:
            version = data["version"]
            if isinstance(version, bool) or version != FORMAT_VERSION:
                self.fail(
                    None, "version", f"{version!r} is not supported (expected {FORMAT_VERSION})"
                )
        raw = data.get("scheme", [])
        if not isinstance(raw, list):
            self.fail(None, "scheme", f"must be an array of tables ([[scheme]]), not {_kind(raw)}")
        if len(raw) > MAX_SCHEMES:
            self.fail(None, "scheme", f"{len(raw)} schemes; at most {MAX_SCHEMES} in one document")
        self.geofences = self.geofence_tables(data.get("geofence", []))
        schemes: list[Scheme] = []
        ids: dict[str, int] = {}
        for index, item in enumerate(raw):
            scheme = self.scheme(index, item)
            if scheme.id in ids:
                self.fail(
                    index, "id", f"{scheme.id!r} is already the id of scheme[{ids[scheme.id]}]"
                )
            ids[scheme.id] = index
            schemes.append(scheme)
        return tuple(schemes)

    def geofence_tables(self, raw: object) -> dict[str, Geofence]:
        if not isinstance(raw, list):
            self.fail(
                None, "geofence", f"must be an array of tables ([[geofence]]), not {_kind(raw)}"
            )
        if len(raw) > MAX_GEOFENCES:
            self.fail(None, "geofence", f"{len(raw)} geofences; at most {MAX_GEOFENCES}")
        fences: dict[str, Geofence] = {}
        for index, item in enumerate(raw):
            try:
                fence = parse_geofence(item)
            except GeofenceError as e:
                # "polygon[3]" or "circle.lat": located by the line of "polygon" or "circle",
                # the full key named in the message.
                key = None if e.key is None else re.split(r"[.\[]", e.key, maxsplit=1)[0]
                problem = e.problem if e.key == key else f"{e.key}: {e.problem}"
                self.fail(index, key, problem, table="geofence")
            if fence.id in fences:
                self.fail(index, "id", f"{fence.id!r} is declared twice", table="geofence")
            fences[fence.id] = fence
        return fences

    def scheme(self, i: int, tbl: object) -> Scheme:
        if not isinstance(tbl, Mapping):
            self.fail(i, None, f"must be a table, not {_kind(tbl)}")
        if "kind" not in tbl:
            self.fail(i, "kind", f"is required: one of {', '.join(map(repr, KINDS))}")
        kind = tbl["kind"]
        if kind not in KINDS:
            self.fail(i, "kind", f"{kind!r} is not one of {', '.join(map(repr, KINDS))}")
        allowed = _COMMON_KEYS + _KIND_KEYS[kind]
        for key in tbl:
            if key not in allowed:
                self.fail(
                    i,
                    str(key),
                    f"unknown key for a scheme of kind {kind!r} "
                    f"(expected one of: {', '.join(allowed)})",
                )
        if "id" not in tbl:
            self.fail(i, "id", "is required")
        scheme_id = tbl["id"]
        if not isinstance(scheme_id, str):
            self.fail(i, "id", f"must be a string, not {_kind(scheme_id)}")
        if not _ID_RE.fullmatch(scheme_id):
            self.fail(i, "id", f"{scheme_id!r} must be 1–64 characters of A-Z a-z 0-9 _ . : -")
        priority = self.integer(i, tbl, "priority", 5, 0, 9)
        start = self.time(i, tbl, "start")
        expiry = self.time(i, tbl, "expiry")
        if start is not None and expiry is not None and expiry <= start:
            self.fail(i, "expiry", "must be after start")
        description = tbl.get("description", "")
        if not isinstance(description, str):
            self.fail(i, "description", f"must be a string, not {_kind(description)}")

        collection: Periodic | OnChange | Condition
        if kind == "periodic":
            if "period_ms" not in tbl:
                self.fail(i, "period_ms", "is required")
            period = self.integer(i, tbl, "period_ms", 0, MIN_PERIOD_MS, MAX_PERIOD_MS)
            names = self.names(i, tbl, "signals", required=True)
            collection = Periodic(period, self.specs(i, tbl, names))
        elif kind == "on_change":
            names = self.names(i, tbl, "signals", required=True)
            collection = OnChange(self.specs(i, tbl, names))
        else:
            expression = self.expression(i, tbl)
            if "capture" in tbl:
                names = self.names(i, tbl, "capture", required=True)
            else:
                names = sorted(expression.signals)
            unknown = sorted(expression.zones - self.geofences.keys())
            if unknown:
                declared = ", ".join(sorted(self.geofences)) or "none"
                self.fail(
                    i,
                    "condition",
                    f"inside({unknown[0]!r}): no such geofence (declared: {declared}); "
                    "declare it in a [[geofence]] table",
                )
            collection = Condition(
                geofences=tuple(self.geofences[z] for z in sorted(expression.zones)),
                expression=expression,
                capture=self.specs(i, tbl, names),
                rising_edge_only=self.boolean(i, tbl, "rising_edge_only", True),
                min_interval_ms=self.integer(i, tbl, "min_interval_ms", 0, 0, MAX_PERIOD_MS),
                pre_ms=self.integer(i, tbl, "pre_ms", 0, 0, MAX_CAPTURE_MS),
                post_ms=self.integer(i, tbl, "post_ms", 0, 0, MAX_CAPTURE_MS),
            )
        try:
            return Scheme(
                id=scheme_id,
                collection=collection,
                priority=priority,
                start=start,
                expiry=expiry,
                description=description,
            )
        except ValueError as e:  # pragma: no cover - everything is checked above
            self.fail(i, None, str(e))

    # -- values -------------------------------------------------------------------------------

    def integer(
        self, i: int, tbl: Mapping[str, Any], key: str, default: int, lo: int, hi: int
    ) -> int:
        if key not in tbl:
            return default
        value = tbl[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(i, key, f"must be a whole number, not {_kind(value)}")
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            self.fail(i, key, f"must be a whole number, not {value!r}")
        number = int(value)
        if not lo <= number <= hi:
            self.fail(i, key, f"{number} is out of range [{lo:,}, {hi:,}]")
        return number

    def boolean(self, i: int, tbl: Mapping[str, Any], key: str, default: bool) -> bool:
        value = tbl.get(key, default)
        if not isinstance(value, bool):
            self.fail(i, key, f"must be true or false, not {_kind(value)}")
        return value

    def time(self, i: int, tbl: Mapping[str, Any], key: str) -> float | None:
        if key not in tbl:
            return None
        value = tbl[key]
        example = '(e.g. 2025-06-01T08:00:00Z or "2025-06-01T10:00:00+02:00")'
        if isinstance(value, bool):
            self.fail(i, key, f"must be a date-time or epoch seconds, not {_kind(value)}")
        if isinstance(value, int | float):
            if not (math.isfinite(value) and value >= 0):
                self.fail(i, key, f"{value!r} is not a time (epoch seconds must be ≥ 0)")
            return float(value)
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError:
                self.fail(i, key, f"{value!r} is not an ISO 8601 date-time {example}")
        if isinstance(value, dt.datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                self.fail(
                    i, key, f"needs a UTC offset (Z or ±hh:mm): {value.isoformat()} {example}"
                )
            return value.timestamp()
        if isinstance(value, dt.date | dt.time):
            self.fail(i, key, f"needs a date, a time of day and an offset {example}")
        self.fail(i, key, f"must be a date-time or epoch seconds, not {_kind(value)}")

    def names(self, i: int, tbl: Mapping[str, Any], key: str, *, required: bool) -> list[str]:
        if key not in tbl:
            if required:
                self.fail(i, key, "is required: a list of signal names")
            return []
        value = tbl[key]
        if not isinstance(value, list):
            self.fail(i, key, f"must be a list of signal names, not {_kind(value)}")
        if not value:
            self.fail(i, key, "must list at least one signal")
        if len(value) > MAX_SIGNALS:
            self.fail(i, key, f"{len(value)} signals; at most {MAX_SIGNALS}")
        seen: set[str] = set()
        for item in value:
            if not isinstance(item, str):
                self.fail(i, key, f"must be a list of signal names, but holds {_kind(item)}")
            self.signal_name(i, key, item)
            if item in seen:
                self.fail(i, key, f"{item!r} is listed twice", hint=item, nth=2)
            seen.add(item)
        return list(value)

    def signal_name(self, i: int, key: str, name: str) -> None:
        try:
            SignalRef.parse(name)
        except ValueError as e:
            self.fail(i, key, str(e), hint=name or None)

    def per_signal(
        self, i: int, tbl: Mapping[str, Any], key: str, names: list[str], *, whole: bool
    ) -> dict[str, float]:
        """A number for every signal, or a table by signal name; checked ≥ 0 and finite."""
        if key not in tbl:
            return {}
        value = tbl[key]
        if isinstance(value, Mapping):
            items = list(value.items())
            for name, _ in items:
                if name not in names:
                    self.fail(
                        i,
                        key,
                        f"{name!r} is not one of this scheme's signals ({', '.join(names)})",
                        hint=str(name),
                    )
        else:
            items = [(name, value) for name in names]
        result: dict[str, float] = {}
        for name, number in items:
            where = f"{key} of {name!r}" if isinstance(value, Mapping) else key
            if isinstance(number, bool) or not isinstance(number, int | float):
                what = "a whole number of ms" if whole else "a number"
                self.fail(
                    i,
                    key,
                    f"{where} must be {what} or a table by signal name, not {_kind(number)}",
                    hint=str(name) if isinstance(value, Mapping) else None,
                )
            if not math.isfinite(number) or number < 0:
                self.fail(i, key, f"{where}: {number!r} must be ≥ 0")
            if whole and not (float(number).is_integer() and number <= MAX_PERIOD_MS):
                self.fail(
                    i, key, f"{where}: {number!r} must be whole ms, at most {MAX_PERIOD_MS:,}"
                )
            result[str(name)] = float(number)
        return result

    def specs(self, i: int, tbl: Mapping[str, Any], names: list[str]) -> tuple[SignalSpec, ...]:
        deadbands = self.per_signal(i, tbl, "deadband", names, whole=False)
        periods = self.per_signal(i, tbl, "min_sample_period_ms", names, whole=True)
        return tuple(
            SignalSpec(
                name,
                deadband=deadbands.get(name, 0.0),
                min_sample_period_ms=int(periods.get(name, 0)),
            )
            for name in names
        )

    def expression(self, i: int, tbl: Mapping[str, Any]) -> Expression:
        if "condition" not in tbl:
            self.fail(i, "condition", "is required: an expression such as 'SPEED.SPEED > 60'")
        text = tbl["condition"]
        if not isinstance(text, str):
            self.fail(i, "condition", f"must be a string, not {_kind(text)}")
        try:
            return parse_expression(text)
        except ExpressionError as e:
            self.fail(i, "condition", str(e))


def _locate(
    text: str,
    index: int | None,
    key: str | None,
    hint: str | None,
    nth: int = 1,
    table: str = "scheme",
) -> int | None:
    """Best-effort 1-based line of ``scheme[index].key`` (or top-level ``key``) in TOML *text*.

    The line assigning *key* in the scheme's table (or its ``[scheme.key]`` sub-table), else the
    scheme's ``[[scheme]]`` line. With *hint* (an offending list element or table key), the line
    of its *nth* occurrence in the value is preferred, for values spread over several lines.
    """
    if index is None:
        if key is None:
            return None
        path: tuple[str | int, ...] = (key,)
    else:
        path = (table, index) if key is None else (table, index, key)
    if hint:
        # The hint as a whole name, not part of a longer one ("A" is not in "GAS.A_B").
        pattern = re.compile(rf"(?<![\w.:]){re.escape(hint)}(?![\w.:])")
        line = line_in_value(text, path, pattern, nth)
        if line is not None:
            return line
    # Never a document-level line for a scheme's key: only the scheme's own table counts.
    return line_of(text, path, min_depth=1 if index is None else 2)
