"""``tbox debug crashpoints``: every crash point (C6), as text or JSON; C1 conventions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.crashpoints import all_crashpoints

REPO = Path(__file__).resolve().parents[3]


def test_lists_every_crash_point_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["debug", "crashpoints"]) == 0
    lines = capsys.readouterr().out.splitlines()
    points = all_crashpoints()
    assert len(lines) == len(points)
    for line, point in zip(lines, points, strict=True):
        name, description = line.split(maxsplit=1)
        assert (name, description) == (point.name, point.description)


def test_json_for_machines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["debug", "crashpoints", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [{"name": p.name, "description": p.description} for p in all_crashpoints()]


@pytest.mark.parametrize("words", [["debug"], ["debug", "crashpoints"]], ids=" ".join)
def test_help_and_usage_errors(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--help"])
    assert excinfo.value.code == 0
    assert "usage: tbox debug" in capsys.readouterr().out
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--no-such-option"])
    assert excinfo.value.code == 2


def test_a_fresh_process_lists_them_all() -> None:
    # nothing imported beforehand: the listing must not depend on what ran first
    run = subprocess.run(
        [sys.executable, "-m", "agent", "debug", "crashpoints", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    names = [p["name"] for p in json.loads(run.stdout)]
    assert names == [p.name for p in all_crashpoints()]
    assert "queue.before_commit" in names
    bare = subprocess.run(
        [sys.executable, "-m", "agent", "debug"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bare.returncode == 2 and "Traceback" not in bare.stderr
