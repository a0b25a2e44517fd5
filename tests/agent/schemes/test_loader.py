"""Scheme documents: the documented example loads, and every error names line, key and problem."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.errors import InputError
from agent.schemes import (
    Condition,
    OnChange,
    Periodic,
    SchemeError,
    SignalSpec,
    load_schemes,
    loader,
    parse_scheme_document,
    parse_schemes,
)


def documented_example() -> str:
    """The TOML example in the loader's module docstring (it goes into the README)."""
    doc = loader.__doc__ or ""
    start = doc.index("::\n\n") + 4
    end = doc.index("\n\nKeys by kind")
    return textwrap.dedent(doc[start:end])


def test_the_documented_example_loads() -> None:
    periodic, changes, over60, depot = parse_schemes(documented_example(), "example.toml")
    assert isinstance(depot.collection, Condition)
    assert [g.id for g in depot.collection.geofences] == ["depot"]
    assert depot.collection.geofences[0].contains(48.1374, 11.5755)
    assert periodic.id == "drive-10hz" and periodic.kind == "periodic"
    assert periodic.priority == 5 and periodic.description == "speed profile"
    assert periodic.start == dt.datetime(2025, 6, 1, tzinfo=dt.UTC).timestamp()
    assert periodic.expiry == dt.datetime(2025, 12, 31, 22, 59, 59, tzinfo=dt.UTC).timestamp()
    assert periodic.collection == Periodic(
        100,
        (
            SignalSpec("SPEED.SPEED", min_sample_period_ms=500),
            SignalSpec("can0:ENGINE_RPM.RPM", min_sample_period_ms=500),
        ),
    )
    assert changes.collection == OnChange(
        (SignalSpec("GEAR_PACKET.GEAR"), SignalSpec("SPEED.SPEED", deadband=2.0))
    )
    c = over60.collection
    assert isinstance(c, Condition)
    assert over60.priority == 1
    assert c.expression.text == "SPEED.SPEED > 60 and prev(SPEED.SPEED) <= 60"
    assert c.rising_edge_only and c.min_interval_ms == 10_000
    assert [s.name for s in c.capture] == ["SPEED.SPEED", "GAS_PEDAL.GAS_PEDAL"]
    assert (c.pre_ms, c.post_ms) == (5000, 2000)


def test_defaults_and_empty_documents() -> None:
    assert parse_schemes("") == ()
    assert parse_schemes("version = 1") == ()
    (s,) = parse_schemes(
        """
        [[scheme]]
        id = "c"
        kind = "condition"
        condition = "b.x > 1 or a > 2"
        """
    )
    c = s.collection
    assert isinstance(c, Condition)
    assert s.priority == 5 and s.start is None and s.expiry is None
    assert [x.name for x in c.capture] == ["a", "b.x"]  # default: what the condition reads
    assert c.rising_edge_only and c.min_interval_ms == 0 and c.pre_ms == c.post_ms == 0


def test_per_signal_tables_and_sub_tables() -> None:
    (s,) = parse_schemes(
        """
        [[scheme]]
        id = "x"
        kind = "on_change"
        signals = ["A", "M.B", "can1:M.C"]
        min_sample_period_ms = { "M.B" = 250 }

        [scheme.deadband]
        "M.B" = 0.5
        "can1:M.C" = 3
        """
    )
    assert s.collection == OnChange(
        (
            SignalSpec("A"),
            SignalSpec("M.B", deadband=0.5, min_sample_period_ms=250),
            SignalSpec("can1:M.C", deadband=3.0),
        )
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000", 1_700_000_000.0),
        ("1700000000.5", 1_700_000_000.5),
        ("2024-01-01T00:00:00Z", 1_704_067_200.0),
        ("2024-01-01T02:00:00+02:00", 1_704_067_200.0),
        ('"2024-01-01T00:00:00Z"', 1_704_067_200.0),
        ('"2024-01-01T01:00:00.250+01:00"', 1_704_067_200.25),
    ],
)
def test_times(value: str, expected: float) -> None:
    (s,) = parse_schemes(
        f'[[scheme]]\nid = "p"\nkind = "periodic"\nperiod_ms = 100\nsignals = ["A"]\n'
        f"start = {value}\n"
    )
    assert s.start == expected


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "schemes.toml"
    path.write_text(documented_example(), encoding="utf-8")
    assert [s.id for s in load_schemes(path)] == ["drive-10hz", "changes", "over-60", "at-depot"]
    with pytest.raises(SchemeError, match="file not found") as info:
        load_schemes(tmp_path / "missing.toml")
    assert info.value.source.endswith("missing.toml")
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe[[scheme]]")
    with pytest.raises(SchemeError, match="cannot read"):
        load_schemes(str(tmp_path / "bad.toml"))


def test_command_payloads_take_the_same_structure() -> None:
    payload = json.loads(
        """
        {"version": 1, "scheme": [
          {"id": "p", "kind": "periodic", "period_ms": 1000.0, "signals": ["A"],
           "start": "2024-01-01T00:00:00Z", "expiry": 1704067300},
          {"id": "c", "kind": "condition", "condition": "A > 1", "post_ms": 500}
        ]}
        """
    )
    p, c = parse_scheme_document(payload, "cmd/schemes")
    assert isinstance(p.collection, Periodic) and p.collection.period_ms == 1000
    assert (p.start, p.expiry) == (1_704_067_200.0, 1_704_067_300.0)
    assert isinstance(c.collection, Condition) and c.collection.post_ms == 500
    with pytest.raises(SchemeError) as info:
        parse_scheme_document({"scheme": [{"id": "p", "kind": "periodic"}]}, "cmd/schemes")
    assert str(info.value) == "cmd/schemes: scheme[0].period_ms: is required"
    assert info.value.line is None
    with pytest.raises(SchemeError, match="must be a table"):
        parse_scheme_document([], "cmd/schemes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Errors: each names the source, the line and the key

BASE = """\
version = 1

[[scheme]]
id = "p"
kind = "periodic"
period_ms = 100
signals = ["A"]

[[scheme]]
id = "c"
kind = "condition"
condition = "A > 1"
"""

# (what to append to BASE, line, key, fragment of the problem)
ERRORS: list[tuple[str, int, str, str]] = [
    ('[[scheme]]\nid = "x"\n', 13, "scheme[2].kind", "is required"),
    ('[[scheme]]\nid = "x"\nkind = "sometimes"\n', 15, "scheme[2].kind", "'sometimes' is not one"),
    ('[[scheme]]\nkind = "on_change"\nsignals = ["A"]\n', 13, "scheme[2].id", "is required"),
    ('[[scheme]]\nid = 5\nkind = "on_change"\n', 14, "scheme[2].id", "must be a string"),
    ('[[scheme]]\nid = "a b"\nkind = "on_change"\n', 14, "scheme[2].id", "1–64 characters"),
    ('[[scheme]]\nid = "p"\nkind = "on_change"\nsignals = ["A"]\n', 14, "scheme[2].id",
     "'p' is already the id of scheme[0]"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\nperiod_ms = 5\n', 17,
     "scheme[2].period_ms",
     "unknown key for a scheme of kind 'on_change' (expected one of: id, kind"),
    ('[[scheme]]\nid = "x"\nkind = "periodic"\nsignals = ["A"]\n', 13, "scheme[2].period_ms",
     "is required"),
    ('[[scheme]]\nid = "x"\nkind = "periodic"\nperiod_ms = 5\nsignals = ["A"]\n', 16,
     "scheme[2].period_ms", "5 is out of range [10, 86,400,000]"),
    ('[[scheme]]\nid = "x"\nkind = "periodic"\nperiod_ms = 10.5\nsignals = ["A"]\n', 16,
     "scheme[2].period_ms", "must be a whole number, not 10.5"),
    ('[[scheme]]\nid = "x"\nkind = "periodic"\nperiod_ms = "1s"\nsignals = ["A"]\n', 16,
     "scheme[2].period_ms", "must be a whole number, not a string"),
    ('[[scheme]]\nid = "x"\nkind = "periodic"\nperiod_ms = 100\n', 13, "scheme[2].signals",
     "is required"),
    ('[[scheme]]\nid = "x"\nkind = "periodic"\nperiod_ms = 100\nsignals = []\n', 17,
     "scheme[2].signals", "at least one signal"),
    ('[[scheme]]\nid = "x"\nkind = "periodic"\nperiod_ms = 100\nsignals = "A"\n', 17,
     "scheme[2].signals", "must be a list of signal names, not a string"),
    ('[[scheme]]\nid = "x"\nkind = "periodic"\nperiod_ms = 100\nsignals = [\n  "A",\n'
     '  "B..C",\n]\n', 19, "scheme[2].signals", "'B..C' is not a signal name"),
    ('[[scheme]]\nid = "x"\nkind = "periodic"\nperiod_ms = 100\nsignals = ["A", 1]\n', 17,
     "scheme[2].signals", "holds a number"),
    ('[[scheme]]\nid = "x"\nkind = "periodic"\nperiod_ms = 100\nsignals = ["A",\n "A"]\n', 18,
     "scheme[2].signals", "'A' is listed twice"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\ndeadband = -1\n', 17,
     "scheme[2].deadband", "-1 must be ≥ 0"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\ndeadband = { B = 1 }\n', 17,
     "scheme[2].deadband", "'B' is not one of this scheme's signals (A)"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\n[scheme.deadband]\nA = "x"\n',
     18, "scheme[2].deadband", "deadband of 'A' must be a number"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\nmin_sample_period_ms = 0.5\n',
     17, "scheme[2].min_sample_period_ms", "must be whole ms"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\npriority = 10\n', 17,
     "scheme[2].priority", "10 is out of range [0, 9]"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\npriority = true\n', 17,
     "scheme[2].priority", "must be a whole number, not a boolean"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\nstart = 2024-01-01T00:00:00\n',
     17, "scheme[2].start", "needs a UTC offset"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\nstart = 2024-01-01\n', 17,
     "scheme[2].start", "needs a date, a time of day and an offset"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\nstart = "yesterday"\n', 17,
     "scheme[2].start", "'yesterday' is not an ISO 8601 date-time"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\nexpiry = -5\n', 17,
     "scheme[2].expiry", "epoch seconds must be ≥ 0"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\nstart = 200\nexpiry = 100\n',
     18, "scheme[2].expiry", "must be after start"),
    ('[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = ["A"]\ndescription = 3\n', 17,
     "scheme[2].description", "must be a string"),
    ('[[scheme]]\nid = "x"\nkind = "condition"\n', 13, "scheme[2].condition", "is required"),
    ('[[scheme]]\nid = "x"\nkind = "condition"\ncondition = 3\n', 16, "scheme[2].condition",
     "must be a string"),
    ('[[scheme]]\nid = "x"\nkind = "condition"\ncondition = "SPEED.SPEED > foo(1)"\n', 16,
     "scheme[2].condition", "col 15: unknown function 'foo' (expected one of prev, min, max"),
    ('[[scheme]]\nid = "x"\nkind = "condition"\ncondition = "A > 1"\nrising_edge_only = 1\n',
     17, "scheme[2].rising_edge_only", "must be true or false"),
    ('[[scheme]]\nid = "x"\nkind = "condition"\ncondition = "A > 1"\npre_ms = 60001\n', 17,
     "scheme[2].pre_ms", "out of range [0, 60,000]"),
    ('[[scheme]]\nid = "x"\nkind = "condition"\ncondition = "A > 1"\nmin_interval_ms = -1\n',
     17, "scheme[2].min_interval_ms", "out of range"),
    ('[[scheme]]\nid = "x"\nkind = "condition"\ncondition = "A > 1"\ncapture = []\n', 17,
     "scheme[2].capture", "at least one signal"),
    ('[[scheme]]\nid = "x"\nkind = "condition"\ncondition = "A > 1"\ncapture = ["A"]\n'
     "deadband = 1\n", 18, "scheme[2].deadband", "unknown key for a scheme of kind 'condition'"),
    ('[[scheme]]\nid = "x"\nkind = "condition"\ncondition = "A > 1"\ncapture = ["A"]\n'
     "min_sample_period_ms = { B = 5 }\n", 18, "scheme[2].min_sample_period_ms",
     "'B' is not one of this scheme's signals"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "line", "key", "fragment"), ERRORS)
def test_errors_name_line_and_key(extra: str, line: int, key: str, fragment: str) -> None:
    text = BASE + extra
    with pytest.raises(SchemeError) as info:
        parse_schemes(text, "schemes.toml")
    error = info.value
    assert (error.source, error.line, error.key) == ("schemes.toml", line, key), str(error)
    assert fragment in error.problem, str(error)
    assert str(error) == f"schemes.toml:{line}: {key}: {error.problem}"
    assert isinstance(error, InputError)


def test_the_same_errors_arrive_without_lines_from_payloads() -> None:
    import tomllib

    for extra, _, key, fragment in ERRORS:
        data: dict[str, Any] = tomllib.loads(BASE + extra)
        with pytest.raises(SchemeError) as info:
            parse_scheme_document(data, "payload")
        assert info.value.key == key and fragment in info.value.problem
        assert info.value.line is None


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("version = 2\n", 1, "version", "2 is not supported (expected 1)"),
        ("[[scheme]]\nid = 'a'\n[[scheme]]\nx = [\n", 4, None, "TOML syntax error"),
        ('[[scheme]]\nid = "a"\nid = "b"\n', 3, None, "TOML syntax error"),
        ('name = "x"\n', 1, "name", "unknown key (expected one of: version, scheme, geofence)"),
        ("scheme = 3\n", 1, "scheme", "must be an array of tables"),
        ("scheme = [1]\n", None, "scheme[0]", "must be a table, not a number"),
    ],
)
def test_document_level_errors(text: str, line: int | None, key: str | None, fragment: str) -> None:
    with pytest.raises(SchemeError) as info:
        parse_schemes(text, "s.toml")
    assert (info.value.line, info.value.key) == (line, key), str(info.value)
    assert fragment in info.value.problem


def test_limits() -> None:
    many = "".join(
        f'[[scheme]]\nid = "s{k}"\nkind = "on_change"\nsignals = ["A"]\n' for k in range(257)
    )
    with pytest.raises(SchemeError, match="at most 256"):
        parse_schemes(many)
    names = ", ".join(f'"S{k}"' for k in range(257))
    with pytest.raises(SchemeError, match="at most 256"):
        parse_schemes(f'[[scheme]]\nid = "x"\nkind = "on_change"\nsignals = [{names}]\n')
