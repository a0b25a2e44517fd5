"""Rule files: every kind loads, errors name file, line, key and rule, writing round-trips."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.errors import KeyFileError, RuleFileError
from security.keys import load_keys, parse_keys
from security.rulefile import format_rules, load_rules, parse_rule_document, parse_rules
from security.rules import (
    DEFAULT_EVENT_IDS,
    KINDS,
    AllowlistSpec,
    BytePattern,
    ContextSpec,
    DlcSpec,
    FloodSpec,
    SecOcSpec,
    Severity,
    TimingSpec,
)

# One rule of every kind, single-entry and list forms mixed.
EVERY_KIND = """
version = 1

[[rule]]
id = "ids"
kind = "allowlist"
severity = "high"
description = "known ids"
bus = "can0"
ids = [0x100, 0x7E0, 0x18DAF110]

[[rule]]
id = "fuzz"
kind = "unknown_burst"
severity = "critical"
description = "fuzzing"
bus = "can0"
window_ms = 50
max_ids = 2

[[rule]]
id = "load"
kind = "flood"
severity = "high"
description = "bus load"
bus = "can0"
max_frames = 500

[[rule]]
id = "prio"
kind = "flood"
severity = "high"
description = "high-priority flood"
bus = "can0"
window_ms = 10.5
max_frames = 3
max_id = 0x0FF
share = 0.5

[[rule]]
id = "dlc"
kind = "dlc"
severity = "medium"
description = "lengths"
bus = "can0"
messages = [
  { can_id = 0x100, dlc = 8 },
  { can_id = 0x7E0, dlc = [3, 8] },
]

[[rule]]
id = "drive-timing"
kind = "timing"
severity = "medium"
description = "Drive every 10 ms"
bus = "can0"
can_id = 0x100
period_ms = 10

[[rule]]
id = "silence"
kind = "suspension"
severity = "medium"
description = "Drive keeps coming"
bus = "can0"
messages = [{ can_id = 0x100, max_silence_ms = 50 }]

[[rule]]
id = "magic"
kind = "payload"
severity = "low"
description = "byte 7 is A5"
bus = "can0"
forbid = true
can_id = 0x7E0
mask = "00 00 00 00 00 00 00 FF"
value = "00:00:00:00:00:00:00:A5"

[[rule]]
id = "speed"
kind = "signal_range"
severity = "high"
description = "speed range"
bus = "can0"
signals = [{ signal = "Drive.Speed", min = 0, max = 250.5 }, { signal = "Gear", max = 9 }]

[[rule]]
id = "speed-rate"
kind = "signal_rate"
severity = "high"
description = "speed rate"
bus = "can0"
signal = "Speed"
max_rate = 50
max_step = 0.5

[[rule]]
id = "speed-agrees"
kind = "plausibility"
severity = "high"
description = "the speed agrees with the wheel speed"
bus = "can0"
signals = [
  { signal = "Drive.Speed", partner = "Wheels.WheelFL", tolerance = 1.5, max_age_ms = 50 },
  { signal = "Speed", partner = "Gnss.Spd", partner_bus = "can1", relative = 0.1, max_age_ms = 1 },
]

[[rule]]
id = "counter"
kind = "counter"
severity = "medium"
description = "counter"
bus = "can0"
can_id = 0x100

[[rule]]
id = "crc"
kind = "checksum"
severity = "high"
description = "crc"
bus = "can0"
messages = [{ can_id = 0x100, algorithm = "crc8_sae_j1850" }]

[[rule]]
id = "replay"
kind = "replay"
severity = "high"
description = "stale counters"
bus = "can0"
messages = [{ can_id = 0x100, signal = "Drive.Drive_Counter", history = 5 }]

[[rule]]
id = "uds"
kind = "context"
severity = "critical"
description = "programming while driving"
bus = "can0"
can_ids = [0x7E0]
uds = ["10 02", "27"]
patterns = [{ mask = "FF", value = "3E" }]
condition = "Drive.Speed > 5"
event_id = 0xB001
sensor_id = 33

[[rule]]
id = "auth"
kind = "secoc"
severity = "critical"
description = "authenticated brake request"
bus = "can1"
can_id = 0x0B0
key = "brake"
data_id = 0x0123
payload_bytes = 4
freshness_bits = 32
freshness_tx_bits = 8
mac_bits = 24
freshness_window = 100
initial_freshness = 7
"""


def test_every_kind_loads_into_frozen_rules() -> None:
    rules = parse_rules(EVERY_KIND, "every.toml")
    assert {rule.kind for rule in rules} == set(KINDS)
    allowlist = rules.get("ids")
    assert allowlist is not None
    assert allowlist.spec == AllowlistSpec("can0", frozenset({0x100, 0x7E0, 0x18DAF110}))
    assert (
        allowlist.severity is Severity.HIGH and allowlist.event_id == DEFAULT_EVENT_IDS["allowlist"]
    )
    assert allowlist.line == 4  # the [[rule]] header
    dlc = rules.get("dlc")
    assert dlc is not None and isinstance(dlc.spec, DlcSpec)
    assert [e.dlcs for e in dlc.spec.entries] == [frozenset({8}), frozenset({3, 8})]
    timing = rules.get("drive-timing")
    assert timing is not None and isinstance(timing.spec, TimingSpec)
    (entry,) = timing.spec.entries
    assert (entry.period_ms, entry.min_count, entry.max_count) == (10.0, 8, 12)  # defaults
    prio = rules.get("prio")
    assert prio is not None and isinstance(prio.spec, FloodSpec)
    assert prio.spec.max_id == 0xFF and prio.spec.counts(0x80) and not prio.spec.counts(0x100)
    context = rules.get("uds")
    assert context is not None and isinstance(context.spec, ContextSpec)
    assert context.spec.uds == (b"\x10\x02", b"\x27")
    assert context.spec.patterns == (BytePattern(b"\xff", b"\x3e"),)
    assert (context.event_id, context.sensor_id) == (0xB001, 33)
    secoc = rules.get("auth")
    assert secoc is not None and isinstance(secoc.spec, SecOcSpec)
    assert secoc.spec.entries[0].profile.freshness_window == 100
    assert rules.buses == {"can0", "can1"}
    with pytest.raises(AttributeError):
        allowlist.id = "other"  # type: ignore[misc]


def test_format_round_trips_every_kind() -> None:
    rules = parse_rules(EVERY_KIND, "every.toml")
    text = format_rules(rules, header="a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\nversion = 1\n")
    again = parse_rules(text, "again.toml")
    assert again.rules == rules.rules
    assert format_rules(again) == format_rules(rules)


def test_load_from_file_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(EVERY_KIND)
    assert len(load_rules(path)) == len(KINDS) + 1
    with pytest.raises(RuleFileError, match=r"rules-missing\.toml: file not found"):
        load_rules(tmp_path / "rules-missing.toml")


def test_decoded_documents_validate_without_lines() -> None:
    document = {
        "rule": [
            {
                "id": "t",
                "kind": "timing",
                "severity": "low",
                "description": "d",
                "bus": "can0",
                "messages": [{"can_id": 256, "period_ms": -1}],
            }
        ]
    }
    with pytest.raises(RuleFileError) as info:
        parse_rule_document(document, "cmd/ids-rules")
    assert str(info.value) == (
        "cmd/ids-rules: rule[0].messages[0].period_ms: -1 must be > 0 and ≤ 3.6e+06 (rule 't')"
    )
    assert info.value.line is None and info.value.rule_id == "t"


def _bad(body: str, *, prefix: str = "") -> RuleFileError:
    text = (
        prefix
        + '[[rule]]\nid = "x1"\nkind = "timing"\nseverity = "high"\ndescription = "d"\n'
        + 'bus = "can0"\n'
        + body
    )
    with pytest.raises(RuleFileError) as info:
        parse_rules(text, "bad.toml")
    return info.value


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "can_id = 0x100\nperiod_ms = 0\n",
            "bad.toml:8: rule[0].period_ms: 0 must be > 0 and ≤ 3.6e+06 (rule 'x1')",
        ),
        (
            "messages = [\n  { can_id = 0x100, period_ms = 10 },\n"
            "  { can_id = 0x101, period = 10 },\n]\n",
            "bad.toml:9: rule[0].messages[1].period: unknown key (expected one of: can_id, "
            "period_ms, min_count, max_count) (rule 'x1')",
        ),
        (
            "messages = [\n  { can_id = 0x100, period_ms = 10 },\n"
            "  { can_id = 0x100, period_ms = 5 },\n]\n",
            "bad.toml:9: rule[0].messages[1].can_id: 0x100 is already in messages[0] (rule 'x1')",
        ),
        (
            "can_id = 0x20000000\nperiod_ms = 10\n",
            "bad.toml:7: rule[0].can_id: 536870912 is not a CAN id (0 … 0x1FFFFFFF) (rule 'x1')",
        ),
        (
            "can_id = 0x100\nperiod_ms = 10\nmin_count = 13\n",
            "bad.toml:9: rule[0].min_count: min_count 13 is above max_count 12 (rule 'x1')",
        ),
        (
            "can_id = 0x100\nperiod_ms = 10\nwindow_periods = 1\n",
            "bad.toml:9: rule[0].window_periods: 1 is out of range [2, 1,000] (rule 'x1')",
        ),
        ("", "bad.toml:1: rule[0].messages: is required: a list of { can_id, period_ms, "),
        (
            "can_id = 0x100\nperiod_ms = 10\nmessages = []\n",
            "bad.toml:7: rule[0].can_id: belongs in the tables of messages",
        ),
        (
            "can_id = 0x100\nperiod_ms = 10\nthreshold = 3\n",
            "bad.toml:9: rule[0].threshold: unknown key",
        ),
        (
            'can_id = "0x100"\nperiod_ms = 10\n',
            "bad.toml:7: rule[0].can_id: must be a CAN id (a number such as 0x7DF), not a string",
        ),
    ],
)
def test_errors_name_file_line_key_and_rule(body: str, expected: str) -> None:
    assert str(_bad(body)).startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rule = 3\n", "bad.toml:1: rule: must be an array of tables ([[rule]]), not a number"),
        ("version = 2\n", "bad.toml:1: version: 2 is not supported (expected 1)"),
        ("[[rule]\n", "bad.toml:1: TOML syntax error: "),
        (
            "rules = []\n",
            "bad.toml:1: rules: unknown key (expected one of: version, revision, rule)",
        ),
        ('[[rule]]\nkind = "dlc"\n', "bad.toml:1: rule[0].id: is required"),
        ('[[rule]]\nid = "a b"\n', "bad.toml:2: rule[0].id: 'a b' must be 1–64 characters"),
        ('[[rule]]\nid = "a"\nkind = "magic"\n', "bad.toml:3: rule[0].kind: 'magic' is not one of"),
        (
            '[[rule]]\nid = "a"\nkind = "dlc"\nseverity = "urgent"\n',
            "bad.toml:4: rule[0].severity: 'urgent' is not one of info, low, medium, high, "
            "critical (rule 'a')",
        ),
    ],
)
def test_document_errors(text: str, expected: str) -> None:
    with pytest.raises(RuleFileError) as info:
        parse_rules(text, "bad.toml")
    assert str(info.value).startswith(expected)


def _one(kind: str, body: str) -> str:
    return (
        f'[[rule]]\nid = "k"\nkind = "{kind}"\nseverity = "low"\ndescription = "d"\n'
        f'bus = "can0"\n{body}'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_one("allowlist", "ids = [1, 1]\n"), "bad.toml:7: rule[0].ids[1]: 0x1 is listed twice"),
        (
            _one("allowlist", "ids = []\n")
            + _one("allowlist", "ids = []\n").replace('"k"', '"k2"'),
            "bad.toml:13: rule[1].bus: bus 'can0' already has an allowlist: rule[0]",
        ),
        (
            _one("unknown_burst", ""),
            "bad.toml:6: rule[0].bus: an unknown_burst rule needs an allowlist rule for bus",
        ),
        (_one("flood", ""), "bad.toml:1: rule[0].max_frames: is required"),
        (
            _one("flood", "max_frames = 5\ncan_ids = [1]\nmax_id = 2\n"),
            "bad.toml:9: rule[0].max_id: give can_ids or max_id, not both",
        ),
        (
            _one("payload", 'can_id = 1\nmask = "FF"\nvalue = "FF00"\n'),
            "bad.toml:9: rule[0].value: has 2 bytes, the mask 1",
        ),
        (
            _one("payload", 'can_id = 1\nmask = "0F"\nvalue = "F0"\n'),
            "bad.toml:9: rule[0].value: sets bits that the mask does not cover",
        ),
        (
            _one("payload", 'can_id = 1\nmask = "0G"\nvalue = "00"\n'),
            "bad.toml:8: rule[0].mask: '0G' is not whole bytes of hex digits",
        ),
        (
            _one("signal_range", 'signal = "A.B"\n'),
            "bad.toml:1: rule[0].min: give min, max or both",
        ),
        (
            _one("signal_range", 'signal = "A.B"\nmin = 5\nmax = 1\n'),
            "bad.toml:9: rule[0].max: max 1.0 is below min 5.0",
        ),
        (
            _one("signal_range", 'signal = "can0:A.B"\nmin = 5\n'),
            "bad.toml:7: rule[0].signal: 'can0:A.B' is not MESSAGE.SIGNAL or SIGNAL",
        ),
        (_one("signal_rate", 'signal = "S"\n'), "rule[0].max_rate: is required"),
        (
            _one("signal_rate", 'signal = "S"\nmax_rate = nan\n'),
            "bad.toml:8: rule[0].max_rate: nan is not a finite number",
        ),
        (
            _one("checksum", 'can_id = 1\nalgorithm = "md5"\n'),
            "bad.toml:8: rule[0].algorithm: 'md5' is not one of crc8_sae_j1850",
        ),
        (
            _one("context", 'can_ids = [0x7E0]\ncondition = "S > 1"\n'),
            "rule[0].uds: a context rule needs",
        ),
        (
            _one("context", 'can_ids = [0x7E0]\nuds = ["10 02"]\ncondition = "S >"\n'),
            "bad.toml:9: rule[0].condition: col 4: ",
        ),
        (
            _one("context", 'can_ids = [0x7E0]\nuds = [""]\ncondition = "S > 1"\n'),
            "bad.toml:8: rule[0].uds[0]: a UDS prefix has 1–7 bytes",
        ),
        (
            _one(
                "secoc", 'can_id = 1\nkey = "k"\ndata_id = 1\npayload_bytes = 60\nmac_bits = 64\n'
            ),
            "rule[0].payload_bytes: the secured PDU would be 69 bytes",
        ),
        (
            _one(
                "secoc",
                'can_id = 1\nkey = "k"\ndata_id = 1\npayload_bytes = 4\nfreshness_bits = 8\n'
                "freshness_tx_bits = 9\n",
            ),
            "bad.toml:12: rule[0].freshness_tx_bits: 9 is out of range [0, 8]",
        ),
        (
            _one("dlc", "can_id = 1\ndlc = 65\n"),
            "bad.toml:8: rule[0].dlc: 65 is not a data length 0–64",
        ),
        (
            _one("dlc", 'description = "x"\n'),
            "TOML syntax error",  # a key defined twice
        ),
        (
            _one("dlc", "can_id = 1\ndlc = 8\n") + _one("dlc", "can_id = 1\ndlc = 8\n"),
            "bad.toml:10: rule[1].id: 'k' is already the id of rule[0]",
        ),
    ],
)
def test_kind_errors(text: str, expected: str) -> None:
    with pytest.raises(RuleFileError) as info:
        parse_rules(text, "bad.toml")
    assert expected in str(info.value)
    assert str(info.value).startswith("bad.toml")


# ------------------------------------------------------------------------------------------------
# Key files


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(
        'version = 1\n[keys]\nbrake = "2b7e1516 28aed2a6 abf71588 09cf4f3c"\n'
        '"pt.2" = "' + "00:" * 31 + '00"\n'
    )
    keys = load_keys(path)
    assert keys["brake"] == bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    assert keys["pt.2"] == bytes(32)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[keys]\nbrake = "00"\n',
            "k.toml:2: keys.brake: an AES key has 16, 24 or 32 bytes, not 1",
        ),
        ('[keys]\nbrake = "zz"\n', "k.toml:2: keys.brake: is not whole bytes of hex digits"),
        ("[keys]\nbrake = 5\n", "k.toml:2: keys.brake: must be a string of hex digits"),
        ("secret = 1\n", "k.toml:1: secret: unknown key"),
        ("keys = 1\n", "k.toml:1: keys: must be a table"),
        ("[keys\n", "k.toml:1: TOML syntax error"),
    ],
)
def test_key_file_errors_never_show_the_key(text: str, expected: str) -> None:
    with pytest.raises(KeyFileError) as info:
        parse_keys(text, "k.toml")
    assert str(info.value).startswith(expected)


# ------------------------------------------------------------------------------------------------
# Untrusted input: anything loads or fails with RuleFileError


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_loads_or_raises_rule_file_error(text: str) -> None:
    try:
        parse_rules(text, "any.toml")
    except RuleFileError as e:
        assert str(e).startswith("any.toml")


_KEYS = [
    "can_id", "ids", "can_ids", "dlc", "period_ms", "min_count", "max_count", "window_periods",
    "max_silence_ms", "window_ms", "max_frames", "max_id", "max_ids", "forbid", "mask", "value",
    "signal", "min", "max", "max_rate", "max_step", "history", "algorithm", "uds", "patterns",
    "condition", "key", "data_id", "payload_bytes", "freshness_bits", "freshness_tx_bits",
    "mac_bits", "freshness_window", "initial_freshness", "event_id", "sensor_id", "x",
]  # fmt: skip
_LEAVES = st.one_of(
    st.booleans(),
    st.integers(-2, 70),
    st.integers(0, 0x1FFFFFFF),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "FF", "00 FF", "10 02", "Drive.Speed", "Speed", "S > 1", "crc8_h2f", "k"]),
    st.text(st.characters(codec="utf-8", max_codepoint=0xFFFF), max_size=5),
)
_VALUES = st.one_of(
    _LEAVES,
    st.lists(_LEAVES, max_size=3),
    st.lists(st.dictionaries(st.sampled_from(_KEYS), _LEAVES, max_size=4), max_size=2),
)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


_RULES = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["a", "b", "c"]),
            "kind": st.sampled_from(KINDS),
            "severity": st.sampled_from(["high", "low", "bad"]),
            "description": st.just("d"),
            "bus": st.sampled_from(["can0", "can1", ""]),
        }
    ).flatmap(
        lambda fixed: st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=5).map(
            lambda extra: {**extra, **fixed}
        )
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=500, deadline=None)
@given(rules=_RULES)
def test_generated_documents_load_or_raise_and_round_trip(rules: list[dict[str, object]]) -> None:
    text = "".join(
        "[[rule]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in rule.items()) for rule in rules
    )
    try:
        loaded = parse_rules(text, "gen.toml")
    except RuleFileError as e:
        assert re.match(r"gen\.toml(:\d+)?: ", str(e)), str(e)
        return
    assert parse_rules(format_rules(loaded), "again.toml").rules == loaded.rules


_FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
_POSITIVE = st.floats(min_value=1e-9, max_value=3.6e6, allow_nan=False)
_CAN_IDS = st.integers(0, 0x1FFFFFFF)
_VALID_RULES = st.one_of(
    st.builds(
        lambda ids: {"kind": "allowlist", "ids": ids},
        st.lists(_CAN_IDS, unique=True, max_size=20),
    ),
    st.builds(
        lambda entries, window: {"kind": "timing", "window_periods": window, "messages": entries},
        st.lists(
            st.builds(
                lambda can_id, period, lo, extra: {
                    "can_id": can_id,
                    "period_ms": period,
                    "min_count": lo,
                    "max_count": lo + extra + 1,
                },
                _CAN_IDS,
                _POSITIVE,
                st.integers(0, 1000),
                st.integers(0, 1000),
            ),
            min_size=1,
            max_size=4,
            unique_by=lambda e: e["can_id"],
        ),
        st.integers(2, 1000),
    ),
    st.builds(
        lambda lo, span, signal: (
            {"signals": [{"signal": signal, "min": lo, "max": lo + span}]}
            | {"kind": "signal_range"}
        ),
        st.floats(-1e300, 1e300),
        st.floats(0, 1e300),
        st.sampled_from(["A.B", "Speed", "_x.y_2"]),
    ),
    st.builds(
        lambda rate, step: {
            "kind": "signal_rate",
            "signal": "S",
            "max_rate": rate,
            "max_step": step,
        },
        st.floats(0, 1e300),
        st.floats(0, 1e300),
    ),
    st.builds(
        lambda scale, offset, tolerance, relative, age, persistence, span, bus: {
            "kind": "plausibility",
            "signals": [
                {"signal": "A.B", "partner": "C.D", "scale": scale, "offset": offset}
                | {"tolerance": tolerance, "relative": relative, "max_age_ms": age}
                | {"persistence": persistence, "persistence_ms": span}
                | ({} if bus is None else {"partner_bus": bus})
            ],
        },
        _FINITE.filter(bool),
        _FINITE,
        st.floats(1e-9, 1e300),
        st.floats(0, 10),
        _POSITIVE,
        st.integers(1, 100_000),
        st.floats(0, 3.6e6),
        st.none() | st.sampled_from(["can1", "bus two"]),
    ),
    st.builds(
        lambda window, frames, max_id, share: (
            {"kind": "flood", "window_ms": window, "max_frames": frames, "share": share}
            | ({} if max_id is None else {"max_id": max_id})
        ),
        _POSITIVE,
        st.integers(1, 100_000),
        st.none() | _CAN_IDS,
        st.floats(0, 1),
    ),
    st.builds(
        lambda can_id, pattern, forbid: {
            "kind": "payload",
            "forbid": forbid,
            "messages": [
                {
                    "can_id": can_id,
                    "mask": pattern[0].hex(),
                    "value": bytes(v & m for v, m in zip(*pattern, strict=True)).hex(),
                }
            ],
        },
        _CAN_IDS,
        st.integers(1, 64).flatmap(
            lambda n: st.tuples(
                st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n)
            )
        ),
        st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(_VALID_RULES, min_size=1, max_size=4),
    description=st.text(st.characters(codec="utf-8"), min_size=1),
)
def test_valid_rule_sets_round_trip_through_the_writer(
    specs: list[dict[str, object]], description: str
) -> None:
    rules = []
    buses = iter(range(100))
    for n, spec in enumerate(specs):
        common = {
            "id": f"r{n}",
            "severity": "info",
            "description": description if description.strip() else "x",
            "bus": f"can{next(buses)}",
        }
        rules.append({**common, **spec})
    loaded = parse_rule_document({"rule": rules}, "generated")
    again = parse_rules(format_rules(loaded), "written.toml")
    assert again.rules == loaded.rules
