"""``tbox ecu run|info|image|keygen|inspect``: in-process where the bus allows it, across
processes over ``tbox sim serve --socketcand`` (C1 exit statuses and one-line errors)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from agent.cli import main
from ota.ecu_image import EcuImage
from tests.firmware_stub.support import (
    OTHER_KEY,
    make_image,
    one_line_error,
    private_pem,
    public_pem,
    start_ecu_run,
    tbox,
)
from tests.sim_server import start_sim_server, stop_sim_server


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "k.pem", tmp_path / "k.pem.pub"
    private.write_bytes(private_pem())
    private.chmod(0o600)
    public.write_bytes(public_pem())
    return private, public


def test_help_lists_the_subcommands() -> None:
    for args in (["ecu", "--help"], ["ecu", "run", "--help"], ["ecu", "image", "--help"]):
        result = tbox(args)
        assert result.returncode == 0 and "usage: tbox ecu" in result.stdout


def test_keygen_image_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "sign.pem"
    assert main(["ecu", "keygen", str(key)]) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "sign.pem.pub").exists()
    payload = tmp_path / "fw.bin"
    payload.write_bytes(b"\x42" * 5000)
    out = tmp_path / "fw.img"
    args = ["ecu", "image", str(payload), "-o", str(out), "--version", "7", "--hardware-id", "bms"]
    assert main([*args, "--key", str(key)]) == 0
    image = EcuImage.load(out)
    assert (image.version, image.hardware_id, image.payload) == (7, "bms", b"\x42" * 5000)
    assert f"wrote {out}: version 7 for bms" in capsys.readouterr().out
    assert main(["ecu", "inspect", str(out), "--trusted-key", f"{key}.pub", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["verified"] is True and shown["sha256"] == image.sha256.hex()
    assert main(["ecu", "inspect", str(out)]) == 0
    assert "key_id" in capsys.readouterr().out


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    one_line_error(tbox(["ecu", "keygen", str(key)]), 2, "exists (use --force")


def test_image_and_inspect_errors_are_one_line(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    payload = tmp_path / "fw.bin"
    payload.write_bytes(b"x")
    base = ["ecu", "image", str(payload), "-o", str(tmp_path / "o.img"), "--version", "1"]
    one_line_error(
        tbox([*base, "--hardware-id", "bad id", "--key", str(private)]), 2, "hardware id"
    )
    private.chmod(0o644)
    one_line_error(tbox([*base, "--hardware-id", "bms", "--key", str(private)]), 1, "chmod 600")
    one_line_error(tbox([*base[:2], "missing.bin", *base[3:], "--hardware-id", "b", "--key",
                         str(public)]), 1, "key file")  # fmt: skip
    forged = tmp_path / "forged.img"
    forged.write_bytes(make_image(1, key=OTHER_KEY))
    one_line_error(
        tbox(["ecu", "inspect", str(forged), "--trusted-key", str(public)]), 1, "signed by key"
    )
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"junk" * 100)
    one_line_error(tbox(["ecu", "inspect", str(junk)]), 1, "not a tbox ECU image")


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        (["--ecu", "bms:7E0"], 2, "NAME:REQID:RESPID"),
        (["--ecu", "bms", "--ecu", "vcu:7E0:7E9"], 2, "share the CAN id 0x7E0"),
        (["--ecu", "bms", "--ecu", "bms:7E1:7E9"], 2, "two ECUs are named 'bms'"),
        (["--ecu", "bms", "--fault", "melt=1"], 2, "unknown fault 'melt'"),
        (["--ecu", "bms", "--trusted-key", "/nonexistent.pub"], 1, "cannot read public key"),
        (["--ecu", "bms", "--vin", "short"], 2, "17 ASCII characters"),
        (["--ecu", "bms", "--hardware-id", "abs=x"], 2, "ECU=HW"),
    ],
)
def test_ecu_run_usage_errors(tmp_path: Path, extra: list[str], status: int, message: str) -> None:
    args = ["ecu", "run", "--bus", "virtual://x", "--state-dir", str(tmp_path), *extra]
    one_line_error(tbox(args), status, message)


def test_a_factory_image_must_fit_an_ecu(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    image = tmp_path / "vcu.img"
    image.write_bytes(make_image(1, hardware_id="vcu"))
    args = ["ecu", "run", "--bus", "virtual://x", "--ecu", "bms", "--state-dir", str(tmp_path)]
    one_line_error(tbox([*args, "--factory-image", str(image)]), 2, "which no ECU is")


def test_ecu_run_in_process_for_a_while(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    _, public = keys
    image = tmp_path / "v1.img"
    image.write_bytes(make_image(1))
    status = main(
        [
            "ecu", "run", "--bus", "virtual://cli-run", "--ecu", "bms", "--ecu", "vcu",
            "--state-dir", str(tmp_path / "st"), "--trusted-key", str(public),
            "--factory-image", str(image), "--duration", "0.3", "--bank-size", "64k",
        ]
    )  # fmt: skip
    assert status == 0
    meta = json.loads((tmp_path / "st" / "bms" / "meta.json").read_text())
    assert meta["active"] == 0 and meta["banks"][0]["version"] == 1
    assert json.loads((tmp_path / "st" / "vcu" / "meta.json").read_text())["active"] is None


def test_ecu_run_and_info_across_processes(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    _, public = keys
    image = tmp_path / "v1.img"
    image.write_bytes(make_image(1))
    server, port = start_sim_server(tmp_path, "--bus-name", "can0", "--bus-name", "diag", "--quiet")
    bus = f"socketcand://127.0.0.1:{port}/diag"
    try:
        ecus = start_ecu_run(
            [
                "--bus", bus, "--ecu", "bms", "--ecu", "vcu:7E5:7ED", "--state-dir",
                str(tmp_path / "st"), "--trusted-key", str(public), "--factory-image", str(image),
                "--bank-size", "64k",
            ]
        )  # fmt: skip
        startup = ecus.stderr
        assert "bms (0x7E0/0x7E8) on socketcand://" in startup
        assert "bank 0, version 1" in startup and "vcu (0x7E5/0x7ED)" in startup
        info = tbox(["ecu", "info", "--bus", bus, "--ecu", "bms", "--ecu", "vcu:7E5:7ED", "--json"])
        assert info.returncode == 0, info.stderr
        bms, vcu = (json.loads(line) for line in info.stdout.splitlines())
        assert (bms["ecu"], bms["active_bank"], bms["version"]) == ("bms", 0, 1)
        assert bms["banks"][0] == {"state": "valid", "version": 1}
        assert bms["sha256"] == EcuImage.from_bytes(make_image(1)).sha256.hex()
        assert (vcu["active_bank"], vcu["version"], vcu["hardware_id"]) == (None, None, "vcu")
        text = tbox(["ecu", "info", "--bus", bus, "--ecu", "bms"])
        assert "active: bank 0, version 1" in text.stdout and "fingerprint: (none)" in text.stdout
        nobody = tbox(["ecu", "info", "--bus", bus, "--ecu", "abs:7E3:7EB", "--timeout", "0.2"])
        one_line_error(nobody, 1, "ECU abs: no response to ReadDataByIdentifier")
        assert ecus.stop(signal.SIGTERM) == 0, ecus.stderr
        assert "bms: 14 requests" in ecus.stderr and "vcu: 7 requests" in ecus.stderr
    finally:
        stop_sim_server(server)


def test_a_bus_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    args = ["ecu", "run", "--bus", "socketcand://127.0.0.1:1/can0", "--ecu", "bms"]
    one_line_error(tbox([*args, "--state-dir", str(tmp_path)]), 1, "cannot open bus")
