"""Health checks: commands and Python entry points, passing, failing, hanging, misconfigured.

The entry points called by the tests are the functions at the top of this module; they run in a
child interpreter that imports this module by name."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from ota.errors import HealthCheckConfigError
from ota.health_check import CommandCheck, EntryPointCheck, HealthResult

HERE = __name__


def returns_true() -> bool:
    return True


def returns_false() -> bool:
    return False


def raises() -> bool:
    raise ConnectionError("broker 10.0.0.1:8883 refused the connection")


def returns_a_string() -> str:
    return "yes"


async def async_true() -> bool:
    await asyncio.sleep(0)
    return True


def hangs() -> bool:
    time.sleep(60)
    return True


def exits() -> bool:
    os._exit(7)


not_callable = 42


# --- commands ----------------------------------------------------------------------------------


def test_a_command_that_exits_0_passes() -> None:
    result = CommandCheck("exit 0", timeout_s=10).run()
    assert result == HealthResult(
        True, "health check command `exit 0` exited with status 0", result.duration_s
    )
    assert result.duration_s >= 0


def test_a_failing_command_reports_its_status_and_last_line() -> None:
    result = CommandCheck(
        "echo starting; echo modem not registered >&2; exit 4", timeout_s=10
    ).run()
    assert not result.passed
    assert result.reason == (
        "health check command `echo starting; echo modem not registered >&2; exit 4` "
        "exited with status 4: modem not registered"
    )


def test_an_argument_vector_runs_without_a_shell() -> None:
    check = CommandCheck([sys.executable, "-c", "import sys; sys.exit(0)"], timeout_s=30)
    assert check.run().passed
    assert check.describe().startswith(sys.executable)
    result = CommandCheck(["false"], timeout_s=10).run()
    assert result.reason == "health check command `false` exited with status 1"


def test_a_hanging_command_is_killed_with_its_helpers_at_the_timeout() -> None:
    start = time.monotonic()
    # the helper keeps the output pipe open; both must die at the timeout
    result = CommandCheck("sleep 30 & sleep 30", timeout_s=0.5).run()
    assert time.monotonic() - start < 5
    assert not result.passed
    assert result.reason.endswith("timed out after 0.5 s and was killed")


def test_a_command_that_cannot_start_fails_with_the_reason() -> None:
    result = CommandCheck(["/nonexistent/selftest"], timeout_s=10).run()
    assert not result.passed
    assert "could not be started: No such file or directory" in result.reason


def test_a_command_killed_by_a_signal_says_so() -> None:
    result = CommandCheck("kill -9 $$", timeout_s=10).run()
    assert not result.passed and "was killed by signal 9" in result.reason


# --- entry points ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "passed", "reason"),
    [
        ("returns_true", True, "returned True"),
        ("async_true", True, "returned True"),
        ("returns_false", False, "returned False"),
        (
            "raises",
            False,
            "raised ConnectionError: broker 10.0.0.1:8883 refused the connection",
        ),
        ("returns_a_string", False, "returned 'yes', not True or False"),
        ("exits", False, "exited with status 7"),
        ("not_callable", False, f"cannot be loaded: {HERE}:not_callable is not callable"),
        ("missing", False, f"cannot be loaded: AttributeError: module '{HERE}' has no attribute"),
    ],
)
def test_an_entry_point_passes_only_when_it_returns_true(
    function: str, passed: bool, reason: str
) -> None:
    result = EntryPointCheck(f"{HERE}:{function}", timeout_s=30).run()
    assert result.passed is passed
    assert result.reason.startswith(f"health check entry point {HERE}:{function} {reason}"), (
        result.reason
    )


def test_a_missing_module_is_a_failed_check_not_a_crash() -> None:
    result = EntryPointCheck("tbox_selftest_not_installed:check", timeout_s=30).run()
    assert not result.passed
    assert "cannot be loaded: ModuleNotFoundError" in result.reason


def test_a_hanging_entry_point_is_killed_at_the_timeout() -> None:
    start = time.monotonic()
    result = EntryPointCheck(f"{HERE}:hangs", timeout_s=1.5).run()
    assert time.monotonic() - start < 10
    assert not result.passed and result.reason.endswith("timed out after 1.5 s and was killed")


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: CommandCheck("   "),
        lambda: CommandCheck([]),
        lambda: CommandCheck(["ok", 3]),  # type: ignore[list-item]
        lambda: CommandCheck("true", timeout_s=0),
        lambda: EntryPointCheck("module_without_function"),
        lambda: EntryPointCheck("a.b:c d"),
        lambda: EntryPointCheck("os:getcwd", timeout_s=-1),
    ],
)
def test_a_malformed_check_is_refused_when_configured(make: object) -> None:
    assert callable(make)
    with pytest.raises(HealthCheckConfigError):
        make()


def test_checks_are_frozen_values() -> None:
    assert CommandCheck(["true"], 5) == CommandCheck(("true",), 5.0)
    assert EntryPointCheck("a.b:c").timeout_s == 60.0
