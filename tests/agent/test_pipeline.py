"""TelemetryPipeline: frames of several buses → decoded signals → records and the last state."""

from __future__ import annotations

import can
import pytest

from agent.pipeline import TelemetryPipeline
from agent.schemes import SchemeError, parse_schemes
from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc, load_dbc_string

DB = load_dbc(SAMPLE_VEHICLE_DBC).database
OTHER = load_dbc_string(
    'VERSION ""\n\nBU_: A\n\nBO_ 1536 Other: 2 A\n SG_ Temp : 0|16@1+ (0.1,-40) [-40|100] "C" A\n'
).database
SPEED = DB.get_message_by_name("ESC_VehicleSpeed")

SCHEMES = parse_schemes(
    """
[[scheme]]
id = "p"
kind = "periodic"
period_ms = 100
signals = ["ESC_VehSpd", "can1:Temp"]

[[scheme]]
id = "fast"
kind = "condition"
condition = "ESC_VehSpd > 50"
"""
)


def _speed(t: float, kmh: float, bus: str = "can0") -> can.Message:
    values: dict[str, float] = {s.name: 0 for s in SPEED.signals}
    values["ESC_VehSpd"] = kmh
    data = SPEED.encode(values, strict=False)
    return can.Message(timestamp=t, arbitration_id=SPEED.frame_id, data=data, channel=bus)


def _temp(t: float, celsius: float) -> can.Message:
    data = OTHER.get_message_by_name("Other").encode({"Temp": celsius})
    return can.Message(timestamp=t, arbitration_id=1536, data=data, channel="can1", dlc=2)


def test_records_states_and_counters() -> None:
    pipeline = TelemetryPipeline(
        {"can0": [DB], "can1": [OTHER]}, SCHEMES, state_signals=["ESC_VehSpd"], state_interval_ms=0
    )
    frames = [_speed(100.0 + i * 0.02, 40 + i, "can0") for i in range(20)]
    frames += [_temp(100.05, 21.5)]
    frames += [can.Message(timestamp=100.3, arbitration_id=0x7FF, data=b"", channel="can0")]
    frames.sort(key=lambda f: f.timestamp)
    records = pipeline.process(frames)
    periodic = [r for r in records if r.scheme_id == "p"]
    triggered = [r for r in records if r.scheme_id == "fast"]
    assert [round(r.trigger_time, 3) for r in periodic] == [100.1, 100.2, 100.3]
    assert {s.signal for s in periodic[-1].samples} == {"ESC_VehSpd", "can1:Temp"}
    assert len(triggered) == 1  # rising edge only
    assert pipeline.stats.frames == 22 and pipeline.stats.decoded == 21
    assert pipeline.stats.records == len(records)
    state = pipeline.take_state()
    assert state is not None and state["ESC_VehSpd"].value == pytest.approx(59, abs=0.1)
    assert pipeline.take_state() is None  # nothing changed since
    assert pipeline.frame_ids()["can1"] == frozenset({1536})


def test_a_signal_in_no_dbc_is_refused_and_nothing_changes() -> None:
    pipeline = TelemetryPipeline({"can0": [DB]}, SCHEMES[:1][0:0])
    with pytest.raises(SchemeError, match="'Nope' is not defined in the DBCs of any bus"):
        pipeline.replace_schemes(
            parse_schemes('[[scheme]]\nid="x"\nkind="periodic"\nperiod_ms=100\nsignals=["Nope"]')
        )
    with pytest.raises(SchemeError, match="'can1:ESC_VehSpd' is not defined in bus 'can1'"):
        pipeline.replace_schemes(
            parse_schemes(
                '[[scheme]]\nid="x"\nkind="periodic"\nperiod_ms=100\nsignals=["can1:ESC_VehSpd"]'
            )
        )
    assert pipeline.schemes == ()
    with pytest.raises(SchemeError, match="'Nope'"):
        TelemetryPipeline({"can0": [DB]}, (), state_signals=["Nope"])


def test_ticks_close_periods_when_the_bus_is_quiet() -> None:
    pipeline = TelemetryPipeline({"can0": [DB], "can1": [OTHER]}, SCHEMES)
    assert pipeline.process([_speed(10.0, 20)]) == []
    records = pipeline.tick(10.35)
    # A jump forward gives one record per periodic scheme: the values did not change between.
    assert [round(r.trigger_time, 2) for r in records] == [10.3]


def test_device_buses_resolve_like_can_and_feed_schemes_and_state() -> None:
    schemes = parse_schemes(
        """
[[scheme]]
id = "where"
kind = "on_change"
signals = ["GNSS.latitude", "modem:rssi_dbm"]

[[scheme]]
id = "fast-and-home"
kind = "condition"
condition = 'ESC_VehSpd > 50 and inside("home")'

[[geofence]]
id = "home"
circle = { lat = 48.0, lon = 11.0, radius_m = 100 }
"""
    )
    devices = {"gnss": {"GNSS": ["latitude", "longitude"]}, "modem": {"MODEM": ["rssi_dbm"]}}
    with pytest.raises(SchemeError, match=r"GNSS\.latitude.*\(can0, modem\)"):
        TelemetryPipeline({"can0": [DB]}, schemes, device_buses={"modem": devices["modem"]})
    pipeline = TelemetryPipeline(
        {"can0": [DB]}, schemes, state_signals=["gnss:GNSS.latitude"], device_buses=devices
    )
    assert set(pipeline.frame_ids()) == {"can0"}  # nothing to read off a device bus
    records = pipeline.process_signals(10.0, "gnss", "GNSS", {"latitude": 48.0, "longitude": 11.0})
    records += pipeline.process_signals(10.1, "modem", "MODEM", {"rssi_dbm": -71})
    records += pipeline.process([_speed(10.2, 60.0)])
    assert [r.scheme_id for r in records] == ["where", "where", "fast-and-home"]
    state = pipeline.take_state()
    assert state is not None and state["gnss:GNSS.latitude"].value == 48.0
    with pytest.raises(ValueError, match="also a CAN bus"):
        TelemetryPipeline({"gnss": [DB]}, (), device_buses=devices)
