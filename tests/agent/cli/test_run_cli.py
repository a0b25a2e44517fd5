"""``tbox run``: a bad configuration is one line and exit 1; SIGTERM is a clean exit 0 (C1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agent.cli import main
from tests.mosquitto_broker import mosquitto_binary

REPO = Path(__file__).resolve().parents[3]


def test_bad_config_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[vehicle]\nid = "V1"\n\n[mqtt]\nkeepalive_s = 90\n')
    assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("tbox run: error: ")
    assert "agent.toml" in err


def test_missing_config_option_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["run"])
    assert excinfo.value.code == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")
def test_sigterm_stops_cleanly_and_unwritable_state_dir_is_explained() -> None:
    with tempfile.TemporaryDirectory(prefix="tbox-run-") as tmp:
        work = Path(tmp)
        config = work / "agent.toml"
        config.write_text(
            f'[vehicle]\nid = "V1"\nstate_dir = "{work / "state"}"\n\n'
            f'[[bus]]\nurl = "virtual://run-cli-{os.getpid()}?name=can0"\n\n'
            '[mqtt]\nhost = "127.0.0.1"\nport = 1\n'
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not (work / "state" / "status.sock").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "SIGTERM received: shutting down" in err
        assert "agent stopped" in err
        assert not (work / "state" / "status.sock").exists()

        # A state directory that cannot be created: one explained line, exit 1.
        (work / "blocker").write_text("a file, not a directory")
        config.write_text(config.read_text().replace(str(work / "state"), str(work / "blocker")))
        result = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("tbox run: error: ")
        assert "Traceback" not in result.stderr
