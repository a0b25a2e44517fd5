"""Named crash points (contract C6): simulated power cuts at every step that persists state.

A module that persists state declares its points once, at import time::

    BEFORE_COMMIT = crashpoints.declare("queue.before_commit", "a put's rows are written")
    ...
    BEFORE_COMMIT.hit()

With ``TBOX_CRASHPOINT=<name>:<n>`` in the environment, the process exits at once with status 137
(``os._exit``: no flushing, no ``finally``, no atexit — as a power cut or ``kill -9`` would) the
n-th time point ``<name>`` is reached. Tests use it to prove that no crash anywhere loses accepted
data; ``tbox debug crashpoints`` lists every name.

The variable is read once, lazily, at the first hit of any point; a malformed value or an unknown
name raises :class:`CrashPointError` there, naming the variable, so a typo cannot make a crash test
pass by never crashing. Unset, :meth:`CrashPoint.hit` costs one increment and one comparison.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass

from agent.errors import UsageError

ENV_VAR = "TBOX_CRASHPOINT"
EXIT_STATUS = 137  # what a shell reports for a process killed by SIGKILL (128 + 9)

# Every module that declares crash points. all_crashpoints() imports them so that the listing is
# complete even in a process that has not used them yet: add a module here when it declares one.
DECLARING_MODULES: tuple[str, ...] = (
    "agent.telemetry_codec",
    "agent.upload_queue",
    "agent.uplink",
    "firmware_stub.flash",
    "ota.ab_installer",
    "ota.campaign_runner",
    "ota.campaign_store",
    "ota.fetcher",
    "ota.trusted_time",
    "ota.update_client",
)

_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")

_registry: dict[str, CrashPoint] = {}


class CrashPointError(UsageError):
    """``TBOX_CRASHPOINT`` is malformed or names no declared crash point."""


@dataclass(frozen=True, slots=True)
class _Plan:
    name: str
    at: int


_UNPARSED = _Plan("", 0)


class _Armed:
    # The parsed variable: _UNPARSED until the first hit, then None (unset) or the plan.
    plan: _Plan | None = _UNPARSED


class CrashPoint:
    """One named point; :meth:`hit` counts and, when armed, ends the process.

    Counting is exact when a point is reached from one thread at a time, which is how the agent
    uses them (each persisting component hits its points from its own worker thread).
    """

    __slots__ = ("_fire_at", "description", "hits", "name")

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.hits = 0
        # The hit count at which _reached() runs. 1 makes the first hit parse the variable;
        # afterwards it is the armed count, or 0 (never equal: hits are ≥ 1) when not armed.
        self._fire_at = 1

    def hit(self) -> None:
        """Count one arrival at this point; exit with status 137 if this is the armed arrival."""
        self.hits += 1
        if self.hits == self._fire_at:
            self._reached()

    def _reached(self) -> None:
        try:
            plan = _current_plan()
        except CrashPointError:
            self._fire_at = self.hits + 1  # stay loud: the next hit raises again
            raise
        if plan is None or plan.name != self.name:
            self._fire_at = 0
        elif plan.at == self.hits:
            _power_cut(self)
        else:
            self._fire_at = plan.at if plan.at > self.hits else 0

    def __repr__(self) -> str:
        return f"CrashPoint({self.name!r}, hits={self.hits})"


def declare(name: str, description: str) -> CrashPoint:
    """Register crash point *name* (dotted, lower case: ``queue.before_commit``) and return it.

    Call at import time, as a module-level constant. Declaring a name twice is a programming error
    (:class:`ValueError`): two steps sharing a name could not be crashed separately.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"crash point name {name!r} is not dotted lower-case words")
    if not description.strip():
        raise ValueError(f"crash point {name!r} needs a description")
    if name in _registry:
        raise ValueError(f"crash point {name!r} is declared twice")
    point = CrashPoint(name, description.strip())
    _registry[name] = point
    return point


def crashpoint(name: str) -> None:
    """Hit the declared point *name* (a dictionary look-up slower than a module constant's hit)."""
    point = _registry.get(name)
    if point is None:
        all_crashpoints()  # its module may not have been imported yet
        point = _registry.get(name)
        if point is None:
            raise ValueError(f"crash point {name!r} is not declared")
    point.hit()


def all_crashpoints() -> list[CrashPoint]:
    """Every declared crash point, sorted by name, after importing every declaring module."""
    for module in DECLARING_MODULES:
        importlib.import_module(module)
    return [_registry[name] for name in sorted(_registry)]


def reset() -> None:
    """Zero every counter and read ``TBOX_CRASHPOINT`` again at the next hit (for tests)."""
    _Armed.plan = _UNPARSED
    for point in _registry.values():
        point.hits = 0
        point._fire_at = 1


def parse_plan(value: str) -> tuple[str, int]:
    """``"<name>:<n>"`` → ``(name, n)``; :class:`CrashPointError` naming the variable otherwise."""
    name, sep, count = value.strip().rpartition(":")
    if not sep or not _NAME.fullmatch(name) or not count.isdigit() or int(count) < 1:
        raise CrashPointError(
            f"{ENV_VAR}={value!r} is malformed: expected <name>:<n> with n ≥ 1, "
            "e.g. queue.before_commit:3 (tbox debug crashpoints lists the names)"
        )
    return name, int(count)


def _current_plan() -> _Plan | None:
    if _Armed.plan is _UNPARSED:
        value = os.environ.get(ENV_VAR, "")
        if not value.strip():
            _Armed.plan = None
        else:
            name, count = parse_plan(value)
            if name not in _registry and name not in {p.name for p in all_crashpoints()}:
                raise CrashPointError(
                    f"{ENV_VAR}={value!r} names no declared crash point "
                    "(tbox debug crashpoints lists them)"
                )
            _Armed.plan = _Plan(name, count)
    return _Armed.plan


def _power_cut(point: CrashPoint) -> None:
    # os.write, not print: Python's buffered streams must not be flushed, as on a real power cut;
    # the line only helps whoever reads the test's stderr.
    try:
        os.write(2, f"tbox: crash point {point.name} reached {point.hits}×: exit 137\n".encode())
    finally:
        os._exit(EXIT_STATUS)
