"""The scheme model: signal names, validation of hand-built schemes, immutability."""

from __future__ import annotations

import dataclasses

import pytest

from agent.schemes import (
    Condition,
    OnChange,
    Periodic,
    Scheme,
    SignalRef,
    SignalSpec,
    parse_expression,
)


@pytest.mark.parametrize(
    ("text", "ref", "decoder"),
    [
        ("SPEED", SignalRef("SPEED"), "SPEED"),
        ("SPEED.SPEED", SignalRef("SPEED", "SPEED"), "SPEED.SPEED"),
        ("can0:SPEED.SPEED", SignalRef("SPEED", "SPEED", "can0"), "SPEED.SPEED"),
        ("can1:RPM", SignalRef("RPM", None, "can1"), "RPM"),
    ],
)
def test_signal_names(text: str, ref: SignalRef, decoder: str) -> None:
    assert SignalRef.parse(text) == ref
    assert str(ref) == text
    assert ref.decoder_name() == decoder


@pytest.mark.parametrize("bad", ["", "A.B.C", "1A", "a b", "can0:", ":A", "A.", "é", "A-B"])
def test_bad_signal_names(bad: str) -> None:
    with pytest.raises(ValueError, match="not a signal name"):
        SignalRef.parse(bad)


def test_matching() -> None:
    assert SignalRef.parse("SPEED").matches("can0", "ANY")
    assert SignalRef.parse("M.S").matches("can1", "M")
    assert not SignalRef.parse("M.S").matches("can1", "N")
    assert SignalRef.parse("can0:M.S").matches("can0", "M")
    assert not SignalRef.parse("can0:M.S").matches("can1", "M")
    assert SignalRef.parse("can0:S").matches("can0", "X")


def test_hand_built_schemes_are_validated() -> None:
    spec = SignalSpec("A")
    with pytest.raises(ValueError):
        Periodic(5, (spec,))
    with pytest.raises(ValueError):
        Periodic(100, ())
    with pytest.raises(ValueError):
        OnChange((spec, spec))
    with pytest.raises(ValueError):
        SignalSpec("A", deadband=-1)
    with pytest.raises(ValueError):
        SignalSpec("A..B")
    with pytest.raises(ValueError):
        Scheme("x", OnChange((spec,)), priority=10)
    with pytest.raises(ValueError):
        Scheme("x", OnChange((spec,)), start=10.0, expiry=10.0)
    with pytest.raises(ValueError):
        Scheme("", OnChange((spec,)))
    with pytest.raises(ValueError):
        Condition(parse_expression("A > 1"), pre_ms=60_001)


def test_scheme_properties() -> None:
    cond = Condition(parse_expression("A > 1 and prev(B.C) < 2"))
    assert [s.name for s in cond.capture] == ["A", "B.C"]  # default: what the condition reads
    scheme = Scheme("c", cond, priority=0, start=10.0, expiry=20.0)
    assert scheme.kind == "condition"
    assert scheme.signals_used() == {"A", "B.C"}
    assert not scheme.active_at(9.99) and scheme.active_at(10.0) and not scheme.active_at(20.0)
    periodic = Scheme("p", Periodic(100, (SignalSpec("X"),)))
    assert periodic.kind == "periodic" and periodic.recorded == (SignalSpec("X"),)
    assert periodic.active_at(-1e9) and periodic.active_at(1e12)
    assert Scheme("o", OnChange((SignalSpec("Y"),))).kind == "on_change"
    with pytest.raises(dataclasses.FrozenInstanceError):
        scheme.priority = 3  # type: ignore[misc]
    # Equal definitions compare equal (replace() relies on it); descriptions don't matter.
    again = Scheme("c", Condition(parse_expression("A > 1 and prev(B.C) < 2")), 0, 10.0, 20.0)
    assert again == scheme
    assert dataclasses.replace(scheme, description="x") == scheme
