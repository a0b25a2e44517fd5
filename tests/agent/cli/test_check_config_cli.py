"""``tbox check-config FILE [--json]``: a summary and exit 0, or the located error and exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from can_dbc import SAMPLE_VEHICLE_DBC

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "agent.toml"

MINIMAL = '[vehicle]\nid = "V1"\n[[bus]]\nurl = "virtual://v"\n'


def test_the_example_is_summarized(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    out = " ".join(captured.out.split())  # one paragraph, wrapped
    assert out.startswith(f"{EXAMPLE}: OK. Vehicle TBXEV5M20R0000001, state in /var/lib/tbox;")
    for part in [
        f"bus can0 (socketcan://can0) decoded with {SAMPLE_VEHICLE_DBC};",
        "3 schemes from 1 file (pushed schemes accepted);",
        "broker mqtt.example.com:8883 with TLS, MQTT 5;",
        "queue /var/lib/tbox/queue.db capped at 256 MiB;",
        "status socket /var/lib/tbox/status.sock;",
        "Prometheus metrics on 127.0.0.1:9464.",
    ]:
        assert part in out, out
    assert all(len(line) <= 100 for line in captured.out.splitlines())


def test_a_minimal_file_is_summarized_with_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + '[status]\nprometheus = "[::1]:9100"\n[mqtt]\nmqtt5 = false\n')
    assert main(["check-config", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "0 schemes from 0 files (pushed schemes accepted)" in out
    assert "broker localhost:1883 with no TLS, MQTT 3.1.1;" in out
    assert "Prometheus metrics on [::1]:9100." in out
    path.write_text(MINIMAL)
    assert main(["check-config", str(path)]) == 0
    assert "Prometheus metrics off." in " ".join(capsys.readouterr().out.split())


def test_json_shows_the_parsed_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--json", str(EXAMPLE)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["vehicle_id"] == "TBXEV5M20R0000001"
    assert data["source"] == str(EXAMPLE)
    assert data["state_dir"] == "/var/lib/tbox"
    (bus,) = data["buses"]
    assert bus["spec"]["url"] == "socketcan://can0" and bus["spec"]["name"] == "can0"
    assert bus["dbc"] == [str(SAMPLE_VEHICLE_DBC)]
    assert data["schemes"] == {
        "files": [str(EXAMPLE.parent / "schemes.toml")],
        "accept_pushed": True,
    }
    assert data["state"]["signals"][0] == "ESC_VehicleSpeed.ESC_VehSpd"
    assert data["queue"] == {
        "path": "/var/lib/tbox/queue.db",
        "max_bytes": 256 * 2**20,
        "ttl_s": 7 * 86400.0,
    }
    assert data["mqtt"]["password"] == "<redacted>"  # never printed
    assert (data["mqtt"]["host"], data["mqtt"]["port"], data["uses_tls"]) == (
        "mqtt.example.com",
        8883,
        True,
    )
    assert data["commands"]["trusted_keys"] == {}
    assert data["status"] == {
        "socket": "/var/lib/tbox/status.sock",
        "prometheus": "127.0.0.1:9464",
    }
    assert data["shutdown"] == {"stage_timeout_s": 5.0}


def test_an_error_is_one_line_with_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + "[mqtt]\nkeepalive_s = 45\n")
    assert main(["check-config", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"tbox check-config: error: {path}:6: mqtt.keepalive_s: 45 is above the maximum of 20 "
        "(a longer keepalive notices a dead link too late)\n"
    )
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 1
    assert capsys.readouterr().err == (
        f"tbox check-config: error: {tmp_path / 'missing.toml'}: file not found\n"
    )


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match="file not found"):
        main(["--debug", "check-config", str(tmp_path / "missing.toml")])


def test_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config", "--help"])
    assert info.value.code == 0
    assert "usage: tbox check-config" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["check-config"])
    assert info.value.code == 2
    assert "FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(EXAMPLE), "--no-such-option"])
    assert info.value.code == 2


def test_a_fresh_process(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "check-config", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = run("examples/agent.toml")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("examples/agent.toml: OK.")
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "[mqtt]\nport = = 3\n")
    failed = run(str(bad))
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"tbox check-config: error: {bad}:6: TOML syntax error:")
    assert len(failed.stderr.splitlines()) == 1 and "Traceback" not in failed.stderr
    assert run().returncode == 2
