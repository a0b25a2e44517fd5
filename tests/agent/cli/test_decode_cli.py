"""`tbox decode` (contract C3) on real traffic and on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cantools
import pytest

from agent.cli import main

DATA = Path(__file__).parents[2] / "data" / "rav4-2018-comma2k19"
LOG = DATA / "rav4_60s.log"
DBC = DATA / "toyota_new_mc_pt_generated.dbc"

SMALL_DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
VAL_TABLE_ GearTable 0 "P" 1 "R" 2 "N" 3 "D" ;
BO_ 256 Drive: 4 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" Vector__XXX
 SG_ Gear : 16|2@1+ (1,0) [0|3] "" Vector__XXX
 SG_ Count : 24|8@1+ (1,0) [0|255] "" Vector__XXX
VAL_ 256 Gear 0 "P" 1 "R" 2 "N" 3 "D" ;
"""


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def test_rav4_log_decodes_to_c3_json_equal_to_cantools(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, err = _run(capsys, "decode", "--dbc", f"can0={DBC}", str(LOG))
    assert status == 0
    assert len(lines) == 37_740  # every can0 frame of a known id (data README)
    db: Any = cantools.database.load_file(DBC, strict=False)
    for line in lines[::97]:
        obj = json.loads(line)
        assert list(obj) == ["t", "channel", "id", "message", "signals"]
        assert obj["channel"] == "can0"
        expected = db.decode_message(obj["id"], _payload(obj), decode_choices=False)
        assert obj["signals"] == expected
        assert obj["message"] == db.get_message_by_frame_id(obj["id"]).name
    assert "37740 decoded" in err and "skipped (unknown id)" in err


_PAYLOADS: dict[float, bytes] = {}


def _payload(obj: dict[str, object]) -> bytes:
    # The frame's bytes, looked up in the log by timestamp, channel and id.
    if not _PAYLOADS:
        from agent.canlog import read_log

        for f in read_log(LOG):
            _PAYLOADS[(f.timestamp, f.channel, f.arbitration_id)] = bytes(f.data)  # type: ignore[index]
    return _PAYLOADS[(obj["t"], obj["channel"], obj["id"])]  # type: ignore[index]


def test_ints_stay_ints_and_choices_print_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dbc = tmp_path / "small.dbc"
    dbc.write_text(SMALL_DBC)
    log = tmp_path / "drive.log"
    log.write_text("(1.000000) can0 100#E803030A\n(1.010000) can0 200#00\n")
    status, lines, err = _run(capsys, "decode", "--dbc", str(dbc), str(log))
    assert status == 0
    assert json.loads(lines[0]) == {
        "t": 1.0,
        "channel": "can0",
        "id": 256,
        "message": "Drive",
        "signals": {"Speed": 10.0, "Gear": 3, "Count": 10},
    }
    assert isinstance(json.loads(lines[0])["signals"]["Gear"], int)
    assert "1 skipped (unknown id)" in err and "can0 0x200" in err
    status, lines, _ = _run(capsys, "decode", "--choices", "--dbc", str(dbc), str(log))
    assert json.loads(lines[0])["signals"]["Gear"] == "D"


def test_per_bus_dbc_and_candump_screen_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dbc = tmp_path / "small.dbc"
    dbc.write_text(SMALL_DBC)
    log = tmp_path / "screen.txt"
    log.write_text(
        " (0.000000)  can0  100   [4]  E8 03 00 01\n (0.010000)  can1  100   [4]  E8 03 00 02\n"
    )
    status, lines, err = _run(capsys, "decode", "--dbc", f"can1={dbc}", str(log))
    assert status == 0
    assert [json.loads(line)["signals"]["Count"] for line in lines] == [2]
    assert "can0 0x100" in err


def test_bad_frames_and_lines_are_counted_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dbc = tmp_path / "small.dbc"
    dbc.write_text(SMALL_DBC)
    log = tmp_path / "bad.log"
    log.write_text(
        "(1.0) can0 100#E803\n"  # shorter than its message
        "this is not a frame\n"
        "(1.1) can0 100#E8030000\n"
    )
    status, lines, err = _run(capsys, "decode", "--dbc", str(dbc), str(log))
    assert status == 0
    assert len(lines) == 1
    assert "1 failed" in err and "1 malformed" in err
    assert "0x100" in err and "bad.log:2" in err


def test_usage_and_input_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(capsys, "decode", "--dbc", str(tmp_path / "nope.dbc"), str(LOG))
    assert status == 2 and "nope.dbc" in err and "does not exist" in err
    status, _, err = _run(capsys, "decode", "--dbc", str(DBC), str(tmp_path / "nope.log"))
    assert status == 2 and "nope.log" in err
    broken = tmp_path / "broken.dbc"
    broken.write_text('VERSION ""\nBO_ 100 M: 8 X\n SG_ S : 0|8@1+ (1,0) [0|1 "" X\n')
    status, _, err = _run(capsys, "decode", "--dbc", str(broken), str(LOG))
    assert status == 1
    assert "broken.dbc:3" in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_python_m_agent_exit_codes_without_traceback(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "agent", "decode", "--dbc", str(DBC)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and "LOG" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "agent", "decode", "--dbc", str(DBC), "-"],
        input="(1.0) can0 0B4#0000000000119933\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["message"] == "SPEED"
