"""`tbox monitor` from a log, the built-in simulator and a bus."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.cli import main

DATA = Path(__file__).parents[2] / "data" / "rav4-2018-comma2k19"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_log_table_shows_messages_and_recorded_rates(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    dbc = DATA / "toyota_new_mc_pt_generated.dbc"
    status, out, _ = _run(capsys, "monitor", "--dbc", f"can0={dbc}", str(DATA / "rav4_60s.log"))
    assert status == 0
    row = next(line for line in out.splitlines() if re.search(r"\b0B4\b", line))
    assert "can0" in row and "SPEED" in row and "km/h" in row
    # SPEED is sent every ~24 ms by the car: the rate comes from log timestamps, not wall time.
    rate = float(row.split("│")[5])
    assert 35 < rate < 50
    assert "98800 frames" in out


def test_simulator_feeds_the_live_view(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    status, out, _ = _run(capsys, "monitor", "--sim", "highway", "--duration", "2")
    assert status == 0
    assert "ESC_VehicleSpeed" in out and "BMS_PackStatus" in out
    assert "VCU_Gear=D" in out  # value-table names in the live view
    frames = int(re.search(r"(\d+) frames, (\d+) decoded", out).group(1))  # type: ignore[union-attr]
    assert frames > 1000


def test_bus_without_traffic_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(
        capsys, "monitor", "--bus", "virtual://silent-monitor", "--duration", "0.3"
    )
    assert status == 0 and "0 frames" in out
    status, _, err = _run(capsys, "monitor")
    assert status == 2 and "exactly one source" in err
    status, _, err = _run(capsys, "monitor", "--sim", "--bus", "virtual://x")
    assert status == 2
    status, _, err = _run(capsys, "monitor", "--sim", "nosuchscenario", "--duration", "1")
    assert status == 1 and "nosuchscenario" in err
