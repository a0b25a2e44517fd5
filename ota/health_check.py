"""Health checks: does the software that just booted work well enough to be committed?

"It booted" is not enough (aktualizr's users' complaint): a new slot is committed only after a
check of the operator's choice passes on it, and a check that hangs must fail, not stall the
update. Two kinds, both run in a child process with a hard timeout:

* :class:`CommandCheck` — a command: a string runs through ``/bin/sh -c`` (as the operator wrote
  it in the configuration, pipes and all), a sequence runs as an argument vector. Exit status 0
  passes; anything else fails with the status and the last line of its output.
* :class:`EntryPointCheck` — a Python function named ``"package.module:function"``, called with
  no arguments in a fresh interpreter (``python -m ota.health_check ENTRY``) that sees the
  agent's import path. ``True`` passes; ``False``, an exception, or any other value fails. An
  ``async def`` function is run with :func:`asyncio.run`. A child process, not a thread: a
  thread that hangs cannot be stopped, and a check that calls ``sys.exit`` or crashes the
  interpreter must not take the agent with it.

On timeout the child's whole process group is killed (``start_new_session``), so a check that
started helpers leaves none behind. Checks never raise for a failing system: they return a
:class:`HealthResult` whose ``reason`` a user can act on. Only a malformed check (empty command,
malformed entry point, timeout ≤ 0) raises :class:`~ota.errors.HealthCheckConfigError`, at
construction.

Usage::

    result = CommandCheck("systemctl is-active tbox-agent", timeout_s=30).run()
    result = EntryPointCheck("agent.selftest:healthy", timeout_s=30).run()
    if not result.passed:
        print(result.reason)   # "…exited with status 3: broker unreachable"

:meth:`run` blocks for up to ``timeout_s``: from async code, ``await asyncio.to_thread(check.run)``
(the installer's :meth:`~ota.ab_installer.AbInstaller.check_health` is called that way).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from ota.errors import HealthCheckConfigError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "CommandCheck",
    "EntryPointCheck",
    "HealthCheck",
    "HealthResult",
]

DEFAULT_TIMEOUT_S: Final = 60.0
_OUTPUT_TAIL: Final = 4096  # bytes of output kept to explain a failure
_REASON_LINE: Final = 200  # characters of the explaining line kept in the reason
_ENTRY_POINT = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

# Exit statuses of the entry-point runner (``python -m ota.health_check``); 1 is left to Python
# itself (an uncaught error in the runner), so each outcome is told apart.
_EXIT_TRUE: Final = 0
_EXIT_FALSE: Final = 10
_EXIT_RAISED: Final = 11
_EXIT_NOT_BOOL: Final = 12
_EXIT_NOT_FOUND: Final = 13


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The outcome of one health check run."""

    passed: bool
    reason: str  # what happened, in words: "exited with status 0", "timed out after 30 s…"
    duration_s: float


class HealthCheck(Protocol):
    """Anything the installer can run to decide whether the booted software is healthy."""

    def run(self) -> HealthResult:
        """Run the check; never raises for an unhealthy system."""
        ...


def _check_timeout(timeout_s: float) -> None:
    if not timeout_s > 0:
        raise HealthCheckConfigError(f"health check timeout {timeout_s!r} s is not above 0")


@dataclass(frozen=True, slots=True)
class CommandCheck:
    """A command whose exit status 0 means healthy (see the module's docstring)."""

    command: str | tuple[str, ...]
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __init__(self, command: str | Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if isinstance(command, str):
            if not command.strip():
                raise HealthCheckConfigError("the health check command is empty")
            frozen: str | tuple[str, ...] = command
        else:
            frozen = tuple(command)
            if not frozen or not all(isinstance(a, str) for a in frozen) or not frozen[0]:
                raise HealthCheckConfigError(
                    f"health check command {list(frozen)!r} is not a non-empty list of strings"
                )
        _check_timeout(timeout_s)
        object.__setattr__(self, "command", frozen)
        object.__setattr__(self, "timeout_s", float(timeout_s))

    def describe(self) -> str:
        """The command as a user would type it."""
        return self.command if isinstance(self.command, str) else shlex.join(self.command)

    def run(self) -> HealthResult:
        """Run the command; pass on exit status 0."""
        argv = ["/bin/sh", "-c", self.command] if isinstance(self.command, str) else self.command
        return _run_child(f"command `{self.describe()}`", argv, self.timeout_s, _command_verdict)


@dataclass(frozen=True, slots=True)
class EntryPointCheck:
    """A Python function ``"package.module:function"`` returning ``True`` when healthy."""

    entry_point: str
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not isinstance(self.entry_point, str) or not _ENTRY_POINT.fullmatch(self.entry_point):
            raise HealthCheckConfigError(
                f"health check entry point {self.entry_point!r} is not of the form "
                "package.module:function"
            )
        _check_timeout(self.timeout_s)

    def run(self) -> HealthResult:
        """Call the function in a fresh interpreter; pass when it returns ``True``."""
        argv = [sys.executable, "-m", "ota.health_check", self.entry_point]
        return _run_child(f"entry point {self.entry_point}", argv, self.timeout_s, _entry_verdict)


def _run_child(
    what: str,
    argv: Sequence[str],
    timeout_s: float,
    verdict: _Verdict,
) -> HealthResult:
    start = time.monotonic()

    def result(passed: bool, reason: str) -> HealthResult:
        return HealthResult(passed, f"health check {what} {reason}", time.monotonic() - start)

    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed whole on timeout
            env=_child_environment(),
        )
    except OSError as e:
        return result(False, f"could not be started: {e.strerror or e}")
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return result(False, f"timed out after {timeout_s:g} s and was killed")
    finally:
        # Nothing a finished check started may outlive it: kill what is left of its group (the
        # group id is the reaped leader's pid; Linux hands out pids in sequence, so it cannot be
        # someone else's group this soon).
        _kill_group(proc, only_leftovers=True)
    passed, reason = verdict(proc.returncode, _last_line(output))
    return result(passed, reason)


class _Verdict(Protocol):
    def __call__(self, status: int, last_line: str) -> tuple[bool, str]: ...


def _command_verdict(status: int, last_line: str) -> tuple[bool, str]:
    if status == 0:
        return True, "exited with status 0"
    if status < 0:
        return False, f"was killed by signal {-status}" + (f": {last_line}" if last_line else "")
    return False, f"exited with status {status}" + (f": {last_line}" if last_line else "")


def _entry_verdict(status: int, last_line: str) -> tuple[bool, str]:
    known = {
        _EXIT_TRUE: (True, "returned True"),
        _EXIT_FALSE: (False, "returned False"),
        _EXIT_RAISED: (False, f"raised {last_line}"),
        _EXIT_NOT_BOOL: (False, f"returned {last_line}, not True or False"),
        _EXIT_NOT_FOUND: (False, f"cannot be loaded: {last_line}"),
    }
    if status in known:
        return known[status]
    return _command_verdict(status, last_line)


def _child_environment() -> dict[str, str]:
    # The entry point must resolve as the agent would resolve it: give the child our import path
    # (an editable install's finder is per interpreter and is found again by the child itself).
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    inherited = os.environ.get("PYTHONPATH")
    if inherited:
        paths.append(inherited)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _kill_group(proc: subprocess.Popen[bytes], *, only_leftovers: bool = False) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone already
    except PermissionError:
        if not only_leftovers:
            raise
    if not only_leftovers:
        proc.communicate()  # reap it and close the pipe


def _last_line(output: bytes) -> str:
    lines = output[-_OUTPUT_TAIL:].decode("utf-8", "replace").strip().splitlines()
    line = lines[-1].strip() if lines else ""
    return line if len(line) <= _REASON_LINE else line[: _REASON_LINE - 1] + "…"


def _run_entry_point(entry_point: str) -> int:
    """The child's side of :class:`EntryPointCheck`: call it and map the outcome to a status."""
    module_name, _, attribute = entry_point.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as e:  # any import-time failure of the check's module is the check's failure
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return _EXIT_NOT_FOUND
    if not callable(target):
        print(f"{entry_point} is not callable", file=sys.stderr)
        return _EXIT_NOT_FOUND
    try:
        value = target()
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
    except Exception as e:  # the check's own failure, reported as its reason
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return _EXIT_RAISED
    if value is True:
        return _EXIT_TRUE
    if value is False:
        return _EXIT_FALSE
    print(repr(value)[:_REASON_LINE], file=sys.stderr)
    return _EXIT_NOT_BOOL


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m ota.health_check package.module:function", file=sys.stderr)
        sys.exit(2)
    sys.exit(_run_entry_point(sys.argv[1]))
