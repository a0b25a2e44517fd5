"""``tbox sim …`` end to end in subprocesses: exit statuses 0/1/2 and one-line errors (C1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import can
import pytest

from agent.canlog import read_log
from sim.record import format_candump_line
from tests.sim_server import start_sim_server, stop_sim_server

REPO = Path(__file__).resolve().parents[3]


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


def _generator_available() -> bool:
    import importlib.util

    return (
        importlib.util.find_spec("sim.traffic") is not None
        and (REPO / "can_dbc" / "vehicles" / "tbox_ev.dbc").is_file()
    )


needs_generator = pytest.mark.skipif(
    not _generator_available(), reason="the DBC traffic generator is not in this build yet"
)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "drive.log"
    lines = []
    for i in range(500):
        channel = "can1" if i % 5 == 0 else "can0"
        msg = can.Message(
            timestamp=1_600_000_000 + i * 0.002,
            arbitration_id=0x100 + i % 16,
            is_extended_id=False,
            data=i.to_bytes(2, "big"),
            channel=channel,
        )
        lines.append(format_candump_line(msg))
    path.write_text("".join(lines))
    return path


def test_help() -> None:
    for args in (["sim", "--help"], ["sim", "serve", "--help"], ["sim", "record", "--help"]):
        result = _tbox(args)
        assert result.returncode == 0
        assert "usage: tbox sim" in result.stdout


def test_replay_fast_with_record(tmp_path: Path, log: Path) -> None:
    out = tmp_path / "out.log"
    result = _tbox(
        ["sim", "replay", str(log), "--bus", "virtual://x", "--speed", "0", "--record", str(out)]
    )
    assert result.returncode == 0, result.stderr
    assert "sent 500 frames" in result.stderr
    got = list(read_log(out))
    assert [int.from_bytes(m.data, "big") for m in got] == list(range(500))
    assert {m.channel for m in got} == {"can0", "can1"}
    assert got[0].timestamp > 1_700_000_000  # live times


def test_replay_real_time_duration_and_map(tmp_path: Path, log: Path) -> None:
    out = tmp_path / "out.log"
    started = time.monotonic()
    result = _tbox(
        [
            "sim",
            "replay",
            str(log),
            "--bus",
            "virtual://a?name=pt",
            "--bus",
            "virtual://b?name=body",
            "--map",
            "can0=pt",
            "--map",
            "can1=body",
            "--duration",
            "0.5",
            "--record",
            str(out),
            "--quiet",
        ]
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    got = list(read_log(out))
    assert 230 <= len(got) <= 251  # 0.5 s of a log with a frame every 2 ms
    assert {m.channel for m in got} == {"pt", "body"}
    assert elapsed >= 0.5


def test_replay_unrouted_channels_are_reported(log: Path) -> None:
    result = _tbox(
        ["sim", "replay", str(log), "--bus", "virtual://a", "--bus", "virtual://b", "--speed", "0"]
    )
    assert result.returncode == 0, result.stderr
    assert "500 frames skipped" in result.stderr and "--map" in result.stderr


def test_replay_malformed_lines_are_summarised(tmp_path: Path) -> None:
    path = tmp_path / "odd.log"
    path.write_text("(1.0) can0 123#00\nnonsense\n(1.1) can0 123#0\n")
    result = _tbox(["sim", "replay", str(path), "--bus", "virtual://x", "--speed", "0"])
    assert result.returncode == 0, result.stderr
    assert "sent 1 frames" in result.stderr
    assert "2 malformed lines skipped" in result.stderr and "odd.log:2" in result.stderr


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["sim", "replay", "/nonexistent/x.log", "--bus", "virtual://x"], 2, "does not exist"),
        (["sim", "replay", "LOG", "--bus", "nonsense"], 2, "has no scheme"),
        (["sim", "replay", "LOG", "--bus", "virtual://a", "--bus", "virtual://a"], 2, "twice"),
        (["sim", "replay", "LOG", "--bus", "virtual://x", "--map", "can0"], 2, "LOGCHANNEL=BUS"),
        (["sim", "replay", "LOG", "--bus", "socketcan://tboxnope0"], 1, "cannot open bus"),
        (["sim", "replay", "-", "--bus", "virtual://x", "--loop"], 2, "standard input"),
        (["sim", "serve", "--socketcand", "localhost"], 2, "HOST:PORT"),
        (["sim", "serve", "--socketcand", "127.0.0.1:0", "--loop"], 2, "--replay"),
        (
            ["sim", "serve", "--socketcand", "127.0.0.1:0", "--replay", "LOG", "--dbc", "x"],
            2,
            "dbc",
        ),
        (["sim", "record", "--bus", "virtual://x", "-o", "/nonexistent/dir/x.log"], 2, "write"),
        (["sim", "run", "--bus", "virtual://x", "--dbc", "body=x.dbc"], 2, "no bus is named"),
    ],
)
def test_errors_are_one_line(
    log: Path, args: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process (the subprocess runs above and below cover the real entry point): the
    # same main() with its exit status and stderr, without a second of start-up per case.
    from agent.cli import main

    code = main([str(log) if a == "LOG" else a for a in args])
    err = capsys.readouterr().err
    _one_line_error(subprocess.CompletedProcess(args, code, "", err), status, message)
    assert err.startswith("tbox sim: error: ")


def test_port_in_use_is_a_failure() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _tbox(["sim", "serve", "--socketcand", f"127.0.0.1:{port}", "--duration", "1"])
    _one_line_error(result, 1, "cannot listen for socketcand clients")


def test_broken_log_is_an_input_error(tmp_path: Path) -> None:
    good = tmp_path / "good.blf"
    writer = can.BLFWriter(str(good))
    for i in range(300):
        writer.on_message_received(can.Message(timestamp=i, arbitration_id=1, data=b"12345678"))
    writer.stop()
    damaged = bytearray(good.read_bytes())
    for i in range(200, 400):
        damaged[i] ^= 0xFF
    bad = tmp_path / "bad.blf"
    bad.write_bytes(bytes(damaged))
    result = _tbox(["sim", "replay", str(bad), "--bus", "virtual://x", "--speed", "0"])
    _one_line_error(result, 1, "bad.blf")


def test_usage_errors_from_argparse_exit_2(log: Path) -> None:
    result = _tbox(["sim", "replay", str(log), "--bus", "virtual://x", "--speed", "-1"])
    assert result.returncode == 2
    assert "--speed" in result.stderr
    assert _tbox(["sim"]).returncode == 2
    assert _tbox(["sim", "replay", str(log)]).returncode == 2  # --bus is required


def test_record_duration(tmp_path: Path) -> None:
    out = tmp_path / "rec.log"
    result = _tbox(
        ["sim", "record", "--bus", "virtual://quiet", "-o", str(out), "--duration", "0.3"]
    )
    assert result.returncode == 0, result.stderr
    assert out.exists() and out.read_text() == ""
    assert "recorded 0 frames" in result.stderr


def test_record_from_socketcand_server(tmp_path: Path, log: Path) -> None:
    """serve (replay, looping) in one process, record in another, over socketcand."""
    out = tmp_path / "rec.log"
    server, port = start_sim_server(tmp_path, "--replay", str(log), "--loop", "--bus-name", "can0")
    try:
        result = _tbox(
            [
                "sim",
                "record",
                "--bus",
                f"socketcand://127.0.0.1:{port}/can0",
                "-o",
                str(out),
                "--max-frames",
                "100",
            ]
        )
        server.send_signal(signal.SIGINT)
        _, server_err = server.communicate(timeout=10)
    finally:
        stop_sim_server(server)
    assert result.returncode == 0, result.stderr
    assert server.returncode == 0, server_err
    got = list(read_log(out))
    assert len(got) == 100
    assert {m.channel for m in got} == {"can0"}  # the can1 frames are not served (--bus-name)
    assert "sent" in server_err


@needs_generator
def test_run_simulator_on_a_virtual_bus(tmp_path: Path) -> None:
    out = tmp_path / "sim.log"
    result = _tbox(
        ["sim", "run", "--bus", "virtual://car", "--duration", "1.6", "--record", str(out)]
    )
    assert result.returncode == 0, result.stderr
    assert "fr/s" in result.stderr and "load" in result.stderr  # the status line
    frames = list(read_log(out))
    assert len(frames) > 50
    assert {m.channel for m in frames} == {"car"}


@needs_generator
def test_serve_simulator_for_a_moment(tmp_path: Path) -> None:
    result = _tbox(
        ["sim", "serve", "--socketcand", "127.0.0.1:0", "--duration", "0.5", "--seed", "3"]
    )
    assert result.returncode == 0, result.stderr
    assert "socketcand listening on 127.0.0.1:" in result.stderr


@needs_generator
def test_run_with_unknown_scenario_is_an_error() -> None:
    result = _tbox(["sim", "run", "--bus", "virtual://x", "--scenario", "no-such-scenario"])
    assert result.returncode in (1, 2)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
