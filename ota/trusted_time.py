"""Trusted time for the update client: a clock set back cannot revive expired metadata.

TUF protects against a *freeze attack* (a server, or someone in between, serving an old but
validly signed state forever) with expiry dates — and python-tuf's ngclient compares them with
the system clock. A vehicle's clock is easy to move: a flat RTC battery resets it to 1970, GNSS
and cellular time can be spoofed, and anyone who sets it back a month makes last month's
expired metadata "fresh" again. Uptane names this as a known weakness of time handling.

**The rule.** The client keeps a *floor*, persisted durably: the latest time at which it has
verified metadata as fresh. Before each refresh:

* if the clock reads earlier than ``floor - tolerance``, the refresh is refused with
  :attr:`~ota.errors.RejectionCode.CLOCK_ROLLBACK` — the clock has been set back (or lost);
* otherwise ngclient checks expiry at ``max(clock, floor)`` (the *reference time*), so a clock
  a little behind the floor, within the tolerance for drift, still cannot look further back;
* after a refresh succeeds (every top-level role of the repository verified and unexpired at
  the reference time), ``floor = max(floor, reference time)`` is written (temporary file,
  fsync, rename, fsync of the directory; crash point ``trusted_time.floor_written``).

**Why this floor and not another.** A refresh that succeeded at reference time *T* accepted
metadata as fresh at *T*; accepting a later clock reading earlier than *T* would mean accepting
metadata that may have expired between the two — exactly the freeze the expiry dates exist to
prevent. The floor never goes further than what the client has itself accepted. TUF metadata
carries no signing time, so nothing better can be derived from it: ``expires - period`` needs
the period the repository signs with, which lives in the repository's ``repository.toml``, not
in the metadata — assume it too short and a repository that signs for a week would push the
floor days into the future and lock the vehicle out. A clock set *forward* can push the floor
ahead of real time, but only while every top-level role is still unexpired at that time (or the
refresh fails and nothing is recorded): at most until the earliest expiry of the metadata then
verified, typically the timestamp's day. Recovery from such a lock-out is an operator's act:
remove the floor file.

``not_before`` (optional) is a floor that holds before any refresh, e.g. the build time of the
running software: no real clock can be earlier than that.

Usage::

    clock = TrustedClock(state_dir / "trusted_time.json")
    reference = clock.reference_time()     # UpdateRejectedError(code=clock_rollback) if set back
    updater = make_updater(..., reference_time=reference); updater.refresh()
    clock.record(reference)                # after the refresh verified
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from agent import crashpoints
from agent.durable_file import write_durably
from ota.errors import OtaIOError, RejectionCode, TrustedTimeStateError, UpdateRejectedError

__all__ = [
    "DEFAULT_TOLERANCE",
    "TrustedClock",
    "advance_floor",
    "check_clock",
    "format_floor",
    "parse_floor",
]

FLOOR_WRITTEN = crashpoints.declare(
    "trusted_time.floor_written", "a new trusted-time floor is fsynced, not yet renamed into place"
)

#: How far the clock may lag the floor (drift, a clock stepped by NTP) before it is refused.
DEFAULT_TOLERANCE: Final = timedelta(minutes=5)

_FORMAT_VERSION: Final = 1


def _utc_now() -> datetime:
    return datetime.now(UTC)


def check_clock(now: datetime, floor: datetime | None, tolerance: timedelta) -> datetime:
    """The reference time to check expiry at: ``max(now, floor)``.

    Raises :class:`UpdateRejectedError` (``clock_rollback``) if *now* is more than *tolerance*
    earlier than *floor*. All times are timezone-aware.
    """
    if floor is None:
        return now
    if now < floor - tolerance:
        raise UpdateRejectedError(
            RejectionCode.CLOCK_ROLLBACK,
            f"the clock reads {_iso(now)}, earlier than {_iso(floor)} when metadata was "
            f"already verified as fresh (tolerance {tolerance}): the clock was set back or "
            "lost; set it right (or, if the floor itself is wrong, remove the trusted-time file)",
        )
    return max(now, floor)


def advance_floor(floor: datetime | None, verified_at: datetime) -> datetime:
    """The floor after metadata verified as fresh at *verified_at*: it never moves back."""
    return verified_at if floor is None else max(floor, verified_at)


def format_floor(floor: datetime) -> bytes:
    """The floor file's content."""
    doc = {"version": _FORMAT_VERSION, "floor": floor.astimezone(UTC).isoformat()}
    return json.dumps(doc, sort_keys=True).encode()


def parse_floor(data: bytes, *, where: str) -> datetime:
    """Parse a floor file; :class:`TrustedTimeStateError` naming *where* if malformed."""

    def broken(problem: str) -> TrustedTimeStateError:
        return TrustedTimeStateError(
            f"{where}: {problem}; the update client refuses to guess the time it has seen — "
            "remove the file to start from the clock (the freeze protection restarts from there)"
        )

    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise broken(f"not JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("version") != _FORMAT_VERSION:
        raise broken("not a trusted-time file of this version")
    text = doc.get("floor")
    if not isinstance(text, str):
        raise broken("floor is missing or not a string")
    try:
        floor = datetime.fromisoformat(text)
    except ValueError as e:
        raise broken(f"floor {text!r} is not an ISO 8601 time") from e
    if floor.tzinfo is None or floor.utcoffset() is None:
        raise broken(f"floor {text!r} has no time zone")
    return floor.astimezone(UTC)


class TrustedClock:
    """The clock the update client checks expiry with (see the module doc for the rule).

    *path* is the floor file (on persistent storage; its directory is created when first
    written). *clock* returns aware UTC times (tests pass a fake one).
    """

    def __init__(
        self,
        path: Path,
        *,
        tolerance: timedelta = DEFAULT_TOLERANCE,
        not_before: datetime | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if tolerance < timedelta(0):
            raise ValueError(f"tolerance {tolerance} must not be negative")
        if not_before is not None and not_before.tzinfo is None:
            raise ValueError("not_before must be timezone-aware")
        self.path = path
        self.tolerance = tolerance
        self.not_before = not_before
        self._clock = clock

    def floor(self) -> datetime | None:
        """The persisted floor (or ``not_before``, whichever is later); None before any."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            stored = None
        except OSError as e:
            raise OtaIOError(f"cannot read trusted-time file {self.path}: {e.strerror or e}") from e
        else:
            stored = parse_floor(data, where=str(self.path))
        if self.not_before is None:
            return stored
        return advance_floor(stored, self.not_before)

    def now(self) -> datetime:
        """The raw clock reading."""
        return self._clock()

    def reference_time(self) -> datetime:
        """The time to check expiry at now: ``max(clock, floor)``; raises
        :class:`UpdateRejectedError` (``clock_rollback``) if the clock is set back below the
        floor by more than the tolerance."""
        return check_clock(self._clock(), self.floor(), self.tolerance)

    def record(self, verified_at: datetime) -> bool:
        """Raise the floor to *verified_at* (a reference time at which a refresh verified);
        whether the file was written."""
        current = self.floor()
        new = advance_floor(current, verified_at)
        if current is not None and new <= current:
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_durably(self.path, format_floor(new), written=FLOOR_WRITTEN)
        except OSError as e:
            raise OtaIOError(
                f"cannot write trusted-time file {self.path}: {e.strerror or e}"
            ) from e
        return True


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
