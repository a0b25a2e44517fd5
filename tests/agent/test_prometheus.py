"""The status snapshot as Prometheus text exposition: names, values, escaping, robustness."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.prometheus import CONTENT_TYPE, escape_label_value, render_prometheus

# The snapshot schema the agent serves (README "Status and metrics"); other status tests use it.
SAMPLE_SNAPSHOT: dict[str, Any] = {
    "vehicle_id": "VIN1",
    "version": "0.1.0",
    "pid": 1234,
    "uptime_s": 12.3,
    "started": 1763785000.0,
    "buses": {
        "can0": {
            "url": "socketcand://127.0.0.1:29536/can0",
            "open": True,
            "frames": 100,
            "filtered": 0,
            "errors": 0,
            "reopens": 0,
            "last_error": "",
        }
    },
    "pipeline": {
        "frames": 100,
        "decoded": 90,
        "decode_errors": 0,
        "records": 12,
        "samples": 340,
        "queued": 12,
        "state_updates": 3,
    },
    "queue": {
        "items": 5,
        "bytes": 4096,
        "payload_bytes": 3000,
        "max_bytes": 268435456,
        "oldest_age_s": 1.5,
        "dropped": {"evicted": 0, "expired": 2, "malformed": 0},
    },
    "uplink": {
        "link": "connected",
        "protocol": "5",
        "broker": "127.0.0.1:1883",
        "batches": 3,
        "records": 7,
        "bytes": 2000,
        "resent": 0,
        "reconnects": 0,
        "connect_failures": 0,
        "malformed": 0,
        "last_error": "",
    },
    "devices": {
        "gnss": {
            "state": "ok",
            "sentences": 500,
            "bad_checksum": 1,
            "garbage": 2,
            "reopens": 0,
            "values": {"latitude": 48.1, "longitude": 11.5, "fix": 1, "satellites": 9},
        },
        "modem": {
            "state": "unresponsive",
            "polls": 7,
            "timeouts": 3,
            "garbage": 0,
            "reopens": 1,
            "values": {"rssi_dbm": -71, "registered": 1, "operator": "Telekom"},
        },
    },
    "commands": {
        "received": 2,
        "accepted": 1,
        "rejected": 1,
        "failed": 0,
        "by_code": {"bad_signature": 1},
    },
    "schemes": {"active": 3, "ids": ["a", "b", "c"], "source": "files"},
}


def sample_snapshot(**changes: Any) -> dict[str, Any]:
    """A deep copy of :data:`SAMPLE_SNAPSHOT` with top-level *changes*."""
    snapshot = copy.deepcopy(SAMPLE_SNAPSHOT)
    snapshot.update(changes)
    return snapshot


# --- a strict reader of the text format (version 0.0.4), independent of prometheus_client -------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'(?:[^"\\\n]|\\[\\"n])*'
_VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)"
_HELP_RE = re.compile(rf"# HELP ({_NAME}) (?:[^\\\n]|\\[\\n])*")
_TYPE_RE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge)")
_SAMPLE_RE = re.compile(
    rf'({_NAME})(?:\{{({_LABEL_NAME}="{_LABEL_VALUE}"(?:,{_LABEL_NAME}="{_LABEL_VALUE}")*)\}})?'
    rf" ({_VALUE})"
)
_LABEL_RE = re.compile(rf'({_LABEL_NAME})="({_LABEL_VALUE})"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], value)


def parse_exposition(text: str) -> Samples:
    """Every sample of *text*, checking each line and the HELP/TYPE structure strictly."""
    samples: Samples = {}
    if not text:
        return samples
    assert text.endswith("\n")
    declared: set[str] = set()
    current: str | None = None
    helped: str | None = None
    for line in text[:-1].split("\n"):
        if m := _HELP_RE.fullmatch(line):
            assert m[1] not in declared, f"family declared twice: {line!r}"
            assert m[1].startswith("tbox_")
            helped = m[1]
        elif m := _TYPE_RE.fullmatch(line):
            assert helped == m[1], f"TYPE without its HELP: {line!r}"
            assert (m[2] == "counter") == m[1].endswith("_total"), line
            declared.add(m[1])
            current = m[1]
        elif m := _SAMPLE_RE.fullmatch(line):
            assert m[1] == current, f"sample outside its family: {line!r}"
            labels = frozenset(
                (name, _unescape(value)) for name, value in _LABEL_RE.findall(m[2] or "")
            )
            key = (m[1], labels)
            assert key not in samples, f"duplicate sample: {line!r}"
            samples[key] = float(m[3])
        else:
            pytest.fail(f"not a valid exposition line: {line!r}")
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


# --- tests ---------------------------------------------------------------------------------------


def test_every_section_becomes_metrics() -> None:
    samples = parse_exposition(render_prometheus(SAMPLE_SNAPSHOT))
    expected = {
        ("tbox_info", (("vehicle_id", "VIN1"), ("version", "0.1.0"))): 1,
        ("tbox_uptime_seconds", ()): 12.3,
        ("tbox_start_time_seconds", ()): 1763785000.0,
        ("tbox_bus_open", (("bus", "can0"),)): 1,
        ("tbox_bus_frames_total", (("bus", "can0"),)): 100,
        ("tbox_bus_filtered_total", (("bus", "can0"),)): 0,
        ("tbox_bus_errors_total", (("bus", "can0"),)): 0,
        ("tbox_bus_reopens_total", (("bus", "can0"),)): 0,
        ("tbox_pipeline_frames_total", ()): 100,
        ("tbox_pipeline_decoded_total", ()): 90,
        ("tbox_pipeline_decode_errors_total", ()): 0,
        ("tbox_records_total", ()): 12,
        ("tbox_samples_total", ()): 340,
        ("tbox_queued_records_total", ()): 12,
        ("tbox_state_updates_total", ()): 3,
        ("tbox_queue_items", ()): 5,
        ("tbox_queue_bytes", ()): 4096,
        ("tbox_queue_payload_bytes", ()): 3000,
        ("tbox_queue_max_bytes", ()): 268435456,
        ("tbox_queue_oldest_age_seconds", ()): 1.5,
        ("tbox_queue_dropped_total", (("reason", "evicted"),)): 0,
        ("tbox_queue_dropped_total", (("reason", "expired"),)): 2,
        ("tbox_queue_dropped_total", (("reason", "malformed"),)): 0,
        ("tbox_uplink_connected", ()): 1,
        ("tbox_uplink_batches_total", ()): 3,
        ("tbox_uplink_records_total", ()): 7,
        ("tbox_uplink_bytes_total", ()): 2000,
        ("tbox_uplink_resent_batches_total", ()): 0,
        ("tbox_uplink_reconnects_total", ()): 0,
        ("tbox_uplink_connect_failures_total", ()): 0,
        ("tbox_uplink_malformed_total", ()): 0,
        ("tbox_device_ok", (("device", "gnss"),)): 1,
        ("tbox_device_ok", (("device", "modem"),)): 0,
        ("tbox_gnss_sentences_total", (("device", "gnss"),)): 500,
        ("tbox_gnss_bad_checksum_total", (("device", "gnss"),)): 1,
        ("tbox_device_garbage_total", (("device", "gnss"),)): 2,
        ("tbox_device_garbage_total", (("device", "modem"),)): 0,
        ("tbox_device_reopens_total", (("device", "gnss"),)): 0,
        ("tbox_device_reopens_total", (("device", "modem"),)): 1,
        ("tbox_modem_polls_total", (("device", "modem"),)): 7,
        ("tbox_modem_timeouts_total", (("device", "modem"),)): 3,
        ("tbox_gnss_fix", ()): 1,
        ("tbox_gnss_satellites", ()): 9,
        ("tbox_modem_rssi_dbm", ()): -71,
        ("tbox_modem_registered", ()): 1,
        ("tbox_commands_received_total", ()): 2,
        ("tbox_commands_total", (("outcome", "accepted"),)): 1,
        ("tbox_commands_total", (("outcome", "rejected"),)): 1,
        ("tbox_commands_total", (("outcome", "failed"),)): 0,
        ("tbox_commands_rejected_total", (("code", "bad_signature"),)): 1,
        ("tbox_schemes_active", ()): 3,
    }
    assert samples == {
        (name, frozenset(labels)): float(v) for (name, labels), v in expected.items()
    }


def test_exact_lines_for_a_counter_with_a_label() -> None:
    text = render_prometheus(SAMPLE_SNAPSHOT)
    assert (
        "# HELP tbox_bus_frames_total CAN frames received per bus.\n"
        "# TYPE tbox_bus_frames_total counter\n"
        'tbox_bus_frames_total{bus="can0"} 100\n'
    ) in text
    assert 'tbox_bus_open{bus="can0"} 1\n' in text
    assert "tbox_uptime_seconds 12.3\n" in text


def test_oldest_age_is_left_out_when_the_queue_is_empty() -> None:
    snapshot = sample_snapshot()
    snapshot["queue"]["oldest_age_s"] = None
    text = render_prometheus(snapshot)
    assert "tbox_queue_oldest_age_seconds" not in text
    assert value(parse_exposition(text), "tbox_queue_items") == 5


def test_a_disconnected_uplink_and_a_closed_bus_are_zero() -> None:
    snapshot = sample_snapshot()
    snapshot["uplink"]["link"] = "disconnected"
    snapshot["buses"]["can0"]["open"] = False
    samples = parse_exposition(render_prometheus(snapshot))
    assert value(samples, "tbox_uplink_connected") == 0
    assert value(samples, "tbox_bus_open", bus="can0") == 0


def test_label_values_are_escaped() -> None:
    nasty = 'a"b\\c\nd'
    snapshot = sample_snapshot(vehicle_id=nasty)
    snapshot["buses"] = {nasty: {"frames": 1}}
    snapshot["commands"]["by_code"] = {nasty: 4}
    text = render_prometheus(snapshot)
    assert 'tbox_bus_frames_total{bus="a\\"b\\\\c\\nd"} 1\n' in text
    samples = parse_exposition(text)
    assert value(samples, "tbox_bus_frames_total", bus=nasty) == 1
    assert value(samples, "tbox_commands_rejected_total", code=nasty) == 4
    assert value(samples, "tbox_info", vehicle_id=nasty, version="0.1.0") == 1
    assert escape_label_value(nasty) == 'a\\"b\\\\c\\nd'


def test_missing_sections_and_keys_are_skipped() -> None:
    assert render_prometheus({}) == ""
    samples = parse_exposition(render_prometheus({"pipeline": {"frames": 7}}))
    assert samples == {("tbox_pipeline_frames_total", frozenset()): 7.0}
    partial = {
        "vehicle_id": "VIN1",
        "uplink": {"batches": 1},  # no link state: no tbox_uplink_connected
        "commands": {"accepted": 1},
        "queue": {"dropped": {}},
    }
    samples = parse_exposition(render_prometheus(partial))
    assert set(samples) == {
        ("tbox_info", frozenset({("vehicle_id", "VIN1")})),
        ("tbox_uplink_batches_total", frozenset()),
        ("tbox_commands_total", frozenset({("outcome", "accepted")})),
    }


def test_values_of_the_wrong_type_are_skipped() -> None:
    snapshot: dict[str, Any] = {
        "vehicle_id": None,
        "uptime_s": "long",
        "buses": {"can0": "open", "can1": {"frames": "many", "errors": 2}},
        "pipeline": [1, 2],
        "queue": "full",
        "uplink": {"link": 1, "batches": None, "records": 3},
        "commands": {"by_code": ["x"], "received": 1},
        "schemes": {"active": "3"},
    }
    samples = parse_exposition(render_prometheus(snapshot))
    assert set(samples) == {
        ("tbox_bus_errors_total", frozenset({("bus", "can1")})),
        ("tbox_uplink_records_total", frozenset()),
        ("tbox_commands_received_total", frozenset()),
    }


def test_special_floats_and_large_counters() -> None:
    text = render_prometheus(
        {"uptime_s": math.inf, "started": math.nan, "pipeline": {"frames": 2**63 + 1}}
    )
    assert "tbox_uptime_seconds +Inf\n" in text
    assert "tbox_start_time_seconds NaN\n" in text
    assert f"tbox_pipeline_frames_total {2**63 + 1}\n" in text
    parse_exposition(text)


def test_content_type_is_the_text_format() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_prometheus_client_parses_it() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    snapshot = sample_snapshot()
    snapshot["buses"]['we"ird\\bus\n'] = {"frames": 5, "open": False}
    families = {
        f.name: f for f in parser.text_string_to_metric_families(render_prometheus(snapshot))
    }
    frames = families["tbox_bus_frames"]
    assert frames.type == "counter"
    by_bus = {s.labels["bus"]: s.value for s in frames.samples if s.name.endswith("_total")}
    assert by_bus == {"can0": 100, 'we"ird\\bus\n': 5}
    assert families["tbox_uplink_connected"].samples[0].value == 1


_label_text = st.text(max_size=30)
_counts = st.integers(min_value=0, max_value=2**64)


@given(
    vehicle_id=_label_text,
    version=_label_text,
    buses=st.dictionaries(_label_text, _counts, max_size=4),
    codes=st.dictionaries(_label_text, _counts, max_size=4),
    reasons=st.dictionaries(_label_text, _counts, max_size=4),
    uptime=st.floats(allow_nan=True, allow_infinity=True),
)
def test_arbitrary_label_strings_always_give_valid_lines(
    vehicle_id: str,
    version: str,
    buses: dict[str, int],
    codes: dict[str, int],
    reasons: dict[str, int],
    uptime: float,
) -> None:
    snapshot = {
        "vehicle_id": vehicle_id,
        "version": version,
        "uptime_s": uptime,
        "buses": {name: {"frames": n, "open": n % 2 == 0} for name, n in buses.items()},
        "queue": {"dropped": reasons},
        "commands": {"by_code": codes},
    }
    samples = parse_exposition(render_prometheus(snapshot))
    # Every label value survives escaping and comes back as it was.
    assert value(samples, "tbox_info", vehicle_id=vehicle_id, version=version) == 1
    for name, n in buses.items():
        assert value(samples, "tbox_bus_frames_total", bus=name) == float(n)
    for code, n in codes.items():
        assert value(samples, "tbox_commands_rejected_total", code=code) == float(n)
    for reason, n in reasons.items():
        assert value(samples, "tbox_queue_dropped_total", reason=reason) == float(n)
