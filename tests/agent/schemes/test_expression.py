"""The condition language: grammar, precedence, functions, unknown values, errors with columns.

The property tests check that any text either compiles or raises ExpressionError, and that
compiled random arithmetic/comparison/logic trees agree with a straightforward recursive
interpreter over the same trees (written here; nothing is ``eval``-ed).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.schemes import Expression, ExpressionError, parse_expression
from agent.schemes.expression import FUNCTIONS, MAX_DEPTH, MAX_LENGTH, parse_duration
from agent.schemes.history import Clock, History, SignalSlot, Value


class Bound:
    """An expression bound to its own slots, fed by the test."""

    def __init__(self, text: str) -> None:
        self.expression: Expression = parse_expression(text)
        keep = dict(self.expression.windows)
        self.slots: dict[str, SignalSlot] = {}
        self.clock = Clock(0.0)

        def slot(name: str) -> SignalSlot:
            if name not in self.slots:
                history = History(keep[name]) if name in keep else None
                self.slots[name] = SignalSlot(name, history)
            return self.slots[name]

        self.fn = self.expression.bind(slot, self.clock)

    def set(self, t: float, **values: Value) -> Bound:
        for name, value in values.items():
            self.slots[name].update(t, value)
        self.clock.now = max(self.clock.now, t)
        return self

    def __call__(self) -> bool | None:
        return self.fn()


def evaluate(text: str, prev: Mapping[str, Value] | None = None, /, **values: Value) -> bool | None:
    bound = Bound(text)
    for name, value in (prev or {}).items():
        bound.slots[name].update(-1.0, value)
    bound.set(0.0, **values)
    return bound()


# ---------------------------------------------------------------------------------------------
# Grammar and precedence


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("a + b * c == 7", {"a": 1, "b": 2, "c": 3}, True),
        ("(a + b) * c == 9", {"a": 1, "b": 2, "c": 3}, True),
        ("a - b - c == -4", {"a": 1, "b": 2, "c": 3}, True),  # left associative
        ("a / b / c == 2", {"a": 12, "b": 2, "c": 3}, True),
        ("a % b * c == 6", {"a": 7, "b": 5, "c": 3}, True),  # (7 % 5) * 3
        ("-a * b == -2", {"a": 1, "b": 2}, True),
        ("--a == 1 and +a == 1 and - -a == 1", {"a": 1}, True),
        ("a * -b == -6", {"a": 2, "b": 3}, True),
        ("not a > 1 and b > 1", {"a": 0, "b": 2}, True),  # (not (a > 1)) and (b > 1)
        ("not (a > 1 and b > 1)", {"a": 2, "b": 2}, False),
        ("a > 1 or b > 1 and c > 1", {"a": 2, "b": 0, "c": 0}, True),  # and binds tighter
        ("(a > 1 or b > 1) and c > 1", {"a": 2, "b": 0, "c": 0}, False),
        ("not not a > 1", {"a": 2}, True),
        ("a >= 2 and a <= 2 and a == 2 and a != 3 and a < 3 and a > 1", {"a": 2}, True),
        ("a == 2.0", {"a": 2}, True),
        ("a > 1e3 and a < 1.5E3 and a > .5", {"a": 1200}, True),
        ("MSG.SIG + can0:MSG.SIG == 4", {"MSG.SIG": 2, "can0:MSG.SIG": 2}, True),
        ("min > 1", {"min": 2}, True),  # a signal may be called like a function
        ("  a\t>\n1  ", {"a": 2}, True),
        ("7 % a == 1", {"a": 3}, True),
        ("-7 % a == 2", {"a": 3}, True),  # Python's modulo: the sign of the divisor
    ],
)
def test_precedence_and_operators(text: str, values: dict[str, Value], expected: bool) -> None:
    assert evaluate(text, **values) is expected


def test_signals_and_windows_are_reported() -> None:
    e = parse_expression('avg(A.B, "2s") > 1 and max(A.B, "500ms") < 9 and prev(C) > abs(D)')
    assert e.signals == {"A.B", "C", "D"}
    assert e.windows == (("A.B", 2.0),)
    assert e == parse_expression(e.text) and e != parse_expression("C > 1")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("1.5min", 90.0), (" 3 s ", 3.0), (".25s", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5h", "s", "-1s", "1e3ms", "5 sec"])
def test_bad_durations(text: str) -> None:
    assert parse_duration(text) is None


# ---------------------------------------------------------------------------------------------
# Functions


def test_prev_and_changed() -> None:
    assert evaluate("prev(a) < a", {"a": 1}, a=2) is True
    assert evaluate("prev(a) < a", a=2) is None  # no previous value: unknown
    assert evaluate("changed(a)", {"a": 1}, a=2) is True
    assert evaluate("changed(a)", {"a": 2}, a=2) is False
    assert evaluate("changed(a)", a=2) is None
    assert evaluate("changed(g)", {"g": "P"}, g="D") is True
    assert evaluate("changed(g)", {"g": "D"}, g="D") is False
    assert evaluate("changed(x)", {"x": math.nan}, x=math.nan) is False
    assert evaluate("g == prev(g)", {"g": "D"}, g="D") is True
    assert evaluate("g != prev(g)", {"g": "P"}, g="D") is True


def test_abs() -> None:
    assert evaluate("abs(a - 10) < 1", a=9.5) is True
    assert evaluate("abs(a) == 3", a=-3) is True
    assert evaluate("abs(-(a)) + 1 == 4", a=3) is True


def test_window_functions() -> None:
    b = Bound('min(s, "1s") == 2 and max(s, "1s") == 6 and avg(s, "1s") == 4')
    for k, v in enumerate([100, 2, 4, 6]):
        b.set(k * 0.5, s=v)  # t = 0, 0.5, 1.0, 1.5: the window [0.5, 1.5] holds 2, 4, 6
    assert b() is True
    b.clock.now = 2.25  # window [1.25, 2.25]: only 6
    assert b() is False
    only = Bound('max(s, "1s") == 6 and min(s, "1s") == 6 and avg(s, "1s") == 6')
    only.set(1.5, s=6)
    only.clock.now = 2.25
    assert only() is True
    only.clock.now = 2.75  # empty window: unknown
    assert only() is None
    assert Bound('not (avg(s, "1s") > 0)')() is None


def test_window_skips_value_table_names() -> None:
    b = Bound('max(s, "10s") == 3')
    b.set(0.0, s=1).set(1.0, s="SNA").set(2.0, s=3)
    assert b() is True
    n = Bound('max(s, "10s") > 0 or not (max(s, "10s") > 0)')
    n.set(0.0, s="SNA")
    assert n() is None  # only names in the window: unknown either way


# ---------------------------------------------------------------------------------------------
# Unknown values: missing signals, division by zero, names in arithmetic


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("missing > 1", False),
        ("not (missing > 1)", False),  # never triggers through not
        ("missing > 1 or a > 1", True),  # unknown or true = true
        ("missing > 1 or a < 1", False),  # unknown or false = unknown
        ("missing > 1 and a < 1", False),  # unknown and false = false
        ("not (missing > 1 and a < 1)", True),
        ("missing == missing", False),
        ("a / 0 > 1", False),
        ("not (a / 0 > 1)", False),
        ("a % 0 == 0", False),
        ("a / (a - 2) > 0 or a == 2", True),
        ("g > 1", False),  # a value-table name in an ordering comparison
        ("not (g > 1)", False),
        ("g + 1 > 0", False),
        ("g != 3", False),  # a name against a number: unknown, not "different"
        ("g == 3", False),
        ("abs(g) > 0", False),
    ],
)
def test_unknown_is_false_and_never_raises(text: str, expected: bool) -> None:
    b = Bound(text)
    b.set(0.0, **{name: ("D" if name == "g" else 2) for name in b.slots if name != "missing"})
    assert (b() is True) is expected


def test_huge_integers_do_not_raise() -> None:
    # An int too large for a float meeting a float raises OverflowError in Python.
    assert evaluate("a * 1.5 > 0", a=10**400) is None
    assert evaluate("a / 3 > 0", a=10**400) is None
    assert evaluate("a > 1.5", a=10**400) is True  # comparing is exact and fine


def test_nothing_is_evaled(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> Any:
        raise AssertionError("eval/exec/compile must not be used")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    assert evaluate("__import__ > 1 or a.b > 1", **{"__import__": 0, "a.b": 2}) is True


# ---------------------------------------------------------------------------------------------
# Errors: the column and what was expected


@pytest.mark.parametrize(
    ("text", "col", "fragment"),
    [
        ("SPEED.SPEED > foo(SPEED)", 15, "unknown function 'foo' (expected one of prev, min"),
        ("", 1, "empty condition"),
        ("a >", 4, "expected a number, a signal, a function call or '(', got end of expression"),
        ("a > 1 b", 7, "expected an operator or 'and'/'or', got 'b'"),
        ("a < b < c", 7, "comparisons cannot be chained"),
        ("(a > 1", 7, "expected ')' to close '(' at col 1, got end of expression"),
        ("a > 1)", 6, "unexpected ')'"),
        ("a && b", 3, "'&&' is not an operator here: use 'and'"),
        ("a || b", 3, "use 'or'"),
        ("a = 1", 3, "use '==' to compare"),
        ("!a", 1, "'!' is not an operator here"),
        ("a ** 2 > 1", 3, "no power operator"),
        ("a > 1 $", 7, "unexpected character '$'"),
        ('a == "D"', 6, "a string is only allowed as the duration"),
        ('a > "1', 5, "unterminated string"),
        ("a > 5s", 5, "a duration is a string"),
        ("a", 1, "the whole expression needs a condition"),
        ("a + 1", 1, "needs a condition"),
        ("a > 1 and b", 11, "'and' needs a condition"),
        ("not a", 5, "'not' needs a condition"),
        ("(a > 1) + 1 > 0", 1, "'+' needs a value"),
        ("a > (b > 1)", 5, "'>' needs a value"),
        ("abs(a > 1) > 0", 7, "expected ')' after the argument of abs()"),
        ("-(a > 1) > 0", 2, "unary '-' needs a value"),
        ("prev(1) > 0", 6, "prev() takes a signal name, got '1'"),
        ("prev(a + 1) > 0", 8, "expected ')' after the signal of prev()"),
        ("changed(abs(a))", 9, "changed() takes a signal name"),
        ("avg(a) > 1", 6, "expected ',' and a duration after the signal"),
        ("avg(a, 2) > 1", 8, "expected a duration string, got '2'"),
        ('avg(a, "2 hours") > 1', 8, 'bad duration "2 hours"'),
        ('avg(a, "61s") > 1', 8, "out of range"),
        ('avg(a, "0ms") > 1', 8, "out of range"),
        ('max(a, "1s", 3) > 1', 12, "expected ')' after the duration of max()"),
        ("1 > 0", 1, "reads no signal"),
        ("a > " + "9" * 400, 5, "number too large"),
        ("a > 1e999", 5, "number too large"),
        ("a.b.c > 1", 4, "unexpected character '.'"),
        ("a > 1 and", 10, "got end of expression"),
        ("and > 1", 1, "got 'and'"),
        ("a\x00 > 1", 2, "unexpected character '\\x00'"),
    ],
)
def test_errors_name_the_column(text: str, col: int, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression(text)
    assert info.value.column == col, str(info.value)
    assert fragment in info.value.problem, str(info.value)
    assert str(info.value).startswith(f"col {col}: ")


def test_unknown_function_lists_all_functions() -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression("SPEED > 1 and foo(x)")
    assert str(info.value) == (
        "col 15: unknown function 'foo' (expected one of " + ", ".join(FUNCTIONS) + ")"
    )


def test_limits() -> None:
    with pytest.raises(ExpressionError, match="too long"):
        parse_expression("a > " + " " * MAX_LENGTH + "1")
    ok = "(" * (MAX_DEPTH - 2) + "a > 1" + ")" * (MAX_DEPTH - 2)
    assert parse_expression(ok).signals == {"a"}
    for deep in [
        "(" * 500 + "a > 1" + ")" * 500,
        "-" * 500 + "a > 1",
        "not " * 300 + "a > 1",
        "a" + " + a" * 100 + " > 1",
        "abs(" * 100 + "a" + ")" * 100 + " > 1",
    ]:
        with pytest.raises(ExpressionError, match="nested too deeply"):
            parse_expression(deep)
    # Long flat conditions are fine: and/or chains are one node.
    wide = " and ".join(f"s{k} > {k}" for k in range(150))
    assert len(parse_expression(wide).signals) == 150


def test_not_a_string() -> None:
    with pytest.raises(ExpressionError, match="must be a string"):
        parse_expression(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Properties: any text compiles or raises ExpressionError; compiled trees agree with a reference

_ALPHABET = "abSPED_.:()<>=!+-*/%, \"'0123456789eE\t"
_TOKENS = [
    "a", "b", "SPEED.SPEED", "can0:M.S", "1", "0", "2.5", ".5", "1e3", "(", ")", ",", "+", "-",
    "*", "/", "%", "<", "<=", ">", ">=", "==", "!=", "and", "or", "not", "prev", "changed", "min",
    "max", "avg", "abs", "foo", '"2s"', '"500ms"', '"x"', "'", '"', "=", "&&", "!", "$",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=_ALPHABET, max_size=60),
        st.text(max_size=40),
        st.lists(st.sampled_from(_TOKENS), max_size=25).map(" ".join),
        st.lists(st.sampled_from(_TOKENS), max_size=25).map("".join),
    )
)
def test_any_text_compiles_or_raises_expression_error(text: str) -> None:
    try:
        expression = parse_expression(text)
    except ExpressionError as e:
        assert 1 <= e.column <= len(text) + 1
        return
    # It parsed: binding and evaluating with nothing known must work and be false.
    bound = Bound(text)
    assert bound() in (False, None)
    assert expression.signals


# A test-side tree: ("num", v) | ("sig", name) | ("prev", name) | ("neg", x) | ("abs", x)
# | ("bin", op, l, r) | ("cmp", op, l, r) | ("not", x) | ("and" | "or", [items]).
Tree = tuple[Any, ...]
_PREC = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6}
_SIGNALS = ("a", "b", "M.c")


def _prec(tree: Tree) -> int:
    kind = tree[0]
    if kind == "bin":
        return _PREC[tree[1]]
    if kind == "neg":
        return 7
    return _PREC.get(kind, 8)


def _numbers() -> st.SearchStrategy[Tree]:
    return st.one_of(
        st.integers(0, 20).map(lambda v: ("num", v)),
        st.sampled_from([0.5, 1.25, 3.0, 1e-3, 2.5e2]).map(lambda v: ("num", v)),
    )


def _values() -> st.SearchStrategy[Tree]:
    leaves = st.one_of(
        _numbers(),
        st.sampled_from(_SIGNALS).map(lambda s: ("sig", s)),
        st.sampled_from(_SIGNALS).map(lambda s: ("prev", s)),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.tuples(st.just("bin"), st.sampled_from("+-*/%"), inner, inner),
            st.tuples(st.just("neg"), inner),
            st.tuples(st.just("abs"), inner),
        ),
        max_leaves=8,
    )


def _conditions() -> st.SearchStrategy[Tree]:
    comparisons = st.tuples(
        st.just("cmp"), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), _values(), _values()
    )
    return st.recursive(
        comparisons,
        lambda inner: st.one_of(
            st.tuples(st.just("not"), inner),
            st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3)),
        ),
        max_leaves=5,
    )


def render(tree: Tree) -> str:
    """Text with as few parentheses as the precedence rules allow."""
    kind = tree[0]
    if kind == "num":
        return repr(tree[1])
    if kind == "sig":
        return str(tree[1])
    if kind == "prev":
        return f"prev({tree[1]})"
    if kind == "abs":
        return f"abs({render(tree[1])})"
    if kind == "neg":
        inner = render(tree[1])
        return f"-{inner}" if _prec(tree[1]) >= 7 else f"-({inner})"
    if kind in ("bin", "cmp"):
        op, left, right = tree[1], tree[2], tree[3]
        p = _prec(tree)
        lt, rt = render(left), render(right)
        if _prec(left) < p:
            lt = f"({lt})"
        if _prec(right) <= p:  # left associative: an equal right operand needs parentheses
            rt = f"({rt})"
        return f"{lt} {op} {rt}"
    if kind == "not":
        inner = render(tree[1])
        return f"not {inner}" if _prec(tree[1]) >= 3 else f"not ({inner})"
    p = _prec(tree)
    return f" {kind} ".join(
        render(item) if _prec(item) > p else f"({render(item)})" for item in tree[1]
    )


def reference(tree: Tree, values: Mapping[str, float | int | None], prev: Mapping[str, Any]) -> Any:
    """A plain recursive interpreter with the documented semantics; None is unknown."""
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind == "sig":
        return values[tree[1]]
    if kind == "prev":
        return prev[tree[1]]
    if kind in ("neg", "abs", "not"):
        x = reference(tree[1], values, prev)
        if x is None:
            return None
        return -x if kind == "neg" else abs(x) if kind == "abs" else not x
    if kind in ("bin", "cmp"):
        x = reference(tree[2], values, prev)
        y = reference(tree[3], values, prev)
        if x is None or y is None:
            return None
        op = tree[1]
        if op in "/%" and y == 0:
            return None
        return {
            "+": lambda: x + y,
            "-": lambda: x - y,
            "*": lambda: x * y,
            "/": lambda: x / y,
            "%": lambda: x % y,
            "<": lambda: x < y,
            "<=": lambda: x <= y,
            ">": lambda: x > y,
            ">=": lambda: x >= y,
            "==": lambda: x == y,
            "!=": lambda: x != y,
        }[op]()
    results = [reference(item, values, prev) for item in tree[1]]
    decisive = kind == "or"  # True decides an "or", False an "and"
    if decisive in results:
        return decisive
    return None if None in results else not decisive


@dataclass
class Case:
    tree: Tree
    values: dict[str, float | int | None]
    prev: dict[str, float | int | None]


_VALUE = st.one_of(st.none(), st.integers(-5, 5), st.sampled_from([0.5, -2.25, 7.0]))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.builds(
        Case,
        _conditions(),
        st.fixed_dictionaries({s: _VALUE for s in _SIGNALS}),
        st.fixed_dictionaries({s: _VALUE for s in _SIGNALS}),
    )
)
def test_compiled_trees_agree_with_a_reference_interpreter(case: Case) -> None:
    text = render(case.tree)
    try:
        bound = Bound(text)
    except ExpressionError as e:
        # Only the depth limit, or a tree of constants, may refuse a generated tree.
        assert "nested too deeply" in e.problem or "reads no signal" in e.problem
        return
    for name in _SIGNALS:
        if name not in bound.slots:
            continue
        slot = bound.slots[name]
        # prev is only known once the value is known too (it is the update before).
        value, previous = case.values[name], case.prev[name]
        if value is not None:
            if previous is not None:
                slot.update(-1.0, previous)
            slot.update(0.0, value)
    prev = {n: (case.prev[n] if case.values[n] is not None else None) for n in _SIGNALS}
    expected = reference(case.tree, case.values, prev)
    assert bound() is expected, text
