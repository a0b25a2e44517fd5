"""Attacking log files (sim.attack_log): the attacked log, its labels and its description."""

from __future__ import annotations

import csv
import functools
import itertools
import json
from pathlib import Path
from typing import Any

import can
import pytest

from agent.canlog import LogReadStats, read_log
from agent.errors import InputError, UsageError
from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
from can_dbc.integrity import IntegritySpec
from sim import LogRecorder, TrafficGenerator, VehicleModel, load_scenario
from sim.attack_log import attack_log, description_path, labels_path
from sim.attacks import Attack, AttackStream, Flooding, Masquerade, Spoofing, Suspension
from sim.errors import SimError
from sim.record import format_candump_line

T0 = 1_700_000_000.0


@functools.cache
def sample_db() -> Any:
    return load_dbc(SAMPLE_VEHICLE_DBC).database


@pytest.fixture
async def sample_log(tmp_path: Path) -> Path:
    """Twelve seconds of the sample vehicle, recorded by sim.record as `tbox sim run` would."""
    gen = TrafficGenerator(
        {"can0": [sample_db()]}, VehicleModel(load_scenario("city"), seed=5), seed=5, start_time=T0
    )
    path = tmp_path / "drive.log"
    async with LogRecorder(path) as recorder:
        for step in range(1, 121):
            await recorder.send_frames(gen.frames_until(step * 0.1))
    return path


def labels(output: Path) -> list[tuple[int, str]]:
    with labels_path(output).open(newline="") as file:
        reader = csv.reader(file)
        assert next(reader) == ["index", "attack"]
        return [(int(index), kind) for index, kind in reader]


def check_output(log: Path, output: Path, attack: Attack) -> dict[str, Any]:
    """The output equals the in-memory transform, line for line, and the labels point at exactly
    its injected frames."""
    expected = list(AttackStream(attack).apply(read_log(log)))
    lines = output.read_text().splitlines(keepends=True)
    assert lines == [format_candump_line(f.frame) for f in expected]
    assert labels(output) == [(i, f.attack) for i, f in enumerate(expected) if f.attack]
    # Original lines are the input's lines, untouched.
    original_lines = set(log.read_text().splitlines(keepends=True))
    assert all(lines[i] in original_lines for i, f in enumerate(expected) if f.attack is None)
    described: dict[str, Any] = json.loads(description_path(output).read_text())
    assert described["frames_out"] == len(lines)
    assert described["injected"] == sum(1 for f in expected if f.attack)
    return described


async def test_masquerade_on_a_recorded_sample_vehicle_log(
    sample_log: Path, tmp_path: Path
) -> None:
    message = sample_db().get_message_by_frame_id(0xB0)
    attack = Masquerade(start=4.0, duration=3.0, target_id=0xB0, message=message, value=250.0)
    output = tmp_path / "attacked.log"
    described = attack_log(sample_log, output, attack)
    assert described == check_output(sample_log, output, attack)
    frames = list(read_log(output))
    first = frames[0].timestamp
    assert described["log_start"] == pytest.approx(first)
    assert described["start"] == pytest.approx(first + 4.0)
    assert described["end"] == pytest.approx(first + 7.0)
    assert described["kind"] == "masquerade" and described["target_ids"] == [0xB0]
    assert described["channel"] == "can0"
    assert described["injected"] == described["removed"] == pytest.approx(300, abs=2)
    assert described["parameters"]["period"] == pytest.approx(0.010, rel=0.01)
    assert described["parameters"]["forged"]["checksum"] == "crc8_sae_j1850 (ESC_VehSpd_CRC)"
    spec = IntegritySpec.for_message(message)
    assert spec is not None
    for index, _ in labels(output):
        frame = frames[index]
        assert frame.arbitration_id == 0xB0 and spec.verify(frame.data) is True
    # Read back through the C2 reader: the index in the labels is the index read_log gives.
    of_id = [m for m in frames if m.arbitration_id == 0xB0]
    counters = [spec.read_counter(m.data) or 0 for m in of_id if m.timestamp < described["end"]]
    assert all((b - a) % 16 == 1 for a, b in itertools.pairwise(counters))


async def test_suspension_writes_no_labels_and_gives_the_window(
    sample_log: Path, tmp_path: Path
) -> None:
    output = tmp_path / "quiet.log"
    attack = Suspension(start=2.0, duration=5.0, target_ids=(0xB0, 0xA0))
    described = attack_log(sample_log, output, attack)
    check_output(sample_log, output, attack)
    assert labels(output) == []
    assert described["injected"] == 0 and described["removed"] == pytest.approx(1000, abs=2)
    assert described["end"] - described["start"] == pytest.approx(5.0)
    assert described["first_removed_time"] >= described["start"]
    inside = [
        m
        for m in read_log(output)
        if m.arbitration_id in (0xA0, 0xB0) and described["start"] <= m.timestamp < described["end"]
    ]
    assert inside == []


def test_rav4_log_spoofed_with_its_dbc(tmp_path: Path) -> None:
    rav4 = Path(__file__).resolve().parents[1] / "data" / "rav4-2018-comma2k19"
    db: Any = load_dbc(rav4 / "toyota_new_mc_pt_generated.dbc").database
    log = rav4 / "rav4_60s.log"
    attack = Spoofing(
        start=20.0, duration=5.0, target_id=0xB4, message=db.get_message_by_frame_id(0xB4), value=5
    )
    output = tmp_path / "rav4-spoofed.log"
    described = attack_log(log, output, attack)
    assert described["frames_in"] == 98_800
    assert described["frames_out"] == 98_800 + described["injected"]
    assert described["injected"] == pytest.approx(5.0 / 0.0241, abs=2)
    assert described["channel"] == "can0"
    frames = list(read_log(output))
    for index, kind in labels(output):
        assert kind == "spoofing"
        assert db.decode_message(0xB4, bytes(frames[index].data))["SPEED"] == pytest.approx(5.0)


def test_any_c2_format_in_candump_out(tmp_path: Path) -> None:
    source = tmp_path / "in.asc"
    with can.ASCWriter(str(source)) as writer:
        for i in range(300):
            writer.on_message_received(
                can.Message(timestamp=T0 + i * 0.01, arbitration_id=0x123, data=bytes([i % 256]))
            )
    output = tmp_path / "out.log"
    described = attack_log(source, output, Flooding(start=1.0, duration=1.0, rate=100))
    assert described["injected"] == 100
    assert labels(output)[0][1] == "flooding"
    assert len(list(read_log(output))) == 400


def test_a_log_that_ends_before_the_attack_writes_nothing(tmp_path: Path) -> None:
    log = tmp_path / "short.log"
    log.write_text("(100.000000) can0 123#00\n(101.500000) can0 123#01\n")
    output = tmp_path / "out.log"
    with pytest.raises(SimError, match=r"ends 1.5 s after its first frame, before the attack"):
        attack_log(log, output, Flooding(start=5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.log"]


def test_unreadable_logs_and_outputs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"log file .*missing.log does not exist"):
        attack_log(tmp_path / "missing.log", tmp_path / "out.log", Flooding())
    empty = tmp_path / "empty.log"
    empty.write_text("")
    with pytest.raises(InputError, match="no CAN frames to attack"):
        attack_log(empty, tmp_path / "out.log", Flooding())
    log = tmp_path / "ok.log"
    log.write_text("(100.000000) can0 123#00\n")
    with pytest.raises(UsageError, match="must be a file"):
        attack_log(log, "-", Flooding())
    with pytest.raises(UsageError, match=r"cannot write .*nowhere/out.log"):
        attack_log(log, tmp_path / "nowhere" / "out.log", Flooding(start=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.log", "ok.log"]


def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "messy.log"
    log.write_text("(100.0) can0 123#00\nnot a frame\n(101.0) can0 123#01\n(102.0) can0 123#02\n")
    stats = LogReadStats()
    described = attack_log(log, tmp_path / "out.log", Flooding(start=0.5, rate=2), read_stats=stats)
    assert stats.malformed == 1
    assert described["frames_in"] == 3 and described["injected"] == 4
    # An injection due at the same time as an original frame goes out just before it.
    assert [i for i, _ in labels(tmp_path / "out.log")] == [1, 2, 4, 5]
