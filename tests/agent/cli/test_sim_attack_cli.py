"""``tbox sim attack`` and ``tbox sim serve|run --attack`` end to end in subprocesses (C1)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.canlog import read_log
from agent.cli.sim_attack import COMMON_OPTIONS, KIND_OPTIONS, OPTION_HELP
from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
from can_dbc.integrity import IntegritySpec
from sim.attack_options import kind_options
from sim.attacks import ATTACK_KINDS
from tests.sim_server import start_sim_server, stop_sim_server

REPO = Path(__file__).resolve().parents[3]
RAV4 = REPO / "tests" / "data" / "rav4-2018-comma2k19"
RAV4_LOG = RAV4 / "rav4_60s.log"
RAV4_DBC = RAV4 / "toyota_new_mc_pt_generated.dbc"


def _tbox(args: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _one_line_error(result: subprocess.CompletedProcess[str], status: int, pattern: str) -> None:
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in lines[0], lines[0]


def _labels(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_help_lists_every_kind_with_its_options() -> None:
    result = _tbox(["sim", "attack", "--help"])
    assert result.returncode == 0
    assert "usage: tbox sim attack" in result.stdout
    for kind in ATTACK_KINDS:
        assert kind in result.stdout
    # The command line's own table (kept import-free for `tbox --help`) matches the attacks.
    assert list(KIND_OPTIONS) == list(ATTACK_KINDS)
    for kind, names in KIND_OPTIONS.items():
        assert kind_options(kind) == [*COMMON_OPTIONS, *names]
        assert set(names) <= set(OPTION_HELP)
    assert "--attack KIND[:NAME=VALUE,…]" in _tbox(["sim", "serve", "--help"]).stdout
    assert "--attack-labels" in _tbox(["sim", "run", "--help"]).stdout


def test_rav4_log_suspension(tmp_path: Path) -> None:
    out = tmp_path / "rav4-suspended.log"
    result = _tbox(
        [
            "sim",
            "attack",
            "suspension",
            str(RAV4_LOG),
            "-o",
            str(out),
            "--target-id",
            "0xB4",
            "--target-id",
            "0x2C1",
            "--start",
            "10",
            "--duration",
            "5",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "suspension: 0 frames injected, " in result.stderr
    described = json.loads(Path(f"{out}.attack.json").read_text())
    original = list(read_log(RAV4_LOG))
    first = original[0].timestamp
    silenced = [
        m
        for m in original
        if m.arbitration_id in (0xB4, 0x2C1)
        and m.channel == "can0"
        and 10 <= m.timestamp - first < 15
    ]
    assert described["removed"] == len(silenced) > 300
    assert described["target_ids"] == [0xB4, 0x2C1]
    assert described["start"] == pytest.approx(first + 10)
    assert described["end"] == pytest.approx(first + 15)
    assert Path(f"{out}.labels.csv").read_text() == "index,attack\n"
    assert len(list(read_log(out))) == len(original) - len(silenced)


def test_rav4_log_spoofed_speed_with_its_dbc(tmp_path: Path) -> None:
    out = tmp_path / "rav4-spoofed.log"
    result = _tbox(
        [
            "sim",
            "attack",
            "spoofing",
            str(RAV4_LOG),
            "-o",
            str(out),
            "--dbc",
            f"can0={RAV4_DBC}",
            "--target-id",
            "0xB4",
            "--signal",
            "SPEED",
            "--value",
            "130",
            "--seed",
            "3",
        ]
    )
    assert result.returncode == 0, result.stderr
    db: Any = load_dbc(RAV4_DBC).database
    frames = list(read_log(out))
    rows = _labels(Path(f"{out}.labels.csv"))
    assert len(rows) == pytest.approx(10 / 0.0241, abs=2)
    for row in rows:
        frame = frames[int(row["index"])]
        assert row["attack"] == "spoofing" and frame.arbitration_id == 0xB4
        assert db.decode_message(0xB4, bytes(frame.data))["SPEED"] == pytest.approx(130.0)
    described = json.loads(Path(f"{out}.attack.json").read_text())
    assert described["parameters"]["forged"]["signal"] == "SPEED"
    assert described["parameters"]["rate_source"] == "learned from the real sender"


def test_sample_vehicle_log_recorded_by_sim_run(tmp_path: Path) -> None:
    recorded, out = tmp_path / "drive.log", tmp_path / "masq.log"
    result = _tbox(
        [
            "sim",
            "run",
            "--bus",
            "virtual://car",
            "--speed",
            "0",
            "--duration",
            "8",
            "--record",
            str(recorded),
            "--quiet",
            "--seed",
            "4",
        ]
    )
    assert result.returncode == 0, result.stderr
    result = _tbox(
        [
            "sim",
            "attack",
            "masquerade",
            str(recorded),
            "-o",
            str(out),
            "--dbc",
            str(SAMPLE_VEHICLE_DBC),
            "--target-id",
            "0xB0",
            "--value",
            "200",
            "--start",
            "3",
            "--duration",
            "3",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "masquerade: 300 frames injected, 300 removed" in result.stderr
    db: Any = load_dbc(SAMPLE_VEHICLE_DBC).database
    spec = IntegritySpec.for_message(db.get_message_by_frame_id(0xB0))
    assert spec is not None
    frames = list(read_log(out))
    rows = _labels(Path(f"{out}.labels.csv"))
    assert len(rows) == 300
    for row in rows:
        frame = frames[int(row["index"])]
        assert frame.arbitration_id == 0xB0 and frame.channel == "car"
        assert spec.verify(frame.data) is True
        assert db.decode_message(0xB0, bytes(frame.data))["ESC_VehSpd"] == 200.0
    # The same attack and seed give the same files.
    again = tmp_path / "again.log"
    _tbox(
        [
            "sim",
            "attack",
            "masquerade",
            str(recorded),
            "-o",
            str(again),
            "--dbc",
            str(SAMPLE_VEHICLE_DBC),
            "--target-id",
            "0xB0",
            "--value",
            "200",
            "--start",
            "3",
            "--duration",
            "3",
        ]
    )
    assert again.read_text() == out.read_text()
    assert Path(f"{again}.labels.csv").read_text() == Path(f"{out}.labels.csv").read_text()


@pytest.fixture
def small_log(tmp_path: Path) -> Path:
    path = tmp_path / "small.log"
    path.write_text("".join(f"({100 + i * 0.01:.6f}) can0 123#{i % 256:02X}\n" for i in range(800)))
    return path


def test_errors_are_one_line(tmp_path: Path, small_log: Path) -> None:
    out = str(tmp_path / "out.log")
    log = str(small_log)
    cases: list[tuple[list[str], int, str]] = [
        (["storm", log, "-o", out], 2, "unknown attack kind 'storm' (kinds: flooding,"),
        (["flooding", log, "-o", out, "--target-id", "0xZZ"], 2, "target-id '0xZZ' is not a CAN"),
        (["flooding", log, "-o", out, "--target-id", "0x800"], 2, "does not fit in 11 bits"),
        (["flooding", log, "-o", out, "--signal", "X"], 2, "flooding takes no option 'signal'"),
        (["flooding", str(tmp_path / "missing.log"), "-o", out], 2, "does not exist"),
        (["flooding", log], 2, "-o OUT is needed"),
        (["flooding"], 2, "give a LOG to attack"),
        (["flooding", log, "-o", out, "--bus", "virtual://x"], 2, "not both"),
        (["masquerade", "--bus", "virtual://x", "--target-id", "1"], 2, "cannot silence"),
        (["flooding", log, "-o", out, "--start", "30"], 1, "before the attack starts at 30 s"),
        (
            ["spoofing", log, "-o", out, "--target-id", "0x123", "--signal", "S"],
            2,
            "no DBC message",
        ),
    ]
    for args, status, pattern in cases:
        _one_line_error(_tbox(["sim", "attack", *args]), status, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.log"]


def test_unreadable_log_is_a_failure(tmp_path: Path) -> None:
    broken = tmp_path / "broken.blf"
    broken.write_bytes(b"LOGG" + bytes(200))
    result = _tbox(["sim", "attack", "fuzzing", str(broken), "-o", str(tmp_path / "o.log")])
    _one_line_error(result, 1, "broken.blf")


def test_serve_bad_attack_is_one_line() -> None:
    result = _tbox(["sim", "serve", "--socketcand", "127.0.0.1:0", "--attack", "flood"])
    _one_line_error(result, 2, "unknown attack kind 'flood'")
    result = _tbox(["sim", "run", "--bus", "virtual://x", "--attack-labels", "x.csv"])
    _one_line_error(result, 2, "--attack-labels needs --attack")


def test_serve_with_a_masquerade_records_and_labels_what_it_sent(tmp_path: Path) -> None:
    record, labels = tmp_path / "served.log", tmp_path / "served.labels.csv"
    result = _tbox(
        [
            "sim",
            "serve",
            "--socketcand",
            "127.0.0.1:0",
            "--speed",
            "0",
            "--duration",
            "5",
            "--attack",
            "masquerade:target-id=0xB0,start=2,duration=1.5,value=111",
            "--record",
            str(record),
            "--attack-labels",
            str(labels),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "attack masquerade from 2 s for 1.5 s" in result.stderr
    assert "attack masquerade: 150 frames injected, 150 removed" in result.stderr
    frames = list(read_log(record))
    rows = _labels(labels)
    assert len(rows) == 150
    db: Any = load_dbc(SAMPLE_VEHICLE_DBC).database  # serve's default DBC
    spec = IntegritySpec.for_message(db.get_message_by_frame_id(0xB0))
    assert spec is not None
    for row in rows:
        frame = frames[int(row["index"])]
        assert row["attack"] == "masquerade" and row["id"] == "0x0B0"
        assert float(row["time"]) == pytest.approx(frame.timestamp, abs=1e-6)
        assert spec.verify(frame.data) is True
        assert db.decode_message(0xB0, bytes(frame.data))["ESC_VehSpd"] == 111.0
    described: dict[str, Any] = json.loads((tmp_path / "served.attack.json").read_text())
    assert described["kind"] == "masquerade" and described["frames_sent"] == len(frames)
    assert described["parameters"]["period"] == pytest.approx(0.010, rel=0.02)


def test_live_spoofing_into_tbox_sim_serve(tmp_path: Path) -> None:
    """The simulator serves socketcand; one client records, another injects forged speeds."""
    record, labels = tmp_path / "bus.log", tmp_path / "spoof.labels.csv"
    server, port = start_sim_server(tmp_path, "--seed", "1", "--scenario", "highway")
    url = f"socketcand://127.0.0.1:{port}/can0"
    recorder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "sim",
            "record",
            "--bus",
            url,
            "-o",
            str(record),
            "--duration",
            "8",
            "--quiet",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # let the recorder connect before the attack starts
        result = _tbox(
            [
                "sim",
                "attack",
                "spoofing",
                "--bus",
                url,
                "--dbc",
                str(SAMPLE_VEHICLE_DBC),
                "--target-id",
                "0xB0",
                "--value",
                "222",
                "--start",
                "1",
                "--duration",
                "1.5",
                "--labels",
                str(labels),
            ]
        )
        _, recorder_err = recorder.communicate(timeout=30)
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=10)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait(10)
        stop_sim_server(server)
    assert result.returncode == 0, result.stderr
    assert recorder.returncode == 0, recorder_err
    rows = _labels(labels)
    assert 100 <= len(rows) <= 160  # the real sender's ~100 frames/s for 1.5 s
    assert f"spoofing: sent {len(rows)} frames" in result.stderr
    db: Any = load_dbc(SAMPLE_VEHICLE_DBC).database
    spec = IntegritySpec.for_message(db.get_message_by_frame_id(0xB0))
    assert spec is not None
    speeds = [
        db.decode_message(0xB0, bytes(m.data))["ESC_VehSpd"]
        for m in read_log(record)
        if m.arbitration_id == 0xB0 and spec.verify(m.data)
    ]
    assert speeds.count(222.0) == len(rows)  # every forged frame reached the other client
    assert len(speeds) > 2 * len(rows)  # alongside the real sender's frames
