"""Crash points (contract C6): declaration, counting, the TBOX_CRASHPOINT variable, exit 137."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import crashpoints
from agent.crashpoints import (
    ENV_VAR,
    CrashPointError,
    all_crashpoints,
    crashpoint,
    declare,
    parse_plan,
)
from agent.errors import UsageError
from agent.upload_queue import CP_AFTER_ACK, CP_BEFORE_COMMIT

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Counters at zero and the variable read again; restored for the tests that follow."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    crashpoints.reset()
    yield monkeypatch
    monkeypatch.delenv(ENV_VAR, raising=False)
    crashpoints.reset()


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    # PYTHONUNBUFFERED would defeat the "nothing is flushed" check
    environ = {k: v for k, v in os.environ.items() if k not in {ENV_VAR, "PYTHONUNBUFFERED"}}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environ, **env},
    )


def test_every_point_is_listed_with_a_description() -> None:
    points = all_crashpoints()
    names = [p.name for p in points]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {"queue.before_commit", "queue.after_commit", "queue.before_ack_commit"} <= set(names)
    assert all(p.description for p in points)


def test_listing_is_complete_without_importing_the_declaring_modules() -> None:
    run = _python(
        """
        import sys
        from agent.crashpoints import all_crashpoints
        assert "agent.upload_queue" not in sys.modules
        print(len(all_crashpoints()))
        """
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == len(all_crashpoints())


def test_every_module_that_declares_points_is_in_the_list() -> None:
    # A module missing from DECLARING_MODULES would be left out of `tbox debug crashpoints`
    # (and of crash tests) in any process that has not imported it yet.
    declaring = set()
    for package in ("agent", "can_dbc", "ota", "security", "sim", "firmware_stub"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if path.name != "crashpoints.py" and "crashpoints.declare(" in text:
                declaring.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    assert declaring <= set(crashpoints.DECLARING_MODULES), declaring


def test_declaring_a_name_twice_or_a_bad_name_is_a_programming_error() -> None:
    before = len(all_crashpoints())
    with pytest.raises(ValueError, match="declared twice"):
        declare("queue.before_commit", "again")
    for bad in ("nodots", "Queue.Upper", "queue.with space", "queue.x:1", "queue."):
        with pytest.raises(ValueError, match="dotted"):
            declare(bad, "a description")
    with pytest.raises(ValueError, match="description"):
        declare("test.undescribed", "  ")
    assert len(all_crashpoints()) == before


def test_hits_are_counted_and_nothing_happens_when_unset(fresh: pytest.MonkeyPatch) -> None:
    for _ in range(3):
        CP_BEFORE_COMMIT.hit()
    crashpoint("queue.before_commit")
    assert CP_BEFORE_COMMIT.hits == 4
    assert CP_AFTER_ACK.hits == 0
    with pytest.raises(ValueError, match="not declared"):
        crashpoint("queue.no_such_point")


def test_armed_for_another_point_or_a_later_hit_does_not_exit(
    fresh: pytest.MonkeyPatch,
) -> None:
    fresh.setenv(ENV_VAR, "queue.after_ack_commit:1000")
    for _ in range(5):
        CP_BEFORE_COMMIT.hit()
        CP_AFTER_ACK.hit()
    assert (CP_BEFORE_COMMIT.hits, CP_AFTER_ACK.hits) == (5, 5)


@pytest.mark.parametrize(
    "value",
    [
        "queue.before_commit",
        "queue.before_commit:",
        "queue.before_commit:0",
        ":3",
        "queue.before_commit:x",
        "queue.before_commit:-1",
        "queue before:1",
    ],
)
def test_a_malformed_variable_is_a_clear_error_at_first_use(
    value: str, fresh: pytest.MonkeyPatch
) -> None:
    fresh.setenv(ENV_VAR, value)
    with pytest.raises(CrashPointError, match=f"{ENV_VAR}=.*malformed") as excinfo:
        CP_BEFORE_COMMIT.hit()
    assert isinstance(excinfo.value, UsageError)
    with pytest.raises(CrashPointError):  # and it stays loud
        CP_BEFORE_COMMIT.hit()


def test_an_unknown_name_is_an_error_not_a_silent_pass(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv(ENV_VAR, "queue.before_comit:1")
    with pytest.raises(CrashPointError, match="names no declared crash point"):
        CP_AFTER_ACK.hit()


def test_parse_plan() -> None:
    assert parse_plan("queue.before_commit:3") == ("queue.before_commit", 3)
    assert parse_plan(" ota.slot_switch:12 ") == ("ota.slot_switch", 12)


def test_the_nth_hit_exits_137_at_once_without_flushing() -> None:
    run = _python(
        """
        import atexit, sys
        from agent.upload_queue import CP_BEFORE_COMMIT
        atexit.register(lambda: print("atexit ran", flush=True))
        for i in range(1, 6):
            try:
                print(f"flushed {i}", flush=True)
                sys.stdout.write(f"buffered {i}\\n")  # flushed by the next print, if any
                CP_BEFORE_COMMIT.hit()
            finally:
                sys.stdout.write(f"finally {i}\\n")
        """,
        **{ENV_VAR: "queue.before_commit:3"},
    )
    assert run.returncode == 137
    # as a power cut: no flushing of Python's buffers, no finally, no atexit
    assert run.stdout.endswith("finally 2\nflushed 3\n"), run.stdout
    assert "crash point queue.before_commit reached 3" in run.stderr


def test_the_first_hit_can_crash() -> None:
    run = _python(
        "from agent.crashpoints import crashpoint\ncrashpoint('queue.after_commit')\nprint('no')",
        **{ENV_VAR: "queue.after_commit:1"},
    )
    assert run.returncode == 137 and "no" not in run.stdout
