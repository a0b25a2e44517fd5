"""The sample vehicle's DBC: loads strictly and has the structure the simulator relies on."""

from __future__ import annotations

from typing import Any

import cantools
import pytest

from can_dbc import SAMPLE_VEHICLE_DBC
from can_dbc.integrity import IntegritySpec


@pytest.fixture(scope="module")
def db() -> Any:
    return cantools.database.load_file(SAMPLE_VEHICLE_DBC, strict=True)


def _diagnostic(msg: Any) -> bool:
    return bool(msg.send_type == "NoMsgSendType")


def test_path_is_packaged_file() -> None:
    assert SAMPLE_VEHICLE_DBC.name == "tbox_ev.dbc"
    assert SAMPLE_VEHICLE_DBC.is_file()


def test_size_and_nodes(db: Any) -> None:
    assert len(db.messages) >= 40
    assert sum(len(m.signals) for m in db.messages) >= 200
    # Not counting the 96 multiplexed cell voltages and the VIN characters.
    plain = [s for m in db.messages if not m.is_multiplexed() for s in m.signals]
    assert len(plain) >= 200
    nodes = {n.name for n in db.nodes}
    assert {"VCU", "BMS", "MCU", "ESC", "EPS", "BCM", "ADAS", "GW", "TBOX", "OBC"} <= nodes
    assert all(m.senders and m.senders[0] in nodes for m in db.messages)


def test_ids_are_11_bit_and_unique(db: Any) -> None:
    ids = [m.frame_id for m in db.messages]
    assert len(ids) == len(set(ids))
    assert all(not m.is_extended_frame and m.frame_id <= 0x7FF for m in db.messages)
    assert all(m.length == 8 and not m.is_fd for m in db.messages)


def test_cycle_times_and_send_types(db: Any) -> None:
    periodic = [m for m in db.messages if m.send_type == "Cyclic"]
    assert len(periodic) >= 35
    for m in periodic:
        assert m.cycle_time is not None and 10 <= m.cycle_time <= 1000, m.name
    events = [m for m in db.messages if m.send_type == "Event"]
    assert {m.name for m in events} >= {"GW_SwVersions", "TBOX_RemoteCmd"}
    assert all(m.cycle_time is None for m in events)
    assert {m.cycle_time for m in periodic} >= {10, 20, 50, 100, 200, 500, 1000}
    definition = db.dbc.attribute_definitions["GenMsgCycleTime"]
    assert definition.default_value == 0


def test_diagnostic_messages(db: Any) -> None:
    diag = {m.frame_id: m for m in db.messages if _diagnostic(m)}
    assert 0x7DF in diag
    assert {0x7E0, 0x7E8, 0x7E2, 0x7EA} <= set(diag)
    for fid, m in diag.items():
        assert 0x7DF <= fid <= 0x7EF
        assert m.length == 8
        assert m.cycle_time is None
        request = m.dbc.attributes.get("DiagRequest")
        response = m.dbc.attributes.get("DiagResponse")
        assert (request is not None) != (response is not None), m.name


def test_signal_variety(db: Any) -> None:
    signals = [s for m in db.messages for s in m.signals]
    orders = {s.byte_order for s in signals}
    assert orders == {"little_endian", "big_endian"}
    assert sum(s.is_signed for s in signals) >= 15
    assert sum(s.scale != 1 for s in signals) >= 50
    assert sum(s.offset != 0 for s in signals) >= 10
    with_choices = [s for s in signals if s.choices]
    assert len(with_choices) >= 40
    gear = db.get_message_by_name("VCU_DriveState").get_signal_by_name("VCU_Gear")
    assert {int(k): str(v) for k, v in gear.choices.items()} == {
        0: "P",
        1: "R",
        2: "N",
        3: "D",
        7: "Invalid",
    }
    assert db.dbc.value_tables  # VAL_TABLE_ entries
    assert all(m.comment for m in db.messages)
    assert sum(1 for s in signals if s.comment) >= 40


def test_multiplexed_cell_voltages(db: Any) -> None:
    msg = db.get_message_by_name("BMS_CellVoltages")
    assert msg.is_multiplexed()
    mux = next(s for s in msg.signals if s.is_multiplexer)
    groups = {v for s in msg.signals if s.multiplexer_ids for v in s.multiplexer_ids}
    assert mux.name == "BMS_CellGroup" and groups == set(range(32))
    data = msg.encode(
        {
            "BMS_CellGroup": 5,
            "BMS_CellVolt016": 3.7,
            "BMS_CellVolt017": 3.71,
            "BMS_CellVolt018": 3.72,
        }
    )
    decoded = msg.decode(data)
    assert decoded["BMS_CellVolt017"] == pytest.approx(3.71)


def test_integrity_declared_on_safety_messages(db: Any) -> None:
    protected = {}
    for m in db.messages:
        spec = IntegritySpec.for_message(m)
        if spec is not None:
            protected[m.name] = spec
    assert len(protected) >= 8
    assert {"ESC_VehicleSpeed", "ESC_WheelSpeeds", "EPS_Steering", "VCU_DriveState"} <= set(
        protected
    )
    for name, spec in protected.items():
        assert spec.declared and spec.algorithm, name
        assert spec.counter is not None
        assert spec.counter.dbc.attributes["SigType"].value == 1
    algorithms = {s.algorithm for s in protected.values()}
    assert algorithms == {"crc8_sae_j1850", "xor8", "sum8"}


def test_physical_speed_round_trip(db: Any) -> None:
    msg = db.get_message_by_name("ESC_VehicleSpeed")
    values = {s.name: 0 for s in msg.signals} | {"ESC_VehSpd": 123.45, "ESC_LongAccel": -3.5}
    decoded = msg.decode(msg.encode(values))
    assert decoded["ESC_VehSpd"] == pytest.approx(123.45)
    assert decoded["ESC_LongAccel"] == pytest.approx(-3.5)
