"""Attacks from text: option names and values as the command line writes them.

One vocabulary serves ``tbox sim attack KIND … --rate 1000`` and ``tbox sim serve --attack
KIND:rate=1000,start=5``: :func:`build_attack` takes ``(name, text)`` pairs, converts each value
and builds the :mod:`sim.attacks` object; :func:`parse_attack_spec` reads the ``KIND[:NAME=VALUE,
…]`` form. Names are the attack's field names with ``-`` for ``_``; ``target-id`` names the target
id of every kind (repeatable where a kind takes several: ``replay``, ``suspension``).

Values: numbers as Python writes them; ids as ``0x7DF`` or decimal (``2015``); ``data`` as hex bytes
(``DEADBEEF``, ``DE:AD:BE:EF``); flags as ``yes``/``no`` (also ``true``/``false``, ``1``/``0``,
``on``/``off``). DBC databases resolve what needs them: the message of a spoofed or masqueraded
id (to forge its signals and keep its counter and checksum) and ``ecu=NODE`` of a suspension (the
ids that node sends). Every mistake is a :class:`~agent.errors.UsageError` naming the kind, the
option and the value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agent.errors import UsageError
from sim.attacks import ATTACK_KINDS, Attack

__all__ = [
    "build_attack",
    "kind_options",
    "parse_attack_spec",
    "parse_frame_id",
]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_MAX_EXTENDED_ID = 0x1FFFFFFF
# Options whose values accumulate when repeated (the others may be given once).
_LISTS = frozenset({"target_ids"})


def parse_frame_id(text: str, what: str) -> int:
    """A CAN id from ``0x7DF`` or ``2015``; *what* names it in the error."""
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a CAN id (write 0x7DF or 2015)") from None
    if not 0 <= value <= _MAX_EXTENDED_ID:
        raise UsageError(f"{what} {text!r} is not a CAN id: it does not fit in 29 bits")
    return value


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{what} {text!r} must be a finite number")
    return value


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a whole number") from None


def _bool(text: str, what: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise UsageError(f"{what} {text!r} is not yes or no")


def _hex(text: str, what: str) -> bytes:
    digits = text.strip()
    if digits.lower().startswith("0x"):
        digits = digits[2:]
    for sep in (":", " ", ".", "_", "-"):
        digits = digits.replace(sep, "")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not hex bytes (write DEADBEEF)") from None


def _text(text: str, what: str) -> str:
    if not text:
        raise UsageError(f"{what} must not be empty")
    return text


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "start": _float,
    "duration": _float,
    "seed": _int,
    "channel": _text,
    "target_id": parse_frame_id,
    "target_ids": parse_frame_id,
    "load": _float,
    "rate": _float,
    "data": _hex,
    "bitrate": _int,
    "extended": _bool,
    "id_min": parse_frame_id,
    "id_max": parse_frame_id,
    "dlc": _int,
    "signal": _text,
    "value": _float,
    "jitter": _float,
    "source_start": _float,
    "ecu": _text,
    "interval": _float,
    "gap": _float,
    "security_level": _int,
    "send_key": _bool,
    "padding": _int,
}


def _option_name(field_name: str) -> str:
    if field_name in ("target_id", "target_ids"):
        return "target-id"
    return field_name.replace("_", "-")


def _kind_class(kind: str) -> type[Attack]:
    cls = ATTACK_KINDS.get(kind)
    if cls is None:
        raise UsageError(f"unknown attack kind {kind!r} (kinds: {', '.join(ATTACK_KINDS)})")
    return cls


def _fields(cls: type[Attack]) -> dict[str, dataclasses.Field[Any]]:
    """Option name → dataclass field, for the fields a user can set."""
    return {
        _option_name(f.name): f for f in dataclasses.fields(cls) if f.init and f.name in _PARSERS
    }


def kind_options(kind: str) -> list[str]:
    """The option names *kind* takes (``target-id``, ``rate``, …)."""
    return list(_fields(_kind_class(kind)))


def _find_message(databases: Iterable[Any], frame_id: int) -> Any | None:
    for db in databases:
        try:
            return db.get_message_by_frame_id(frame_id)
        except KeyError:
            continue
    return None


def _ecu_ids(kind: str, databases: Sequence[Any], node: str) -> list[int]:
    ids = [m.frame_id for db in databases for m in db.messages if node in (m.senders or ())]
    if not ids:
        nodes = sorted({n for db in databases for m in db.messages for n in (m.senders or ())})
        known = f" (senders: {', '.join(nodes[:12])})" if nodes else " (give --dbc FILE)"
        raise UsageError(f"{kind}: no DBC message is sent by ECU {node!r}{known}")
    return sorted(set(ids))


def build_attack(
    kind: str, options: Iterable[tuple[str, str]], *, databases: Sequence[Any] = ()
) -> Attack:
    """The attack *kind* with *options* (``(name, text)`` pairs, names as :func:`kind_options`
    gives them); *databases* are cantools databases for forging and ``ecu``."""
    cls = _kind_class(kind)
    fields = _fields(cls)
    values: dict[str, Any] = {}
    for name, text in options:
        f = fields.get(name)
        if f is None:
            raise UsageError(f"{kind} takes no option {name!r} (its options: {', '.join(fields)})")
        what = f"{kind}: {name}"
        if f.name in _LISTS:
            parts = [p for p in text.split(",") if p.strip()] or [text]
            values.setdefault(f.name, []).extend(_PARSERS[f.name](p, what) for p in parts)
            continue
        if f.name in values:
            raise UsageError(f"{what} is given twice")
        if f.name == "target_id" and "," in text:
            raise UsageError(f"{what} {text!r}: {kind} takes one id")
        values[f.name] = _PARSERS[f.name](text, what)
    if "target_ids" in values:
        values["target_ids"] = tuple(dict.fromkeys(values["target_ids"]))
    ecu = values.get("ecu")
    if ecu is not None:
        extra = _ecu_ids(kind, databases, ecu)
        values["target_ids"] = tuple(dict.fromkeys([*values.get("target_ids", ()), *extra]))
    field_names = {f.name for f in dataclasses.fields(cls)}
    if "message" in field_names:
        if "target_id" not in values:
            raise UsageError(f"{kind} needs the id to forge: give target-id")
        values["message"] = _find_message(databases, values["target_id"])
    if "target_ids" in field_names and "target_ids" not in values:
        default = next(f for f in dataclasses.fields(cls) if f.name == "target_ids").default
        if default is dataclasses.MISSING:
            raise UsageError(f"{kind} needs the ids to act on: give target-id (or ecu=NODE)")
    return cls(**values)


def parse_attack_spec(text: str, *, databases: Sequence[Any] = ()) -> Attack:
    """An attack from ``KIND[:NAME=VALUE,…]``, e.g. ``masquerade:target-id=0xB0,start=5``."""
    kind, _, rest = text.partition(":")
    kind = kind.strip()
    pairs: list[tuple[str, str]] = []
    for item in rest.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(
                f"--attack {text!r}: write KIND:NAME=VALUE,…, e.g. flooding:start=5,rate=1000"
            )
        pairs.append((name.strip(), value.strip()))
    _kind_class(kind)
    return build_attack(kind, pairs, databases=databases)
