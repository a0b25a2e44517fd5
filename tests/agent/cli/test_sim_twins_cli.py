"""``tbox sim gnss|modem|slcan`` and the ``--gnss-link``/``--modem-link`` companions of
``tbox sim run``/``serve``, end to end in subprocesses, with pyserial and python-can's slcan driver
as the hosts."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import can
import pytest
import serial
from pynmeagps import NMEAReader

from agent.cli import main
from sim.record import format_candump_line
from tests.sim_server import start_sim_server, stop_sim_server

REPO = Path(__file__).resolve().parents[3]
TIMEOUT = 30.0


def _start(args: Sequence[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stdout_line(proc: subprocess.Popen[str]) -> str:
    """The next line the process prints, waiting at most TIMEOUT."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    assert ready, "the command printed nothing"
    line = proc.stdout.readline()
    assert line, f"the command ended early: {proc.communicate()[1]}"
    return line.rstrip("\n")


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


def _open(path: str | Path) -> serial.Serial:
    return serial.Serial(str(path), baudrate=115200, timeout=TIMEOUT)


def _nmea(port: serial.Serial, sentence: str, count: int = 1) -> list[Any]:
    found = []
    for _ in range(200):
        msg = NMEAReader.parse(port.readline())
        if msg is not None and msg.msgID == sentence:
            found.append(msg)
            if len(found) == count:
                return found
    raise AssertionError(f"no {count} {sentence} sentences in 200 lines")


def _at(port: serial.Serial, command: bytes) -> bytes:
    port.write(command)
    data = b""
    while not re.search(rb"\r\n(OK|ERROR)\r\n$", data):
        chunk = port.read(1)
        assert chunk, f"no answer to {command!r}: {data!r}"
        data += chunk
    return data


def test_gnss_prints_its_path_serves_nmea_and_stops_after_the_duration(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    link = tmp_path / "gnss0"
    args = ["sim", "gnss", "--duration", "6", "--rate-hz", "5", "--scenario", "highway"]
    args += ["--speed", "10", "--seed", "4", "--talker", "GP", "--link", str(link)]
    proc = _start(args)
    processes.append(proc)
    path = _stdout_line(proc)
    assert path.startswith("/dev/pts/")
    assert str(link.readlink()) == path
    port = _open(link)
    try:
        rmc = _nmea(port, "RMC", count=5)
    finally:
        port.close()
    assert all(m.talker == "GP" and m.status == "A" for m in rmc)
    status, out, err = _finish(proc)
    assert status == 0, err
    assert out == "", out  # the path was the only line
    assert re.search(r"tbox sim gnss: \d+ epochs, \d+ sentences", err), err
    assert not link.is_symlink()


def test_gnss_faults_from_the_command_line(processes: list[subprocess.Popen[str]]) -> None:
    args = ["sim", "gnss", "--duration", "8", "--rate-hz", "10"]
    args += ["--bad-checksum", "1", "--no-fix", "0-100"]
    proc = _start(args)
    processes.append(proc)
    port = _open(_stdout_line(proc))
    try:
        line = port.readline()
    finally:
        port.close()
    with pytest.raises(Exception, match="checksum"):
        NMEAReader.parse(line)
    assert line.startswith(b"$GNRMC,") and b",V," in line  # no fix
    proc.send_signal(signal.SIGINT)
    assert _finish(proc)[0] == 0


def test_modem_answers_follows_its_schedule_and_comes_back_after_an_unplug(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    link = tmp_path / "modem0"
    args = ["sim", "modem", "--drop-at", "0", "--operator", "Bench", "--link", str(link)]
    args += ["--unplug-at", "4", "--unplug-for", "0.5", "--duration", "20"]
    proc = _start(args)
    processes.append(proc)
    first = _stdout_line(proc)
    port = _open(link)
    try:
        assert _at(port, b"ATE0\r") == b"ATE0\r\r\nOK\r\n"
        assert _at(port, b"AT+CSQ;+COPS?\r") == b"\r\n+CSQ: 99,99\r\n\r\n+COPS: 0\r\n\r\nOK\r\n"
    finally:
        port.close()
    second = _stdout_line(proc)  # printed once the device is back
    assert first.startswith("/dev/pts/") and second.startswith("/dev/pts/")
    port = _open(link)
    try:
        assert _at(port, b"ATI\r").startswith(b"ATI\r\r\ntbox-sim\r\n")  # echo on again
    finally:
        port.close()
    proc.send_signal(signal.SIGTERM)
    status, _, err = _finish(proc)
    assert status == 0, err
    assert "unplugged 1 time" in err and "command lines" in err, err
    assert not link.is_symlink()


def test_slcan_bridges_the_simulator_to_python_cans_slcan_driver(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    server, port = start_sim_server(tmp_path, "--scenario", "highway", "--quiet")
    try:
        proc = _start(
            ["sim", "slcan", "--bus", f"socketcand://127.0.0.1:{port}/can0", "--duration", "30"]
        )
        processes.append(proc)
        path = _stdout_line(proc)
        bus = can.Bus(interface="slcan", channel=path, bitrate=500000, sleep_after_open=0)
        try:
            ids: set[int] = set()
            deadline = time.monotonic() + TIMEOUT
            while not (len(ids) >= 10 and 0xB0 in ids) and time.monotonic() < deadline:
                msg = bus.recv(1.0)
                if msg is not None:
                    ids.add(msg.arbitration_id)
        finally:
            bus.shutdown()
        assert len(ids) >= 10 and 0xB0 in ids, ids  # ESC_VehicleSpeed among the vehicle's frames
        proc.send_signal(signal.SIGINT)
        status, _, err = _finish(proc)
        assert status == 0, err
        assert re.search(r"[1-9]\d* to the host", err), err
    finally:
        stop_sim_server(server)


def test_sim_run_starts_gnss_and_modem_beside_the_traffic(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    gnss_link, modem_link = tmp_path / "gnss0", tmp_path / "modem0"
    args = ["sim", "run", "--bus", "virtual://twins", "--scenario", "highway", "--speed", "5"]
    args += ["--quiet"]
    args += ["--gnss-link", str(gnss_link), "--modem-link", str(modem_link), "--duration", "30"]
    proc = _start(args)
    processes.append(proc)
    deadline = time.monotonic() + TIMEOUT
    while not (gnss_link.is_symlink() and modem_link.is_symlink()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the twins' links did not appear"
        time.sleep(0.05)
    port = _open(gnss_link)
    try:
        speeds = [float(m.sogk) for m in _nmea(port, "VTG", count=4)]
    finally:
        port.close()
    # The vehicle the traffic drives (5× real time) is on the on-ramp: it speeds up.
    assert speeds == sorted(speeds) and speeds[-1] > speeds[0], speeds
    port = _open(modem_link)
    try:
        assert b"+CSQ: 24,99" in _at(port, b"AT+CSQ\r")
    finally:
        port.close()
    proc.send_signal(signal.SIGINT)
    status, _, err = _finish(proc)
    assert status == 0, err
    assert "GNSS twin on /dev/pts/" in err and "modem twin on /dev/pts/" in err, err
    assert not gnss_link.is_symlink() and not modem_link.is_symlink()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "drive.log"
    msg = can.Message(timestamp=1.0, arbitration_id=0x100, data=b"\x01", channel="can0")
    path.write_text(format_candump_line(msg))
    return path


@pytest.mark.parametrize(
    ("args", "status", "pattern"),
    [
        (["gnss", "--garbage", "0.7", "--truncated", "0.7"], 2, "at most 1"),
        (["slcan", "--bus", "nonsense"], 2, "has no scheme"),
        (["modem", "--link", "FILE"], 2, "is no symlink"),
        (["modem", "--link", "/nonexistent/dir/modem0"], 2, "No such file or directory"),
        (["serve", "--socketcand", "127.0.0.1:0", "--replay", "LOG", "--gnss-link", "X"], 2,
         "--gnss-link needs"),
        (["slcan", "--bus", "socketcand://127.0.0.1:1/can0"], 1, "cannot open bus"),
        (["gnss", "--scenario", "nope"], 1, "no packaged scenario"),
    ],
)  # fmt: skip
def test_failures_are_explained_in_one_line(
    args: list[str],
    status: int,
    pattern: str,
    tmp_path: Path,
    log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    regular = tmp_path / "file"
    regular.write_text("")
    names = {"FILE": str(regular), "LOG": str(log), "X": str(tmp_path / "x")}
    args = [names.get(a, a) for a in args]
    assert main(["sim", *args, "--duration", "1"]) == status
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and pattern in lines[0], captured.err
    assert lines[0].startswith("tbox sim: error: ")
    assert captured.out == ""


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["gnss", "--rate-hz", "20"], "at most 10"),
        (["gnss", "--speed", "0"], "must be above 0"),
        (["gnss", "--garbage", "2"], "between 0 and 1"),
        (["gnss", "--no-fix", "20-10"], "START < END"),
        (["gnss", "--talker", "GL"], "invalid choice"),
        (["modem", "--drop-at", "-1"], "≥ 0"),
        (["slcan"], "--bus"),
    ],
)
def test_bad_usage_exits_2(
    args: list[str], pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sim", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err.splitlines()[-1] and pattern in err.splitlines()[-1], err


def test_help() -> None:
    for command in ("gnss", "modem", "slcan"):
        with pytest.raises(SystemExit) as info:
            main(["sim", command, "--help"])
        assert info.value.code == 0
