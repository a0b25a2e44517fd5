"""A compiled CAN signal decoder that returns exactly what cantools returns, about 2-3x faster.

:class:`Decoder` is built once from loaded cantools ``Database`` objects for the messages and
signals someone subscribed to. For every message it generates the source of one small Python
function and compiles it once; :meth:`Decoder.decode` is then a dict lookup and one call. The
function gets each raw value the cheapest way measured: a payload byte (``data[3]``, shifted
and masked if the field is smaller), one bitstruct C call unpacking all remaining fields of a
byte order into locals when there are enough of them, otherwise a shift and a mask of the payload
as one int (``int.from_bytes``; 64-bit words for CAN FD payloads, as shifting a 512-bit int is
slow); then the sign fix and the scaling, written out per signal.

Parity with cantools 45.1 (``Database.decode_message(frame_id, data, decode_choices=...,
scaling=True)``) is the contract, checked by the tests value for value and type for type:

* values are ``raw * scale + offset`` computed with the very same Python numbers, so an integral
  scale and offset keep ints ints and anything else gives the same float, bit for bit;
* big endian ("Motorola") signals use cantools' start bit convention (the DBC start bit is the
  most significant bit, counted in sawtooth order), little endian ("Intel") ones the least
  significant bit; signed signals are two's complement; IEEE floats (16/32/64 bit) are unpacked
  from the same bits;
* multiplexing, nested multiplexers included, follows cantools' signal tree: the selector value
  (scaled, or the choice's number when choices are decoded) picks the child signals, and a
  selector value with no child signals raises :class:`~can_dbc.errors.DecodeError` as cantools
  raises its own; a selector whose value table names a value with no signals selects nothing;
* with ``decode_choices=True`` a raw value found in the signal's value table gives the choice's
  name as a plain ``str`` (cantools gives a ``NamedSignalValue`` that compares equal to it and
  whose ``str()`` is the same name); other values are scaled as usual;
* a frame shorter than the message raises :class:`~can_dbc.errors.DecodeError` naming the id, the
  message and both lengths; a longer frame is decoded from its first ``length`` bytes and the
  rest is ignored (cantools' default ``allow_excess=True``), so CAN FD padding does no harm;
* signals that overlap one another (or lie past the payload) in one multiplexer branch cannot be
  unpacked by cantools, which raises "unpacking failed" for every frame of such a message. We
  raise :class:`~can_dbc.errors.DecodeError` as well, naming the signals;
  ``decode_overlapping=True`` instead decodes each signal from its own bits, which is what such
  DBCs usually mean (alternative views of the same bits, or implicit multiplexing).

The generated source is built only from identifiers and numbers produced here: names from the DBC
(message, signal and choice names) reach the function as closure constants, never as source
text, so a hostile DBC cannot inject code.
"""

from __future__ import annotations

import builtins
import importlib
import logging
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from can_dbc.errors import DbcError, DecodeError

__all__ = ["Decoded", "Decoder"]

_LOG = logging.getLogger(__name__)

SignalValue = int | float | str
_DecodeFn = Callable[[bytes | bytearray], "Decoded"]

_STD_MASK = 0x7FF
_EXT_MASK = 0x1FFFFFFF
# Value tables of signals up to this many bits become one tuple indexed by the raw value
# (256 entries at most), replacing a dict lookup and a conditional per frame.
_TABLE_MAX_BITS = 8
_FLOAT_FORMATS = {16: "e", 32: "f", 64: "d"}

# bitstruct's C extension (a cantools dependency) unpacks many fields in one call, ~3 ns each
# after a fixed ~110 ns; a shift and a mask in Python cost ~40 ns per field (measured, CPython
# 3.11). Without the extension (a platform with no wheel) everything is shifts and masks.
try:
    _bitstruct_c: Any = importlib.import_module("bitstruct.c")
except ImportError:  # pragma: no cover - depends on the platform
    _bitstruct_c = None
_USE_BITSTRUCT = _bitstruct_c is not None
# Rough costs (ns) deciding per byte order and branch whether one bitstruct call beats shifts.
_COST_FROM_BYTES, _COST_SHIFT, _COST_SIGN, _COST_FLOAT = 60, 40, 30, 120
_COST_UNPACK, _COST_REVERSE, _COST_FIELD = 110, 45, 5


class Decoded(NamedTuple):
    """One decoded frame: the message's name and its signals' physical values."""

    message: str
    signals: dict[str, SignalValue]


# --------------------------------------------------------------------------------------------
# The message model the code generator works on: cantools' multiplexing tree with signal objects.


@dataclass
class _Node:
    """Signals decoded together: the message's root signals, or one multiplexer branch."""

    signals: list[Any]
    # multiplexer signal name -> selector value -> child branch (cantools' ``signal_tree``)
    muxes: dict[str, dict[int, _Node]] = field(default_factory=dict)


def _node_from_tree(message: Any, tree: list[Any]) -> _Node:
    node = _Node(signals=[])
    for element in tree:
        if isinstance(element, str):
            node.signals.append(message.get_signal_by_name(element))
            continue
        for mux_name, branches in element.items():
            node.signals.append(message.get_signal_by_name(mux_name))
            node.muxes[mux_name] = {
                int(value): _node_from_tree(message, subtree) for value, subtree in branches.items()
            }
    return node


def _network_start(signal: Any) -> int:
    """Big endian start bit in network order (0 = most significant bit of byte 0)."""
    start: int = signal.start
    return 8 * (start // 8) + (7 - start % 8)


def _bit_mask(signal: Any) -> int:
    """The payload bits a signal covers, as bit ``8 * byte + bit`` (bit 0 = least significant)."""
    if signal.byte_order == "little_endian":
        return ((1 << int(signal.length)) - 1) << int(signal.start)
    mask = 0
    for n in range(_network_start(signal), _network_start(signal) + signal.length):
        mask |= 1 << (8 * (n // 8) + 7 - n % 8)
    return mask


def _cantools_can_unpack(signals: Sequence[Any], nbits: int) -> bool:
    """Whether cantools' bitstruct formats for these signals fit the payload.

    cantools lays big endian signals out sorted by network start bit and little endian ones in
    reverse list order, padding the gaps; overlapping (or unsorted little endian) signals push the
    format past the payload and cantools then raises on every frame. This replays that layout.
    """
    actual = nominal = 0
    for s in sorted((s for s in signals if s.byte_order == "big_endian"), key=_network_start):
        actual += max(0, _network_start(s) - nominal) + s.length
        nominal = _network_start(s) + s.length
    if actual + max(0, nbits - nominal) > nbits:
        return False
    actual, nominal = 0, nbits
    for s in [s for s in signals if s.byte_order == "little_endian"][::-1]:
        actual += max(0, nominal - (s.start + s.length)) + s.length
        nominal = s.start
    return actual + max(0, nominal) <= nbits


def _layout_problem(signals: Sequence[Any], nbits: int, decode_overlapping: bool) -> str | None:
    """Why this branch cannot be decoded, or None when it can."""
    for s in signals:
        if s.length <= 0:
            return f"signal {s.name} has length {s.length}"
        if s.is_float and s.length not in _FLOAT_FORMATS:
            return f"float signal {s.name} has {s.length} bits (16, 32 or 64 expected)"
        if s.byte_order == "little_endian":
            outside = s.start < 0 or s.start + s.length > nbits
        else:
            outside = _network_start(s) < 0 or _network_start(s) + s.length > nbits
        if outside:
            return f"signal {s.name} lies outside the {nbits // 8}-byte payload"
    if decode_overlapping or _cantools_can_unpack(signals, nbits):
        return None
    seen: list[tuple[Any, int]] = []
    for s in signals:
        mask = _bit_mask(s)
        for other, other_mask in seen:
            if mask & other_mask:
                return (
                    f"signals {other.name} and {s.name} overlap (cantools cannot unpack this "
                    f"layout either; decode_overlapping=True decodes each from its own bits)"
                )
        seen.append((s, mask))
    return "little endian signals are not sorted by start bit (cantools cannot unpack them)"


# --------------------------------------------------------------------------------------------
# Code generation.


def _cantools_conversions() -> tuple[type[Any], type[Any], type[Any], Any]:
    from cantools.database.conversion import (
        BaseConversion,
        IdentityConversion,
        LinearConversion,
        LinearIntegerConversion,
    )

    return IdentityConversion, LinearIntegerConversion, LinearConversion, BaseConversion


class _MessageCompiler:
    """Generates and compiles the decode function of one message.

    Every value the generated code needs that is not a plain number we computed (signal names,
    value tables, the message name, helpers) becomes a closure constant ``_c<n>``; numbers go in
    as literals only when they are exact ``int``/finite ``float`` objects whose ``repr`` reads
    back identically.
    """

    def __init__(
        self,
        message: Any,
        wanted: frozenset[str] | None,
        decode_choices: bool,
        decode_overlapping: bool,
    ) -> None:
        self.message = message
        self.wanted = wanted
        self.decode_choices = decode_choices
        self.decode_overlapping = decode_overlapping
        self.nbytes: int = message.length
        self.nbits = 8 * self.nbytes
        self.label = f"CAN id 0x{message.frame_id:X} ({message.name})"
        self.consts: list[object] = []
        # What the function being generated unpacks from `data` first: variable name(s) ->
        # the statement computing them (the whole payload as one int, or 8-byte windows).
        self.sources: dict[str, str] = {}
        # Raw value expressions decided per branch (bitstruct locals), by id(signal).
        self.planned: dict[int, str] = {}
        self.may_raise_arith = False  # int() of a float selector/raw value can raise
        self.counter = 0
        self.defs: list[str] = []  # branch functions and dispatch tables, at factory level
        (
            self.identity_cls,
            self.linear_int_cls,
            self.linear_cls,
            self.base_conversion,
        ) = _cantools_conversions()

    # ---- small helpers --------------------------------------------------------------------

    def const(self, value: object) -> str:
        self.consts.append(value)
        return f"_c{len(self.consts) - 1}"

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def number(self, value: object) -> str:
        """A literal for exact ints and finite floats; anything else is a closure constant."""
        if type(value) is int or (type(value) is float and math.isfinite(value)):
            return f"({value!r})"
        return self.const(value)

    def fail(self, text: str) -> Callable[[], None]:
        label = self.label

        def raise_error() -> None:
            raise DecodeError(f"{label}: {text}")

        return raise_error

    # ---- per signal expressions -----------------------------------------------------------

    @staticmethod
    def whole_byte(s: Any) -> bool:
        first_bit = s.start if s.byte_order == "little_endian" else _network_start(s)
        return bool(s.length == 8 and first_bit % 8 == 0)

    def plan_unpack(self, signals: list[Any]) -> None:
        """Unpack fields with bitstruct where one call is cheaper than shifting each field.

        Formats list the fields in payload order with padding between them: big endian fields
        by network bit over ``data``, little endian ones over ``data[::-1]`` (cantools' trick).
        """
        if not _USE_BITSTRUCT:
            return
        fields = [
            s
            for s in signals
            if s.length <= 64
            and (
                s.length in _FLOAT_FORMATS if s.is_float else not self.whole_byte(s) or s.is_signed
            )
        ]
        union, total = 0, 0
        for s in fields:
            union |= _bit_mask(s)
            total += s.length
        if union.bit_count() != total:  # overlapping fields (decode_overlapping=True)
            return
        for little in (False, True):
            group = [s for s in fields if (s.byte_order == "little_endian") == little]
            shifting = _COST_FROM_BYTES + sum(
                _COST_FLOAT if s.is_float else _COST_SHIFT + _COST_SIGN * s.is_signed for s in group
            )
            if not group or _COST_UNPACK + _COST_REVERSE * little + _COST_FIELD * len(group) >= (
                shifting
            ):
                continue
            if little:  # position in the reversed payload, most significant bit first
                placed = [(self.nbits - s.start - s.length, s) for s in group]
            else:
                placed = [(_network_start(s), s) for s in group]
            placed.sort(key=lambda item: item[0])
            fmt, cursor, names = "", 0, []
            for position, s in placed:
                if position > cursor:
                    fmt += f"p{position - cursor}"
                fmt += ("f" if s.is_float else "s" if s.is_signed else "u") + str(s.length)
                cursor = position + s.length
                names.append(self.fresh("u"))
                self.planned[id(s)] = names[-1]
            unpack = _bitstruct_c.compile(fmt).unpack
            data = "data[::-1]" if little else "data"
            self.sources[names[0]] = f"({', '.join(names)},) = {self.const(unpack)}({data})"

    def raw_int(self, s: Any) -> str:
        """Expression for the signal's raw bits as an unsigned int."""
        length: int = s.length
        little = s.byte_order == "little_endian"
        first_bit = int(s.start) if little else _network_start(s)
        first_byte, end_byte = first_bit // 8, (first_bit + length - 1) // 8 + 1
        window = self.window(first_byte, end_byte)
        if end_byte == first_byte + 1:
            # Within one byte: indexing the payload beats converting all of it to an int.
            var, low_bit, width = f"data[{first_byte}]", 8 * first_byte, 8
        elif window is not None:
            var, low_bit, width = self.use_window(little, window), 8 * window, 64
        else:  # the whole payload as one int
            var, low_bit, width = ("l" if little else "b"), 0, self.nbits
            if var not in self.sources:
                order = "little" if little else "big"
                self.sources[var] = f"{var} = {self.const(int.from_bytes)}(data, '{order}')"
        # Bits counted from the least significant bit of `var`.
        shift = first_bit - low_bit if little else low_bit + width - first_bit - length
        expr = f"({var} >> {shift})" if shift else var
        if shift + length < width:  # bits above the field exist: mask them off
            expr = f"({expr} & {(1 << length) - 1})"
        return expr

    def window(self, first_byte: int, end_byte: int) -> int | None:
        """Start of an 8-byte window (at a multiple of 4) holding these bytes, for CAN FD.

        Shifting and masking a 512-bit int costs several times what a 64-bit one does, so
        payloads longer than 8 bytes are read as 64-bit words at byte offsets 0, 8, 16, … and
        (for signals straddling those) 4, 12, 20, …; each set takes one struct call.
        """
        if self.nbytes <= 8:
            return None
        for start in (first_byte - first_byte % 4, first_byte - first_byte % 4 - 4):
            if start >= 0 and end_byte <= start + 8 <= self.nbytes:
                return start
        return None

    def use_window(self, little: bool, start: int) -> str:
        prefix = "l" if little else "b"
        offsets = range(start % 8, self.nbytes - 7, 8)
        names = [f"{prefix}{offset}" for offset in offsets]
        fmt = ("<" if little else ">") + ("4x" if start % 8 else "") + "Q" * len(names)
        if names[0] not in self.sources:
            unpack = struct.Struct(fmt).unpack_from
            self.sources[names[0]] = f"({', '.join(names)},) = {self.const(unpack)}(data)"
        return f"{prefix}{start}"

    def raw_value(self, s: Any) -> str:
        """Expression for the raw value: signed/unsigned int, or the IEEE float."""
        if id(s) in self.planned:
            return self.planned[id(s)]
        length: int = s.length
        if s.is_float:
            fmt = _FLOAT_FORMATS[length]
            # Byte-aligned floats (the usual case) unpack straight from the payload.
            if s.byte_order == "little_endian" and s.start % 8 == 0:
                unpack = struct.Struct("<" + fmt).unpack_from
                return f"{self.const(unpack)}(data, {s.start // 8})[0]"
            if s.byte_order == "big_endian" and _network_start(s) % 8 == 0:
                unpack = struct.Struct(">" + fmt).unpack_from
                return f"{self.const(unpack)}(data, {_network_start(s) // 8})[0]"
            unpack_bits = struct.Struct(">" + fmt).unpack
            return f"{self.const(unpack_bits)}({self.raw_int(s)}.to_bytes({length // 8}, 'big'))[0]"
        raw = self.raw_int(s)
        if s.is_signed:
            half = 1 << (length - 1)
            return f"(({raw} ^ {half}) - {half})"
        return raw

    def scaled(self, s: Any, raw: str) -> str:
        """Expression scaling ``raw`` exactly as cantools' conversion (without choices) does."""
        conversion = self.base_conversion_of(s)
        if type(conversion) is self.identity_cls:
            return raw
        if type(conversion) is self.linear_int_cls:
            scale, offset = conversion.scale, conversion.offset
            # Integer arithmetic is exact, so `* 1` and `+ 0` may go.
            expr = raw if scale == 1 else f"{raw} * {self.number(scale)}"
            return f"({expr} + {self.number(offset)})" if offset != 0 else f"({expr})"
        if type(conversion) is self.linear_cls:
            # Float arithmetic: keep cantools' exact operations (raw * scale + offset), except
            # `+ 0`, a no-op when an int raw value meets a positive scale (no -0.0 to turn
            # into 0.0).
            scale, offset = conversion.scale, conversion.offset
            if not s.is_float and offset == 0 and type(scale) is float and scale > 0:
                return f"({raw} * {self.number(scale)})"
            return f"({raw} * {self.number(scale)} + {self.number(offset)})"
        # An unknown conversion class: call it, slower but identical by construction.
        return f"{self.const(conversion.raw_to_scaled)}({raw}, False)"

    def base_conversion_of(self, s: Any) -> Any:
        """The signal's conversion without its value table (what scales non-choice values)."""
        conversion = s.conversion
        if conversion.choices is None:
            return conversion
        return self.base_conversion.factory(
            scale=conversion.scale,
            offset=conversion.offset,
            choices=None,
            is_float=conversion.is_float,
        )

    def has_choices(self, s: Any) -> bool:
        return bool(self.decode_choices and s.conversion.choices)

    def value(self, s: Any, raw: str) -> str:
        """Expression for the physical value (or choice name) of signal ``s`` from ``raw``."""
        if not self.has_choices(s):
            return self.scaled(s, raw)
        conversion = s.conversion
        if not s.is_float and s.length <= _TABLE_MAX_BITS:
            # One tuple covering every raw value, filled by cantools' own conversion; negative
            # (signed) raw values index it from the end, which is where they are stored.
            size = 1 << s.length
            table = tuple(
                _output(conversion.raw_to_scaled(i - size if s.is_signed and i >= size // 2 else i))
                for i in range(size)
            )
            return f"{self.const(table)}[{raw}]"
        names = {key: str(name) for key, name in conversion.choices.items() if name is not None}
        x, v = self.fresh("x"), self.fresh("v")
        if s.is_float:
            # cantools looks choices up by int(raw), which raises for NaN and infinities.
            self.may_raise_arith = True
            key = f"int({x} := {raw})"
        else:
            key = f"({x} := {raw})"
        return (
            f"({v} if ({v} := {self.const(names)}.get({key})) is not None else {self.scaled(s, x)})"
        )

    def selector_key(self, s: Any, raw: str) -> str:
        """Expression for the number cantools looks multiplexer branches up by: int(value)."""
        base = self.base_conversion_of(s)
        if not s.is_float and type(base) in (self.identity_cls, self.linear_int_cls):
            by_value = self.scaled(s, raw)  # already an int
        else:
            self.may_raise_arith = True
            by_value = f"int({self.scaled(s, raw)})"
        if not self.has_choices(s):
            return by_value
        # With choices decoded, cantools maps the choice back to a number through its name
        # (the last value with that name wins), so the branch follows the name.
        conversion = s.conversion
        number_of = {str(name): key for key, name in conversion.choices.items()}
        via_name = {
            key: int(number_of[str(name)])
            for key, name in conversion.choices.items()
            if name is not None
        }
        lookup = f"int({raw})" if s.is_float else raw
        k = self.fresh("k")
        return f"({k} if ({k} := {self.const(via_name)}.get({lookup})) is not None else {by_value})"

    # ---- per branch code --------------------------------------------------------------------

    def node_body(self, node: _Node) -> tuple[list[str], list[tuple[str, str]], list[str]]:
        """Code for one branch: (statements before, (key, value) items, statements after)."""
        # Branches under a nested multiplexer repeat under every outer value (same signal
        # objects, different functions), so what was planned belongs to one branch only.
        outer_planned, self.planned = self.planned, {}
        try:
            return self.node_code(node)
        finally:
            self.planned = outer_planned

    def node_code(self, node: _Node) -> tuple[list[str], list[tuple[str, str]], list[str]]:
        problem = _layout_problem(node.signals, self.nbits, self.decode_overlapping)
        if problem is not None:
            return [f"{self.const(self.fail('cannot decode: ' + problem))}()"], [], []
        before: list[str] = []
        items: list[tuple[str, str]] = []
        after: list[str] = []
        self.plan_unpack(
            [
                s
                for s in node.signals
                if s.name in node.muxes or self.wanted is None or s.name in self.wanted
            ]
        )
        for s in node.signals:
            want = self.wanted is None or s.name in self.wanted
            if s.name in node.muxes:
                # Selectors are decoded even when not subscribed: they choose the branch, and
                # an unknown selector value fails the frame as it does in cantools.
                m = self.fresh("m")
                before.append(f"{m} = {self.raw_value(s)}")
                if want:
                    items.append((self.const(s.name), self.value(s, m)))
                after.extend(self.dispatch(s, node.muxes[s.name], m))
            elif want:
                items.append((self.const(s.name), self.value(s, self.raw_value(s))))
        return before, items, after

    def dispatch(self, s: Any, branches: dict[int, _Node], m: str) -> list[str]:
        """Statements choosing and running the branch selected by multiplexer ``s``."""
        expected = ", ".join(str(v) for v in sorted(branches)) or "none"
        error = self.const(self.selector_error(s.name, expected))
        functions = {number: self.branch_function(child) for number, child in branches.items()}
        key = self.fresh("k")
        lines = [f"{key} = {self.selector_key(s, m)}"]
        if all(function is None for function in functions.values()):
            # Nothing subscribed below this selector: only check the value is a known branch.
            lines.append(f"if {key} not in {self.const(frozenset(branches))}: {error}({key})")
            return lines
        table = self.fresh("_d")
        nop = self.const(_nop)
        entries = ", ".join(f"{number!r}: {fn or nop}" for number, fn in functions.items())
        self.defs.append(f"{table} = {{{entries}}}")
        f = self.fresh("f")
        lines.append(f"{f} = {table}.get({key})")
        lines.append(f"if {f} is None: {error}({key})")
        lines.append(f"{f}(data, r)")
        return lines

    def selector_error(self, name: str, expected: str) -> Callable[[object], None]:
        label = self.label

        def raise_error(value: object) -> None:
            raise DecodeError(
                f"{label}: multiplexer {name} = {value} selects no signals (expected {expected})"
            )

        return raise_error

    def branch_function(self, node: _Node) -> str | None:
        """Define a function decoding one branch into ``r``; None when it would do nothing."""
        outer_sources, self.sources = self.sources, {}
        try:
            before, items, after = self.node_body(node)
            prelude = list(self.sources.values())
        finally:
            self.sources = outer_sources
        if not (items or after or before):
            return None
        name = self.fresh("_n")
        # Each branch unpacks what its own signals need from `data`.
        body = [*prelude, *before, *(f"r[{k}] = {v}" for k, v in items), *after]
        # Appended after the branch's own children and tables, which it refers to.
        self.defs.append(f"def {name}(data, r):")
        self.defs.extend(f"    {line}" for line in body)
        return name

    def compile(self) -> _DecodeFn:
        """Generate, compile and return the message's decode function."""
        root = _node_from_tree(self.message, self.message.signal_tree)
        before, items, after = self.node_body(root)
        decoded, tnew = self.const(Decoded), self.const(tuple.__new__)
        name, fix = self.const(self.message.name), self.const(self.length_fixer())
        body = [f"if len(data) != {self.nbytes}: data = {fix}(data)", *self.sources.values()]
        result = "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
        if after:
            main = [*before, f"r = {result}", *after, f"return {tnew}({decoded}, ({name}, r))"]
        else:
            main = [*before, f"return {tnew}({decoded}, ({name}, {result}))"]
        if self.may_raise_arith:
            # Free in CPython 3.11 until something is raised.
            main = [
                "try:",
                *(f"    {line}" for line in main),
                f"except {self.const(DecodeError)}:",
                "    raise",
                "except (ValueError, OverflowError) as e:",
                f"    {self.const(self.arith_error)}(e)",
            ]
        body.extend(main)
        lines = ["def _factory(_consts):"]
        names = ", ".join(f"_c{i}" for i in range(len(self.consts)))
        lines.append(f"    ({names},) = _consts")
        lines.extend(f"    {line}" for line in self.defs)
        lines.append("    def _decode(data):")
        lines.extend(f"        {line}" for line in body)
        lines.append("    return _decode")
        source = "\n".join(lines) + "\n"
        namespace: dict[str, Any] = {"__builtins__": builtins}
        code = compile(source, f"<can_dbc.decoder 0x{self.message.frame_id:X}>", "exec")
        exec(code, namespace)  # the source holds only our identifiers and numbers
        function: _DecodeFn = namespace["_factory"](tuple(self.consts))
        function.__doc__ = source  # the generated code, for debugging
        return function

    def length_fixer(self) -> Callable[[bytes | bytearray], bytes | bytearray]:
        nbytes, label = self.nbytes, self.label

        def fix(data: bytes | bytearray) -> bytes | bytearray:
            if len(data) > nbytes:
                # cantools decodes the first `length` bytes and ignores the rest.
                return data[:nbytes]
            raise DecodeError(f"{label}: frame has {len(data)} bytes, the message needs {nbytes}")

        return fix

    def arith_error(self, error: BaseException) -> None:
        raise DecodeError(f"{self.label}: value cannot be converted ({error})") from error


def _nop(data: object, r: object) -> None:
    """Branch with nothing subscribed."""


def _output(value: Any) -> SignalValue:
    """cantools' decoded value as we return it: choices (NamedSignalValue) become their name."""
    if isinstance(value, int | float):
        return value
    return str(value)


# --------------------------------------------------------------------------------------------
# The public decoder.


class Decoder:
    """Decodes the subscribed CAN messages of one bus; built once, then called per frame.

    ``messages`` picks messages by name or frame id (None: all); ``signals`` restricts the output
    to these signal names, plain (``"SPEED"``) or qualified (``"SPEEDOMETER.SPEED"``); without
    ``messages`` it also subscribes exactly the messages holding one of them. Unknown names or ids
    raise :class:`~can_dbc.errors.DbcError`. ``decode_choices=True`` returns value table names
    (``str``) instead of numbers. ``decode_overlapping=True`` decodes signals that overlap one
    another from their own bits where cantools (and by default this decoder) raises.

    Messages are keyed by their raw frame id (without cantools' extended-frame flag), so a
    standard and an extended message with the same number cannot both be subscribed: as when
    cantools loads several files into one database, the later one wins, with a warning. Container
    messages (AUTOSAR) are not supported and are skipped unless named, which raises.
    """

    __slots__ = ("_extended", "_functions", "_get", "_names")

    def __init__(
        self,
        database: Any,
        *,
        messages: Iterable[str | int] | None = None,
        signals: Iterable[str] | None = None,
        decode_choices: bool = False,
        decode_overlapping: bool = False,
    ) -> None:
        self._build([database], messages, signals, decode_choices, decode_overlapping)

    @classmethod
    def from_databases(
        cls,
        databases: Sequence[Any],
        *,
        messages: Iterable[str | int] | None = None,
        signals: Iterable[str] | None = None,
        decode_choices: bool = False,
        decode_overlapping: bool = False,
    ) -> Decoder:
        """A decoder over several DBCs on one bus.

        Later databases win: a message whose frame id (or name) an earlier database already
        defines replaces it, with a warning — what cantools does when it loads several files
        into one database, and what lets a vehicle-specific file override a generic one.
        """
        decoder = cls.__new__(cls)
        decoder._build(list(databases), messages, signals, decode_choices, decode_overlapping)
        return decoder

    def _build(
        self,
        databases: list[Any],
        messages: Iterable[str | int] | None,
        signals: Iterable[str] | None,
        decode_choices: bool,
        decode_overlapping: bool,
    ) -> None:
        by_id: dict[int, Any] = {}
        by_name: dict[str, Any] = {}
        for database in databases:
            for message in database.messages:
                earlier = by_id.get(message.frame_id)
                if earlier is not None:
                    _LOG.warning(
                        "CAN id 0x%X: message %s replaces %s defined earlier",
                        message.frame_id,
                        message.name,
                        earlier.name,
                    )
                by_id[message.frame_id] = message
                by_name[message.name] = message

        chosen: dict[int, Any] = {}
        if messages is None:
            for frame_id, message in by_id.items():
                if message.is_container:
                    _LOG.debug("skipping container message %s", message.name)
                else:
                    chosen[frame_id] = message
        else:
            for selector in messages:
                message = _find_message(selector, by_id, by_name)
                earlier = chosen.get(message.frame_id)
                if earlier is not None and earlier is not message:
                    _LOG.warning(
                        "CAN id 0x%X: message %s replaces %s (same frame id)",
                        message.frame_id,
                        message.name,
                        earlier.name,
                    )
                chosen[message.frame_id] = message

        wanted: dict[int, frozenset[str] | None] = dict.fromkeys(chosen)
        if signals is not None:
            requested = set(signals)
            found: set[str] = set()
            for frame_id, message in chosen.items():
                names = set()
                for signal in message.signals:
                    for spelling in (signal.name, f"{message.name}.{signal.name}"):
                        if spelling in requested:
                            names.add(signal.name)
                            found.add(spelling)
                wanted[frame_id] = frozenset(names)
            missing = requested - found
            if missing:
                raise DbcError("no subscribed message has signal(s) " + ", ".join(sorted(missing)))
            # Messages holding none of the requested signals are not subscribed.
            chosen = {i: m for i, m in chosen.items() if wanted[i]}

        self._functions: dict[int, _DecodeFn] = {
            frame_id: _MessageCompiler(
                message, wanted[frame_id], decode_choices, decode_overlapping
            ).compile()
            for frame_id, message in chosen.items()
        }
        self._names: dict[int, str] = {i: m.name for i, m in chosen.items()}
        self._extended: dict[int, bool] = {i: bool(m.is_extended_frame) for i, m in chosen.items()}
        self._get = self._functions.get

    def decode(self, frame_id: int, data: bytes | bytearray) -> Decoded | None:
        """Decode one frame; None if its id is not subscribed.

        Raises :class:`~can_dbc.errors.DecodeError` if the frame is shorter than its message,
        its multiplexer selects no signals, or its message's layout cannot be decoded.
        """
        function = self._get(frame_id)
        if function is None:
            return None
        return function(data)

    @property
    def frame_ids(self) -> frozenset[int]:
        """The subscribed frame ids (raw, without an extended-frame flag)."""
        return frozenset(self._functions)

    def message_name(self, frame_id: int) -> str | None:
        """The name of the message subscribed under ``frame_id``, if any."""
        return self._names.get(frame_id)

    def can_filters(self) -> list[dict[str, int | bool]]:
        """python-can receive filters passing exactly the subscribed ids (for kernel filtering)."""
        return [
            {
                "can_id": frame_id,
                "can_mask": _EXT_MASK if self._extended[frame_id] else _STD_MASK,
                "extended": self._extended[frame_id],
            }
            for frame_id in sorted(self._functions)
        ]

    def __repr__(self) -> str:
        return f"<Decoder of {len(self._functions)} messages>"


def _find_message(selector: str | int, by_id: dict[int, Any], by_name: dict[str, Any]) -> Any:
    if isinstance(selector, bool) or not isinstance(selector, str | int):
        raise DbcError(f"messages must be names or frame ids, not {selector!r}")
    if isinstance(selector, int):
        message = by_id.get(selector)
        if message is None:
            raise DbcError(f"no message with CAN id 0x{selector:X} in the DBC")
    else:
        message = by_name.get(selector)
        if message is None:
            raise DbcError(f"no message named {selector!r} in the DBC")
    if message.is_container:
        raise DbcError(f"message {message.name} is a container message, which is not supported")
    return message
