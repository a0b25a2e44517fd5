"""``tbox flash``: across processes over ``tbox sim serve --socketcand`` (with simulated ECUs in
another process), in-process on a virtual bus; exit statuses and one-line errors (C1)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from firmware_stub import EcuHost
from tests.firmware_stub.support import (
    OTHER_KEY,
    REPO,
    ecu_config,
    make_image,
    one_line_error,
    public_pem,
    start_ecu_run,
    tbox,
)
from tests.sim_server import start_sim_server, stop_sim_server


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "pub": tmp_path / "k.pub",
        "v1": tmp_path / "v1.img",
        "v2": tmp_path / "v2.img",
        "forged": tmp_path / "forged.img",
        "pc": tmp_path / "pc.img",
        "slow": tmp_path / "slow.img",
    }
    paths["pub"].write_bytes(public_pem())
    paths["v1"].write_bytes(make_image(1))
    paths["v2"].write_bytes(make_image(2, 20_000))
    paths["forged"].write_bytes(make_image(3, 5_000, key=OTHER_KEY))
    paths["pc"].write_bytes(make_image(2, 20_000, hardware_id="pc"))
    paths["slow"].write_bytes(make_image(2, 20_000, hardware_id="slow"))
    return paths


def test_flash_across_processes(tmp_path: Path, files: dict[str, Path]) -> None:
    server, port = start_sim_server(tmp_path, "--bus-name", "can0", "--bus-name", "diag", "--quiet")
    bus = f"socketcand://127.0.0.1:{port}/diag"
    common = ["--bus", bus, "--trusted-key", str(files["pub"]), "--bank-size", "64k"]
    runs = []
    try:
        runs.append(
            start_ecu_run(
                [
                    *common,
                    "--ecu",
                    "bms",
                    "--ecu",
                    "pc:7E1:7E9",
                    "--state-dir",
                    str(tmp_path / "a"),
                    "--factory-image",
                    str(files["v1"]),
                    "--fault",
                    "pc:power-cut-at-block=3",
                    "--fault",
                    "pc:power-off=0.3",
                ]
            )
        )
        runs.append(
            start_ecu_run(
                [
                    *common,
                    "--ecu",
                    "slow:7E2:7EA",
                    "--state-dir",
                    str(tmp_path / "b"),
                    "--erase-time",
                    "2",
                ]
            )
        )
        flash = ["flash", "--bus", bus]

        done = tbox([*flash, "--ecu", "bms", str(files["v2"])])
        assert done.returncode == 0, done.stderr
        assert (
            done.stdout.startswith("bms: version 2 (sha256 ") and ": running after" in done.stdout
        )
        assert "bms: transfer: 0 of 20192 bytes" in done.stderr  # phase lines off a terminal
        info = tbox(["ecu", "info", "--bus", bus, "--ecu", "bms", "--json"])
        assert json.loads(info.stdout)["version"] == 2
        again = tbox([*flash, "--ecu", "bms", str(files["v2"])])
        assert again.returncode == 0 and "already running, nothing sent" in again.stdout

        resumed = tbox([*flash, "--ecu", "pc:7E1:7E9", str(files["pc"]), "--timeout", "0.3"])
        assert resumed.returncode == 0, resumed.stderr
        assert (
            "resumed at byte 8186" in resumed.stdout
        )  # two blocks of 4095 - 2 bytes and "2 attempts" in resumed.stdout
        assert "pc: power cut at a TransferData block being written: off for 0.3 s" in (
            runs[0].stderr
        )

        quiet = [*flash, "--quiet"]
        wrong = tbox([*quiet, "--ecu", "bms", str(files["v2"]), "--key", "guess", "--force"])
        one_line_error(wrong, 1, "NRC 0x35 invalidKey (is the secret (--key) right?)")
        forged = tbox([*quiet, "--ecu", "bms", str(files["forged"]), "--key", "tbox-bench-secret"])
        line = one_line_error(forged, 1, "RoutineControl 0xFF01 (check programming dependencies)")
        assert "status 0x03: the Ed25519 signature does not verify" in line
        old = tbox([*flash, "--ecu", "bms", str(files["v1"])])  # not quiet: the error comes last
        assert old.returncode == 1
        assert old.stderr.splitlines()[-1].startswith(
            "tbox flash: error: ECU bms: refused before transfer: status 0x05"
        )

        # Ctrl-C during the slow erase: one line, and the same command then completes.
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", *flash, "--ecu", "slow:7E2:7EA", str(files["slow"])],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while "session programming" not in runs[1].stderr and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        interrupted = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert interrupted.returncode == 1, err
        assert (
            err.strip()
            .splitlines()[-1]
            .startswith("tbox flash: error: ECU slow: stopped after 0 of 20192 bytes")
        )
        finished = tbox([*flash, "--ecu", "slow:7E2:7EA", str(files["slow"]), "--quiet"])
        assert finished.returncode == 0, finished.stderr
        assert finished.stderr == ""
    finally:
        for run in runs:
            run.stop()
        stop_sim_server(server)
    assert all(run.proc.returncode == 0 for run in runs)


@pytest.fixture
def virtual_ecu(tmp_path: Path) -> Iterator[str]:
    """A simulated ECU (factory version 1) on a virtual bus, served from another thread."""
    url = "virtual://flash-cli"
    started = threading.Event()
    control: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve() -> None:
        async with EcuHost(url, [ecu_config(factory=make_image(1))], state_dir=tmp_path / "st"):
            stop = asyncio.Event()
            control.append((asyncio.get_running_loop(), stop))
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    yield url
    loop, stop = control[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def test_flash_in_process_on_a_virtual_bus(
    virtual_ecu: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["flash", "--bus", virtual_ecu, "--ecu", "bms", str(files["v2"]), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "bms: version 2" in out and "running" in out


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--ecu", "bms", "missing.img"], 1, "cannot read ECU image missing.img"),
        (["--ecu", "bms:1", "x.img"], 2, "NAME:REQID:RESPID"),
        (["--ecu", "bms", "x.img", "--key", "hex:zz"], 2, "hex: must be followed by hex digits"),
    ],
)
def test_flash_usage_and_input_errors(
    tmp_path: Path, args: list[str], status: int, message: str
) -> None:
    (tmp_path / "x.img").write_bytes(make_image(1))
    result = subprocess.run(
        [sys.executable, "-m", "agent", "flash", "--bus", "virtual://nobody", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(result, status, message)


def test_flash_help_and_argparse_errors() -> None:
    result = tbox(["flash", "--help"])
    assert result.returncode == 0 and "--no-activate" in result.stdout
    bad = tbox(["flash", "--bus", "virtual://x", "--ecu", "b", "x.img", "--security-level", "2"])
    assert bad.returncode == 2 and "the level must be odd" in bad.stderr
