"""Counters and checksums: discovery from attributes and names, coverage, fill and verify."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import cantools
import pytest

from can_dbc import SAMPLE_VEHICLE_DBC
from can_dbc.integrity import (
    ALGORITHMS,
    IntegritySpec,
    SignalField,
    crc8_h2f,
    crc8_sae_j1850,
    sum8,
    xor8,
)

RAV4_DBC = Path("/work/shared/data/rav4-2018-comma2k19/toyota_new_mc_pt_generated.dbc")


@pytest.fixture(scope="module")
def sample_db() -> Any:
    return cantools.database.load_file(SAMPLE_VEHICLE_DBC, strict=True)


def _crc8_bitwise(data: bytes, poly: int, init: int, xorout: int) -> int:
    """Textbook bit-at-a-time CRC-8, independent of the table-driven code under test."""
    crc = init
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc ^ xorout


def _db(text: str) -> Any:
    return cantools.database.load_string(text, database_format="dbc", strict=True)


_HEADER = """VERSION ""
NS_ :
BS_:
BU_: A B
"""

_ATTR_DEFS = """
BA_DEF_ SG_ "SigType" ENUM "Normal","Counter","Checksum";
BA_DEF_ BO_ "ChecksumAlgo" STRING ;
BA_DEF_DEF_ "SigType" "Normal";
BA_DEF_DEF_ "ChecksumAlgo" "";
"""


def test_algorithm_check_values() -> None:
    # Catalogue check values of the two CRCs ("123456789").
    assert crc8_sae_j1850(b"123456789") == 0x4B
    assert crc8_h2f(b"123456789") == 0xDF
    assert xor8(b"\x0f\xf0\x01") == 0xFE
    assert sum8(b"\xff\x02") == 0x01
    assert set(ALGORITHMS) == {"crc8_sae_j1850", "crc8_h2f", "xor8", "sum8"}
    rng = random.Random(1)
    for _ in range(50):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
        assert crc8_sae_j1850(data) == _crc8_bitwise(data, 0x1D, 0xFF, 0xFF)
        assert crc8_h2f(data) == _crc8_bitwise(data, 0x2F, 0xFF, 0xFF)


def test_sample_vehicle_declares_counters_and_checksums(sample_db: Any) -> None:
    specs = {m.name: IntegritySpec.for_message(m) for m in sample_db.messages}
    declared = {name: s for name, s in specs.items() if s is not None}
    assert len(declared) >= 8
    for name, spec in declared.items():
        assert spec.declared, name
        assert spec.counter is not None and spec.checksum is not None, name
        assert spec.algorithm in ALGORITHMS, name
        assert spec.counter_modulus == 16
    assert declared["MCU_Torque"].algorithm == "xor8"
    assert declared["MCU_Speed"].algorithm == "sum8"
    assert declared["ESC_VehicleSpeed"].algorithm == "crc8_sae_j1850"
    # Messages without integrity protection have no spec.
    assert specs["BCM_Doors"] is None


def test_coverage_is_data_id_then_the_other_bytes(sample_db: Any) -> None:
    msg = sample_db.get_message_by_name("ESC_VehicleSpeed")  # Motorola, checksum in byte 7
    spec = IntegritySpec.for_message(msg)
    assert spec is not None
    values = {s.name: 0 for s in msg.signals} | {"ESC_VehSpd": 87.65, "ESC_LongAccel": -1.25}
    data = bytearray(msg.encode(values, strict=False))
    spec.apply(data, counter_value=9)
    decoded = msg.decode(bytes(data))
    assert decoded["ESC_VehSpd_Counter"] == 9
    assert decoded["ESC_VehSpd"] == pytest.approx(87.65)
    expected = _crc8_bitwise(bytes([0xB0, 0x00]) + bytes(data[:7]), 0x1D, 0xFF, 0xFF)
    assert data[7] == expected
    assert spec.verify(data) is True
    assert spec.read_checksum(data) == expected
    # Any single-bit corruption is caught; so is the same payload on another id.
    for bit in range(56):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert spec.verify(bad) is False
    other = IntegritySpec.for_message(sample_db.get_message_by_name("ESC_WheelSpeeds"))
    assert other is not None
    assert other.compute_checksum(data) != spec.compute_checksum(data)


def test_xor_and_sum_messages(sample_db: Any) -> None:
    for name, reference in (("MCU_Torque", xor8), ("MCU_Speed", sum8)):
        msg = sample_db.get_message_by_name(name)
        spec = IntegritySpec.for_message(msg)
        assert spec is not None
        data = bytearray(b"\x12\x34\x56\x78\x9a\xbc\x00\x00")
        spec.apply(data, 3)
        assert data[7] == reference(bytes([msg.frame_id & 0xFF, msg.frame_id >> 8]) + data[:7])
        assert spec.verify(data)


def test_counter_wraps_and_continuity(sample_db: Any) -> None:
    spec = IntegritySpec.for_message(sample_db.get_message_by_name("VCU_DriveState"))
    assert spec is not None
    data = bytearray(8)
    spec.apply(data, 15)
    assert spec.read_counter(data) == 15
    spec.apply(data, 16)
    assert spec.read_counter(data) == 0
    assert spec.counter_follows(15, 0)
    assert spec.counter_follows(3, 4)
    assert not spec.counter_follows(3, 5)
    assert not spec.counter_follows(0, 0)


def test_signal_field_matches_cantools_layout(sample_db: Any) -> None:
    """Writing raw values through SignalField decodes identically with cantools."""
    rng = random.Random(7)
    for msg in sample_db.messages:
        if msg.is_multiplexed():
            continue
        raws = {}
        data = bytearray(msg.length)
        for sig in msg.signals:
            raw = rng.randrange(1 << sig.length)
            SignalField.of(sig, msg.length).write(data, raw)
            raws[sig.name] = raw
        decoded = msg.decode(bytes(data), decode_choices=False, scaling=False)
        for sig in msg.signals:
            expected = raws[sig.name]
            if sig.is_signed and expected >= 1 << (sig.length - 1):
                expected -= 1 << sig.length
            assert decoded[sig.name] == expected, (msg.name, sig.name)
            assert SignalField.of(sig, msg.length).read(data) == raws[sig.name]


def test_attributes_win_over_names() -> None:
    db = _db(
        _HEADER
        + """
BO_ 256 Brake: 8 A
 SG_ Pressure : 0|16@1+ (0.1,0) [0|250] "bar" B
 SG_ COUNTER : 16|4@1+ (1,0) [0|15] "" B
 SG_ Seq : 20|4@1+ (1,0) [0|15] "" B
 SG_ Guard : 63|8@0+ (1,0) [0|255] "" B
"""
        + _ATTR_DEFS
        + """
BA_ "ChecksumAlgo" BO_ 256 "crc8_h2f";
BA_ "SigType" SG_ 256 Seq 1;
BA_ "SigType" SG_ 256 Guard 2;
"""
    )
    spec = IntegritySpec.for_message(db.get_message_by_name("Brake"))
    assert spec is not None and spec.declared
    assert spec.counter is not None and spec.counter.name == "Seq"  # not the one named COUNTER
    assert spec.checksum is not None and spec.checksum.name == "Guard"
    assert spec.algorithm == "crc8_h2f"
    data = bytearray(b"\x10\x20\x30\x40\x50\x60\x70\x00")
    spec.apply(data, 5)
    assert data[7] == crc8_h2f(b"\x00\x01" + bytes(data[:7]))


def test_opendbc_naming_conventions() -> None:
    db: Any = cantools.database.load_file(RAV4_DBC, strict=False)
    speed = IntegritySpec.for_message(db.get_message_by_name("STEER_ANGLE_SENSOR"))
    assert speed is None  # no counter, no checksum
    found = {
        m.name: IntegritySpec.for_message(m)
        for m in db.messages
        if IntegritySpec.for_message(m) is not None
    }
    assert found, "the RAV4 DBC has CHECKSUM/COUNTER signals"
    for name, spec in found.items():
        assert spec is not None and not spec.declared
        assert spec.algorithm is None, name  # conventions carry no algorithm
        if spec.checksum is not None:
            assert spec.checksum.name == "CHECKSUM"
            assert spec.verify(bytes(8)) is None
            with pytest.raises(ValueError, match="no checksum algorithm"):
                spec.compute_checksum(bytes(8))
    counters = {s.counter.name for s in found.values() if s is not None and s.counter}
    assert counters <= {"COUNTER", "_COUNTER"}
    # A default algorithm makes them computable.
    msg = db.get_message_by_name(next(n for n, s in found.items() if s and s.checksum))
    spec = IntegritySpec.for_message(msg, default_algorithm="sum8")
    assert spec is not None and spec.algorithm == "sum8"
    data = bytearray(msg.length)
    spec.apply(data, 1)
    assert spec.verify(data) is True


@pytest.mark.parametrize(
    ("name", "is_counter"),
    [
        ("ESC_CNT", True),
        ("RollingCounter", True),
        ("Msg_AliveCounter", True),
        ("AliveCtr", True),
        ("Brake_CRC", False),
        ("CHECKSUM", False),
    ],
)
def test_name_conventions(name: str, is_counter: bool) -> None:
    db = _db(
        _HEADER
        + f"""
BO_ 300 M: 8 A
 SG_ Value : 0|16@1+ (1,0) [0|65535] "" B
 SG_ {name} : 56|8@1+ (1,0) [0|255] "" B
"""
    )
    spec = IntegritySpec.for_message(db.get_message_by_name("M"))
    assert spec is not None
    found = spec.counter if is_counter else spec.checksum
    assert found is not None and found.name == name


def test_nibble_checksum_clears_only_its_bits() -> None:
    db = _db(
        _HEADER
        + """
BO_ 512 Small: 4 A
 SG_ Data : 0|24@1+ (1,0) [0|16777215] "" B
 SG_ Cnt : 24|4@1+ (1,0) [0|15] "" B
 SG_ Chk : 28|4@1+ (1,0) [0|15] "" B
"""
        + _ATTR_DEFS
        + """
BA_ "ChecksumAlgo" BO_ 512 "xor8";
BA_ "SigType" SG_ 512 Cnt 1;
BA_ "SigType" SG_ 512 Chk 2;
"""
    )
    spec = IntegritySpec.for_message(db.get_message_by_name("Small"))
    assert spec is not None
    data = bytearray(b"\xa1\xb2\xc3\x00")
    spec.apply(data, 6)
    # Byte 3 keeps the counter nibble, its checksum nibble is cleared for the computation.
    expected = xor8(b"\x00\x02\xa1\xb2\xc3\x06") & 0x0F
    assert spec.read_checksum(data) == expected
    assert spec.verify(data) is True


def test_unknown_algorithm_is_rejected() -> None:
    db = _db(
        _HEADER
        + """
BO_ 256 M: 8 A
 SG_ X_CRC : 56|8@1+ (1,0) [0|255] "" B
"""
        + _ATTR_DEFS
        + """
BA_ "ChecksumAlgo" BO_ 256 "md5";
BA_ "SigType" SG_ 256 X_CRC 2;
"""
    )
    with pytest.raises(ValueError, match="unknown checksum algorithm 'md5'"):
        IntegritySpec.for_message(db.get_message_by_name("M"))
