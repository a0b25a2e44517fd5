"""A real power cut (contract C6: exit 137 at a crash point) at every persistence step of the
simulated ECU, in a child process flashing it and rolling it back; afterwards the ECU boots a
valid bank and the next flash (resuming where it can) ends on the new image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.crashpoints import ENV_VAR, all_crashpoints
from ota.ecu_image import EcuImage
from tests.firmware_stub.crash_child import CHUNK, V2, config
from tests.firmware_stub.support import flasher, running

REPO = Path(__file__).resolve().parents[2]
POINTS = sorted(p.name for p in all_crashpoints() if p.name.startswith("ecu."))

# (point, n): every point at its first hit, and later hits where a point is reached often.
# The child reaches blocks 1–3 (refused image) and 4–15 (version 2); the active bank switches at
# version 2's reset and again at the rollback's.
CASES = [(point, 1) for point in POINTS] + [
    ("ecu.bank_data_erased", 2),
    ("ecu.block_written", 4),
    ("ecu.block_written", 15),
    ("ecu.before_progress", 9),
    ("ecu.after_progress", 15),
    ("ecu.before_fingerprint", 2),
    ("ecu.before_active_switch", 2),
    ("ecu.after_active_switch", 2),
]


def run_child(state_dir: Path, plan: str | None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in {ENV_VAR, "PYTHONUNBUFFERED"}}
    if plan is not None:
        environ[ENV_VAR] = plan
    return subprocess.run(
        [sys.executable, "-m", "tests.firmware_stub.crash_child", str(state_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environ,
    )


def test_the_child_runs_through_without_a_crash_point(tmp_path: Path) -> None:
    child = run_child(tmp_path, None)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split("\n")[:4] == [
        "step 1 done",
        "step 2 done",
        "step 3 done",
        "step 4 done",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "n"), CASES)
async def test_a_power_cut_at_every_crash_point_leaves_a_bootable_ecu(
    tmp_path: Path, point: str, n: int
) -> None:
    child = run_child(tmp_path, f"{point}:{n}")
    assert child.returncode == 137, f"{point}:{n} not reached: {child.stdout} {child.stderr}"
    assert f"crash point {point} reached {n}×" in child.stderr
    async with running(tmp_path, [config()]) as (host, url):  # type: ignore[list-item]
        ecu = host.ecus["bms"]
        assert ecu.boot_report is not None and ecu.boot_report.active is not None, (
            f"no bootable bank after a power cut at {point}:{n}"
        )
        assert ecu.boot_report.version in (1, 2)
        result = await flasher(url).flash(EcuImage.from_bytes(V2))
        assert ecu.flash.meta.active_version == 2
        active = ecu.flash.meta.active_record
        assert active is not None and active.sha256 == EcuImage.from_bytes(V2).sha256
    if (point, n) == ("ecu.before_progress", 9):
        # Version 2's sixth block was written, its progress not recorded: resume after five.
        assert result.resumed_from == 5 * CHUNK
