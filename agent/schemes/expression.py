"""The condition language of condition-triggered schemes: parsed once, compiled into closures.

A condition is a small expression over decoded signals, for example::

    SPEED.SPEED > 60 and prev(SPEED.SPEED) <= 60
    avg(ENGINE_RPM.RPM, "2s") > 3000 or abs(STEER_ANGLE_SENSOR.STEER_ANGLE) >= 90
    changed(GEAR_PACKET.GEAR) and not (SPEED.SPEED < 5)

**Grammar** (lowest precedence first; binary operators associate to the left)::

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := sum [("<" | "<=" | ">" | ">=" | "==" | "!=") sum]     # not chained: a < b < c
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/" | "%") unary)*
    unary      := ("-" | "+") unary | primary
    primary    := NUMBER | SIGNAL | call | "(" or ")"
    call       := "prev" "(" SIGNAL ")" | "changed" "(" SIGNAL ")"
                | ("min" | "max" | "avg") "(" SIGNAL "," DURATION ")"
                | "abs" "(" sum ")"
                | "inside" "(" GEOFENCE ["," SIGNAL "," SIGNAL] ")"
    SIGNAL     := [BUS ":"] [MESSAGE "."] NAME          # each an identifier: [A-Za-z_][A-Za-z0-9_]*
    NUMBER     := 12 | 0.5 | .5 | 1e3 | 2.5E-2
    DURATION   := a string: a number and a unit, "500ms", "2s", "1.5min" (at most 60 s)
    GEOFENCE   := a string: the id of a geofence declared in the scheme document

``and``, ``or`` and ``not`` are keywords; a name followed by ``(`` is a function call, so a signal
may be called ``min`` or ``abs``. A string is allowed only as a window function's duration and
as a geofence id. Comparisons, ``changed()`` and ``inside()`` are *conditions*; numbers,
signals, ``prev()``, window functions, ``abs()`` and arithmetic are *values*.
``and``/``or``/``not`` take conditions, comparisons and arithmetic take values, and the whole
expression must be a condition; mixing them up is an error at parse time (``SPEED and RPM`` is
rejected: write ``SPEED != 0 and RPM != 0``).

**Functions.** ``prev(S)`` is the value of S before its latest update; ``changed(S)`` is true when
S's latest update differs from the one before (``S != prev(S)``, also for value-table names);
``min``/``max``/``avg(S, "2s")`` are over S's samples taken in the last span, [now − span, now],
where now is the time of the frame being evaluated (``avg`` is the plain mean of the samples);
``abs(x)`` is the absolute value. ``inside("depot")`` is true while the position is inside the
geofence ``depot`` (:mod:`agent.schemes.geofence`); the position is the GNSS receiver's,
``gnss:GNSS.latitude`` and ``gnss:GNSS.longitude``, unless two signals follow the id:
``inside("depot", TBOX_Latitude, TBOX_Longitude)``. ``not inside("depot")`` is outside.

**Missing values.** Evaluation never raises. A signal not seen yet, ``prev()`` before two updates,
a window with no samples, a division or ``%`` by zero, and a value-table name used in arithmetic or
an ordering comparison are *unknown*. Unknown propagates through arithmetic and comparisons, and
``and``/``or``/``not`` follow three-valued logic (``unknown or true`` is true, ``unknown and false``
is false, ``not unknown`` is unknown). A condition whose result is unknown is **false**: a missing
signal never triggers a scheme, also not through ``not``. ``==`` and ``!=`` compare value-table
names with each other (``GEAR == prev(GEAR)``); a name against a number is unknown.

**Limits.** At most :data:`MAX_LENGTH` characters and :data:`MAX_DEPTH` levels of nesting
(operators, parentheses, function calls; a chain of ``and`` or of ``or`` is one level), so
neither parsing nor evaluation can exhaust the stack. Windows span at most :data:`MAX_WINDOW_S`;
the history they need is bounded as :mod:`agent.schemes.history` describes. A condition must read
at least one signal (it is evaluated when one of its signals updates). Errors are
:class:`~agent.schemes.errors.ExpressionError` with the 1-based column and what was expected.

**Safety.** The text is tokenised and parsed here; nothing is ever handed to ``eval``, ``exec`` or
``compile``. :meth:`Expression.bind` turns the tree into nested Python closures, one per node, bound
to the evaluator's signal slots — built once per scheme set, then called on every update.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, cast

from agent.schemes.errors import ExpressionError
from agent.schemes.geofence import Geofence
from agent.schemes.history import Clock, SignalSlot, Value

__all__ = [
    "DEFAULT_POSITION",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_WINDOW_S",
    "Binary",
    "BoolOp",
    "Call",
    "Compare",
    "Expression",
    "Inside",
    "Node",
    "Not",
    "Number",
    "Signal",
    "Unary",
    "parse_duration",
    "parse_expression",
]

#: Longest expression text accepted (the FleetWise limit).
MAX_LENGTH: Final = 2048
#: Deepest nesting of operators, parentheses and calls accepted.
MAX_DEPTH: Final = 48
#: Longest span of a window function, in seconds (it bounds the history kept per signal).
MAX_WINDOW_S: Final = 60.0
#: The functions, in the order error messages list them.
FUNCTIONS: Final = ("prev", "min", "max", "avg", "abs", "changed", "inside")
#: The position ``inside()`` reads unless told otherwise: the GNSS receiver's.
DEFAULT_POSITION: Final = ("gnss:GNSS.latitude", "gnss:GNSS.longitude")

_WINDOW_FUNCTIONS: Final = frozenset({"min", "max", "avg"})
_SIGNAL_FUNCTIONS: Final = frozenset({"prev", "changed"})
_TOO_DEEP: Final = (
    f"nested too deeply (at most {MAX_DEPTH} levels of operators, parentheses and calls)"
)
_KEYWORDS: Final = frozenset({"and", "or", "not"})
_COMPARISONS: Final = frozenset({"<", "<=", ">", ">=", "==", "!="})

Evaluate = Callable[[], Value | bool | None]

# --------------------------------------------------------------------------------------------
# The tree: frozen nodes, each knowing where it starts (1-based column) and how deep it is.


@dataclass(frozen=True, slots=True)
class Number:
    """A numeric literal (``int`` if written without a point or exponent)."""

    value: float | int
    col: int
    depth: int = 1


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal read: its latest value."""

    name: str
    col: int
    depth: int = 1


@dataclass(frozen=True, slots=True)
class Call:
    """A function call; ``signal`` for prev/changed/min/max/avg, ``arg`` for abs."""

    function: str
    col: int
    signal: str | None = None
    span: float = 0.0  # seconds, for window functions
    arg: Node | None = None
    depth: int = 1


@dataclass(frozen=True, slots=True)
class Inside:
    """``inside("zone", LAT, LON)``: the position signals are inside the geofence ``zone``."""

    zone: str
    latitude: str
    longitude: str
    col: int
    depth: int = 1


@dataclass(frozen=True, slots=True)
class Unary:
    """Unary minus (unary plus is dropped by the parser)."""

    operand: Node
    col: int
    depth: int


@dataclass(frozen=True, slots=True)
class Binary:
    """Arithmetic: ``+ - * / %``."""

    op: str
    left: Node
    right: Node
    col: int
    depth: int


@dataclass(frozen=True, slots=True)
class Compare:
    """A comparison: ``< <= > >= == !=``."""

    op: str
    left: Node
    right: Node
    col: int
    depth: int


@dataclass(frozen=True, slots=True)
class BoolOp:
    """``and`` / ``or`` over two or more conditions."""

    op: str
    items: tuple[Node, ...]
    col: int
    depth: int


@dataclass(frozen=True, slots=True)
class Not:
    """``not`` of a condition."""

    operand: Node
    col: int
    depth: int


Node = Number | Signal | Call | Inside | Unary | Binary | Compare | BoolOp | Not


def _is_condition(node: Node) -> bool:
    if isinstance(node, Call):
        return node.function == "changed"
    return isinstance(node, Compare | BoolOp | Not | Inside)


# --------------------------------------------------------------------------------------------
# Tokens

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN_RE: Final = re.compile(
    rf"""
    (?P<space>\s+)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>(?:{_NAME}:)?{_NAME}(?:\.{_NAME})?)
  | (?P<str>"[^"\n]*"|'[^'\n]*')
  | (?P<op><=|>=|==|!=|[-+*/%<>(),])
    """,
    re.VERBOSE | re.ASCII,
)
# Operators from other languages, and what to write instead.
_FOREIGN: Final = {
    "&&": "'and'",
    "||": "'or'",
    "!": "'not' (or '!=')",
    "=": "'==' to compare",
    "**": "x * x (there is no power operator)",
    "^": "x * x (there is no power operator)",
    "&": "'and'",
    "|": "'or'",
}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "num", "name", "kw", "str", "op", "end"
    text: str
    col: int

    def describe(self) -> str:
        if self.kind == "end":
            return "end of expression"
        if self.kind == "str":
            return f"string {self.text}"
        return f"'{self.text}'"


def _tokens(text: str) -> Iterator[_Token]:
    pos, n = 0, len(text)
    while pos < n:
        m = None if text.startswith("**", pos) else _TOKEN_RE.match(text, pos)
        if m is None:
            for foreign, instead in _FOREIGN.items():
                if text.startswith(foreign, pos):
                    raise ExpressionError(
                        pos + 1, f"'{foreign}' is not an operator here: use {instead}"
                    )
            char = text[pos]
            if char in "\"'":
                raise ExpressionError(pos + 1, f"unterminated string (expected a closing {char})")
            shown = char if char.isprintable() else ascii(char)[1:-1]
            raise ExpressionError(pos + 1, f"unexpected character '{shown}'")
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            word = m.group()
            if kind == "name" and word in _KEYWORDS:
                kind = "kw"
            elif (
                kind == "num" and m.end() < n and (text[m.end()].isalpha() or text[m.end()] == "_")
            ):
                # "2s" or "5ms" outside quotes: a duration written as a number.
                raise ExpressionError(
                    pos + 1,
                    f"unexpected {text[m.end()]!r} after the number {word} "
                    '(a duration is a string, e.g. "2s")',
                )
            yield _Token(kind, word, pos + 1)
        pos = m.end()
    yield _Token("end", "", n + 1)


_DURATION_RE: Final = re.compile(r"\s*(\d+\.?\d*|\.\d+)\s*(ms|s|min)\s*", re.ASCII)
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "min": 60.0}


def parse_duration(text: str) -> float | None:
    """Seconds in a duration such as ``"500ms"``, ``"2s"``, ``"1.5min"``; None if malformed."""
    m = _DURATION_RE.fullmatch(text)
    if m is None:
        return None
    return float(m.group(1)) * _UNIT_S[m.group(2)]


# --------------------------------------------------------------------------------------------
# The parser: recursive descent, one method per precedence level.


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = list(_tokens(text))
        self.i = 0
        self.nesting = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str, what: str) -> _Token:
        if self.tok.text != text or self.tok.kind not in ("op", "end"):
            raise ExpressionError(self.tok.col, f"expected {what}, got {self.tok.describe()}")
        return self.advance()

    def deeper(self, col: int) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise ExpressionError(col, _TOO_DEEP)

    @staticmethod
    def depth(col: int, *children: Node) -> int:
        depth = 1 + max(c.depth for c in children)
        if depth > MAX_DEPTH:
            raise ExpressionError(col, _TOO_DEEP)
        return depth

    @staticmethod
    def need_condition(node: Node, where: str) -> Node:
        if not _is_condition(node):
            raise ExpressionError(
                node.col,
                f"{where} needs a condition (a comparison, changed(…), and/or/not), got a value",
            )
        return node

    @staticmethod
    def need_value(node: Node, where: str) -> Node:
        if _is_condition(node):
            raise ExpressionError(
                node.col, f"{where} needs a value (a number, signal or arithmetic), got a condition"
            )
        return node

    # -- precedence levels --------------------------------------------------------------------

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise ExpressionError(1, "empty condition (expected an expression such as SPEED > 60)")
        node = self.parse_or()
        if self.tok.kind != "end":
            tok = self.tok
            if tok.text in _COMPARISONS:
                raise ExpressionError(
                    tok.col, "comparisons cannot be chained (write a < b and b < c)"
                )
            if tok.kind in ("name", "num", "str") or tok.text == "(":
                raise ExpressionError(
                    tok.col, f"expected an operator or 'and'/'or', got {tok.describe()}"
                )
            raise ExpressionError(tok.col, f"unexpected {tok.describe()}")
        return self.need_condition(node, "the whole expression")

    def parse_bool(self, op: str, parse_item: Callable[[], Node]) -> Node:
        first = parse_item()
        if not (self.tok.kind == "kw" and self.tok.text == op):
            return first
        items = [self.need_condition(first, f"'{op}'")]
        while self.tok.kind == "kw" and self.tok.text == op:
            self.advance()
            items.append(self.need_condition(parse_item(), f"'{op}'"))
        return BoolOp(op, tuple(items), first.col, self.depth(first.col, *items))

    def parse_or(self) -> Node:
        return self.parse_bool("or", self.parse_and)

    def parse_and(self) -> Node:
        return self.parse_bool("and", self.parse_not)

    def parse_not(self) -> Node:
        if self.tok.kind == "kw" and self.tok.text == "not":
            col = self.advance().col
            self.deeper(col)
            operand = self.need_condition(self.parse_not(), "'not'")
            self.nesting -= 1
            return Not(operand, col, self.depth(col, operand))
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        left = self.parse_sum()
        if self.tok.kind == "op" and self.tok.text in _COMPARISONS:
            op_tok = self.advance()
            self.need_value(left, f"'{op_tok.text}'")
            right = self.need_value(self.parse_sum(), f"'{op_tok.text}'")
            if self.tok.kind == "op" and self.tok.text in _COMPARISONS:
                raise ExpressionError(
                    self.tok.col, "comparisons cannot be chained (write a < b and b < c)"
                )
            return Compare(op_tok.text, left, right, left.col, self.depth(op_tok.col, left, right))
        return left

    def parse_arith(self, ops: str, parse_item: Callable[[], Node]) -> Node:
        left = parse_item()
        while self.tok.kind == "op" and self.tok.text in ops:
            op_tok = self.advance()
            self.need_value(left, f"'{op_tok.text}'")
            right = self.need_value(parse_item(), f"'{op_tok.text}'")
            left = Binary(op_tok.text, left, right, left.col, self.depth(op_tok.col, left, right))
        return left

    def parse_sum(self) -> Node:
        return self.parse_arith("+-", self.parse_product)

    def parse_product(self) -> Node:
        return self.parse_arith("*/%", self.parse_unary)

    def parse_unary(self) -> Node:
        if self.tok.kind == "op" and self.tok.text in "+-":
            op_tok = self.advance()
            self.deeper(op_tok.col)
            operand = self.need_value(self.parse_unary(), f"unary '{op_tok.text}'")
            self.nesting -= 1
            if op_tok.text == "+":
                return operand
            return Unary(operand, op_tok.col, self.depth(op_tok.col, operand))
        return self.parse_primary()

    def parse_primary(self) -> Node:
        tok = self.tok
        if tok.kind == "num":
            self.advance()
            return Number(_number(tok), tok.col)
        if tok.kind == "name":
            self.advance()
            if self.tok.kind == "op" and self.tok.text == "(":
                return self.parse_call(tok)
            return Signal(tok.text, tok.col)
        if tok.kind == "op" and tok.text == "(":
            self.advance()
            self.deeper(tok.col)
            node = self.parse_or()
            self.expect(")", f"')' to close '(' at col {tok.col}")
            self.nesting -= 1
            # Errors about the parenthesised operand point at its '('.
            return replace(node, col=tok.col)
        if tok.kind == "str":
            raise ExpressionError(
                tok.col,
                "a string is only allowed as the duration of min, max or avg "
                '(e.g. avg(SPEED, "2s")) and as the geofence of inside() (e.g. inside("depot"))',
            )
        raise ExpressionError(
            tok.col,
            f"expected a number, a signal, a function call or '(', got {tok.describe()}",
        )

    def parse_call(self, name: _Token) -> Node:
        function, col = name.text, name.col
        if function not in FUNCTIONS:
            raise ExpressionError(
                col, f"unknown function {function!r} (expected one of {', '.join(FUNCTIONS)})"
            )
        self.advance()  # "("
        self.deeper(col)
        node: Node
        if function == "abs":
            arg = self.need_value(self.parse_sum(), "abs()")
            self.expect(")", "')' after the argument of abs()")
            node = Call(function, col, arg=arg, depth=self.depth(col, arg))
        elif function == "inside":
            node = self.parse_inside(col)
        else:
            example = 'avg(SPEED, "2s")' if function in _WINDOW_FUNCTIONS else f"{function}(SPEED)"
            signal = self.tok
            if signal.kind != "name" or self.tokens[self.i + 1].text == "(":
                raise ExpressionError(
                    signal.col,
                    f"{function}() takes a signal name, got {signal.describe()} (e.g. {example})",
                )
            self.advance()
            if function in _SIGNAL_FUNCTIONS:
                self.expect(")", f"')' after the signal of {function}() (e.g. {example})")
                node = Call(function, col, signal=signal.text)
            else:
                self.expect(",", f"',' and a duration after the signal (e.g. {example})")
                duration = self.tok
                if duration.kind != "str":
                    raise ExpressionError(
                        duration.col,
                        f"expected a duration string, got {duration.describe()} (e.g. {example})",
                    )
                self.advance()
                span = parse_duration(duration.text[1:-1])
                if span is None:
                    raise ExpressionError(
                        duration.col,
                        f"bad duration {duration.text} (expected a number and a unit, "
                        'ms, s or min, e.g. "500ms")',
                    )
                if not 0.0 < span <= MAX_WINDOW_S:
                    raise ExpressionError(
                        duration.col,
                        f"duration {duration.text} is out of range (more than 0, "
                        f"at most {MAX_WINDOW_S:g} s)",
                    )
                self.expect(")", f"')' after the duration of {function}()")
                node = Call(function, col, signal=signal.text, span=span)
        self.nesting -= 1
        return node

    def parse_inside(self, col: int) -> Inside:
        example = 'inside("depot") or inside("depot", LAT, LON)'
        zone = self.tok
        if zone.kind != "str" or len(zone.text) < 3:
            raise ExpressionError(
                zone.col,
                f"inside() takes a geofence id as a string, got {zone.describe()} (e.g. {example})",
            )
        self.advance()
        position = DEFAULT_POSITION
        if self.tok.kind == "op" and self.tok.text == ",":
            self.advance()
            names: list[str] = []
            for what in ("latitude", "longitude"):
                signal = self.tok
                if signal.kind != "name" or self.tokens[self.i + 1].text == "(":
                    raise ExpressionError(
                        signal.col,
                        f"inside() takes a {what} signal here, got {signal.describe()} "
                        f"(e.g. {example})",
                    )
                names.append(signal.text)
                self.advance()
                if what == "latitude":
                    self.expect(",", f"',' and the longitude signal (e.g. {example})")
            position = (names[0], names[1])
        self.expect(")", f"')' after the arguments of inside() (e.g. {example})")
        return Inside(zone.text[1:-1], position[0], position[1], col)


def _number(tok: _Token) -> float | int:
    text = tok.text
    if text.isdigit():
        if len(text) > 300:  # beyond any float; also keeps int() far from its digit limit
            raise ExpressionError(tok.col, f"number too large: {text[:20]}…")
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise ExpressionError(tok.col, f"number too large: {text}")
    return value


# --------------------------------------------------------------------------------------------
# The parsed expression and its compilation into closures.


def _walk(node: Node) -> Iterator[Node]:
    yield node
    if isinstance(node, Unary | Not):
        yield from _walk(node.operand)
    elif isinstance(node, Binary | Compare):
        yield from _walk(node.left)
        yield from _walk(node.right)
    elif isinstance(node, BoolOp):
        for item in node.items:
            yield from _walk(item)
    elif isinstance(node, Call) and node.arg is not None:
        yield from _walk(node.arg)


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed, validated condition. Equal expressions have equal text.

    ``signals`` are the signal names it reads (as written); ``windows`` maps each signal used by a
    window function to its longest span in seconds, so the evaluator can size its history;
    ``extremes`` lists the ``(signal, span, largest)`` of its ``max``/``min`` window functions,
    whose running extremes the signal's history keeps; ``zones`` are the geofence ids it tests.
    """

    text: str
    tree: Node = field(compare=False, repr=False)
    signals: frozenset[str] = field(compare=False, repr=False)
    windows: tuple[tuple[str, float], ...] = field(compare=False, repr=False)
    extremes: frozenset[tuple[str, float, bool]] = field(compare=False, repr=False)
    zones: frozenset[str] = field(compare=False, repr=False)

    def bind(
        self,
        slot: Callable[[str], SignalSlot],
        clock: Clock,
        geofences: Mapping[str, Geofence] | None = None,
    ) -> Callable[[], bool | None]:
        """Compile into one closure: True, False, or None (unknown; callers treat it as false).

        *slot* maps a signal name to its :class:`SignalSlot` (the same object for the same name);
        slots of windowed signals must have a history keeping at least the window's span, and
        *clock* gives the time windows end at; *geofences* maps every id in ``zones`` to its
        area. Called once per scheme set; the closure is what runs per update.
        """
        areas = dict(geofences or {})
        missing = sorted(self.zones - areas.keys())
        if missing:
            raise ValueError(f"no geofence {missing[0]!r} is declared")
        env = _Env(slot, clock, areas)
        # The parser guarantees the root is a condition, so the closure returns bool or None.
        return cast("Callable[[], bool | None]", _compile(self.tree, env, numeric=False))


def parse_expression(text: str) -> Expression:
    """Parse and check a condition; raises :class:`ExpressionError` (column, what was expected)."""
    if not isinstance(text, str):
        raise ExpressionError(1, f"a condition must be a string, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            MAX_LENGTH + 1, f"too long ({len(text)} characters; at most {MAX_LENGTH})"
        )
    tree = _Parser(text).parse()
    signals: set[str] = set()
    windows: dict[str, float] = {}
    extremes: set[tuple[str, float, bool]] = set()
    zones: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, Signal):
            signals.add(node.name)
        elif isinstance(node, Inside):
            signals.update((node.latitude, node.longitude))
            zones.add(node.zone)
        elif isinstance(node, Call) and node.signal is not None:
            signals.add(node.signal)
            if node.function in _WINDOW_FUNCTIONS:
                windows[node.signal] = max(windows.get(node.signal, 0.0), node.span)
                if node.function != "avg":
                    extremes.add((node.signal, node.span, node.function == "max"))
    if not signals:
        raise ExpressionError(1, "the condition reads no signal, so nothing would evaluate it")
    return Expression(
        text,
        tree,
        frozenset(signals),
        tuple(sorted(windows.items())),
        frozenset(extremes),
        frozenset(zones),
    )


# Each node becomes a closure returning a number, a string (value-table name), a bool, or None
# for unknown. "numeric" says the parent does arithmetic or an ordering comparison, where a
# value-table name is unknown: checking once at the leaf keeps every operator free of type tests.


@dataclass(frozen=True, slots=True)
class _Env:
    """What compiled closures bind to: signal slots, the evaluation clock, geofences."""

    slot: Callable[[str], SignalSlot]
    clock: Clock
    geofences: Mapping[str, Geofence]


def _compile(node: Node, env: _Env, *, numeric: bool) -> Evaluate:
    if isinstance(node, Number):
        return _constant(node.value)
    if isinstance(node, Signal):
        return _read(env.slot(node.name), numeric=numeric, previous=False)
    if isinstance(node, Call):
        return _compile_call(node, env, numeric=numeric)
    if isinstance(node, Inside):
        return _inside(env.geofences[node.zone], env.slot(node.latitude), env.slot(node.longitude))
    if isinstance(node, Unary):
        return _negate(_compile(node.operand, env, numeric=True))
    if isinstance(node, Binary):
        left = _compile(node.left, env, numeric=True)
        right = _compile(node.right, env, numeric=True)
        return _ARITHMETIC[node.op](left, right)
    if isinstance(node, Compare):
        ordering = node.op not in ("==", "!=")
        left = _compile(node.left, env, numeric=ordering)
        right = _compile(node.right, env, numeric=ordering)
        return _COMPARE[node.op](left, right)
    if isinstance(node, BoolOp):
        items = tuple(_compile(i, env, numeric=False) for i in node.items)
        return _all(items) if node.op == "and" else _any(items)
    return _negate_condition(_compile(node.operand, env, numeric=False))


def _constant(value: float | int) -> Evaluate:
    def constant() -> Value | bool | None:
        return value

    return constant


def _read(s: SignalSlot, *, numeric: bool, previous: bool) -> Evaluate:
    if previous:
        if numeric:

            def prev_number() -> Value | bool | None:
                v = s.prev
                return None if v.__class__ is str else v

            return prev_number

        def prev_value() -> Value | bool | None:
            return s.prev

        return prev_value
    if numeric:

        def number() -> Value | bool | None:
            v = s.value
            return None if v.__class__ is str else v

        return number

    def value() -> Value | bool | None:
        return s.value

    return value


def _compile_call(node: Call, env: _Env, *, numeric: bool) -> Evaluate:
    function, clock = node.function, env.clock
    if function == "abs":
        assert node.arg is not None
        arg = _compile(node.arg, env, numeric=True)

        def absolute() -> Value | bool | None:
            x = arg()
            return None if x is None else abs(x)  # type: ignore[arg-type]

        return absolute
    assert node.signal is not None
    s = env.slot(node.signal)
    if function == "prev":
        return _read(s, numeric=numeric, previous=True)
    if function == "changed":

        def changed() -> Value | bool | None:
            v, p = s.value, s.prev
            if v is None or p is None:
                return None
            # NaN never equals itself; two NaNs in a row are no change.
            return not (v == p or (v != v and p != p))  # noqa: PLR0124

        return changed
    span = node.span
    if s.history is None or s.history.keep < span:
        raise ValueError(f"signal {node.signal} needs a history of at least {span:g} s")

    def window_values() -> list[Value] | None:
        h = s.history
        assert h is not None
        values = h.since(clock.now - span)
        if h.has_strings:
            values = [v for v in values if v.__class__ is not str]
        return values or None

    if function == "avg":

        def average() -> Value | bool | None:
            values = window_values()
            return None if values is None else sum(values) / len(values)  # type: ignore[arg-type]

        return average
    running = s.history.extreme(span, largest=function == "max")

    def extreme() -> Value | bool | None:
        return running.value(clock.now)

    return extreme


def _inside(area: Geofence, lat: SignalSlot, lon: SignalSlot) -> Evaluate:
    contains = area.contains

    def inside() -> Value | bool | None:
        y, x = lat.value, lon.value
        if y is None or x is None or y.__class__ is str or x.__class__ is str:
            return None
        if y != y or x != x:  # noqa: PLR0124 - NaN: no position
            return None
        return contains(y, x)  # type: ignore[arg-type]

    return inside


def _negate(operand: Evaluate) -> Evaluate:
    def negate() -> Value | bool | None:
        x = operand()
        return None if x is None else -x  # type: ignore[operator]

    return negate


def _negate_condition(operand: Evaluate) -> Evaluate:
    def negate() -> Value | bool | None:
        x = operand()
        return None if x is None else not x

    return negate


def _all(items: tuple[Evaluate, ...]) -> Evaluate:
    def conjunction() -> Value | bool | None:
        unknown = False
        for item in items:
            r = item()
            if r is False:
                return False
            if r is None:
                unknown = True
        return None if unknown else True

    return conjunction


def _any(items: tuple[Evaluate, ...]) -> Evaluate:
    def disjunction() -> Value | bool | None:
        unknown = False
        for item in items:
            r = item()
            if r is True:
                return True
            if r is None:
                unknown = True
        return None if unknown else False

    return disjunction


# Arithmetic catches ArithmeticError: division or modulo by zero, and an int too large for a
# float meeting a float. Both make the result unknown instead of raising out of the evaluator.


def _add(a: Evaluate, b: Evaluate) -> Evaluate:
    def add() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        if y is None:
            return None
        try:
            return x + y  # type: ignore[operator]
        except ArithmeticError:
            return None

    return add


def _sub(a: Evaluate, b: Evaluate) -> Evaluate:
    def sub() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        if y is None:
            return None
        try:
            return x - y  # type: ignore[operator]
        except ArithmeticError:
            return None

    return sub


def _mul(a: Evaluate, b: Evaluate) -> Evaluate:
    def mul() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        if y is None:
            return None
        try:
            return x * y  # type: ignore[operator]
        except ArithmeticError:
            return None

    return mul


def _div(a: Evaluate, b: Evaluate) -> Evaluate:
    def div() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        if y is None:
            return None
        try:
            return x / y  # type: ignore[operator]
        except ArithmeticError:
            return None

    return div


def _mod(a: Evaluate, b: Evaluate) -> Evaluate:
    def mod() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        if y is None:
            return None
        try:
            return x % y  # type: ignore[operator]
        except ArithmeticError:
            return None

    return mod


_ARITHMETIC: Final[dict[str, Callable[[Evaluate, Evaluate], Evaluate]]] = {
    "+": _add,
    "-": _sub,
    "*": _mul,
    "/": _div,
    "%": _mod,
}


def _less(a: Evaluate, b: Evaluate) -> Evaluate:
    def less() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        return None if y is None else x < y  # type: ignore[operator]

    return less


def _less_equal(a: Evaluate, b: Evaluate) -> Evaluate:
    def less_equal() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        return None if y is None else x <= y  # type: ignore[operator]

    return less_equal


def _greater(a: Evaluate, b: Evaluate) -> Evaluate:
    def greater() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        return None if y is None else x > y  # type: ignore[operator]

    return greater


def _greater_equal(a: Evaluate, b: Evaluate) -> Evaluate:
    def greater_equal() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        return None if y is None else x >= y  # type: ignore[operator]

    return greater_equal


def _equal(a: Evaluate, b: Evaluate) -> Evaluate:
    def equal() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        if y is None or (x.__class__ is str) is not (y.__class__ is str):
            return None  # a value-table name against a number: not comparable
        return x == y

    return equal


def _not_equal(a: Evaluate, b: Evaluate) -> Evaluate:
    def not_equal() -> Value | bool | None:
        x = a()
        if x is None:
            return None
        y = b()
        if y is None or (x.__class__ is str) is not (y.__class__ is str):
            return None
        return x != y

    return not_equal


_COMPARE: Final[dict[str, Callable[[Evaluate, Evaluate], Evaluate]]] = {
    "<": _less,
    "<=": _less_equal,
    ">": _greater,
    ">=": _greater_equal,
    "==": _equal,
    "!=": _not_equal,
}
