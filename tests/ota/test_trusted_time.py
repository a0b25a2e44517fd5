"""Trusted time: the floor rule (pure), its file (durable, parsed defensively), and the update
client refusing a clock set back instead of letting ngclient accept expired metadata."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import crashpoints
from ota.errors import RejectionCode, TrustedTimeStateError, UpdateRejectedError
from ota.trusted_time import (
    DEFAULT_TOLERANCE,
    TrustedClock,
    advance_floor,
    check_clock,
    format_floor,
    parse_floor,
)
from tests.ota.test_update_client import ROOTFS, Bench, make_bench

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
aware = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)


# --- the rule ------------------------------------------------------------------------------------


def test_check_clock() -> None:
    tolerance = timedelta(minutes=5)
    assert check_clock(T0, None, tolerance) == T0  # nothing verified yet: the clock
    assert check_clock(T0, T0 - timedelta(days=1), tolerance) == T0
    # A little behind (drift): accepted, but expiry is checked at the floor, never earlier.
    assert check_clock(T0 - timedelta(minutes=4), T0, tolerance) == T0
    with pytest.raises(UpdateRejectedError) as excinfo:
        check_clock(T0 - timedelta(minutes=6), T0, tolerance)
    assert excinfo.value.code is RejectionCode.CLOCK_ROLLBACK
    assert str(excinfo.value) == (
        "clock_rollback: the clock reads 2026-12-01T11:54:00Z, earlier than "
        "2026-12-01T12:00:00Z when metadata was already verified as fresh (tolerance 0:05:00): "
        "the clock was set back or lost; set it right (or, if the floor itself is wrong, remove "
        "the trusted-time file)"
    )


@given(st.lists(aware, min_size=1, max_size=20))
def test_the_floor_never_moves_back(times: list[datetime]) -> None:
    floor = None
    for when in times:
        floor = advance_floor(floor, when)
    assert floor == max(times)


@given(aware, aware)
def test_the_reference_time_is_never_before_the_floor(now: datetime, floor: datetime) -> None:
    try:
        reference = check_clock(now, floor, DEFAULT_TOLERANCE)
    except UpdateRejectedError:
        assert now < floor - DEFAULT_TOLERANCE
    else:
        assert reference >= floor and reference >= now


@given(aware)
def test_floor_file_round_trip(when: datetime) -> None:
    assert parse_floor(format_floor(when), where="f") == when


@given(st.binary(max_size=200))
def test_floor_file_from_arbitrary_bytes(data: bytes) -> None:
    try:
        floor = parse_floor(data, where="f")
    except TrustedTimeStateError as e:
        assert str(e).startswith("f: ")
    else:
        assert floor.tzinfo is not None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not JSON"),
        (b"[]", "not a trusted-time file"),
        (b'{"version": 1}', "floor is missing"),
        (b'{"version": 1, "floor": "yesterday"}', "not an ISO 8601 time"),
        (b'{"version": 1, "floor": "2026-12-01T12:00:00"}', "has no time zone"),
    ],
)
def test_a_broken_floor_file_is_refused_naming_it(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "trusted_time.json"
    path.write_bytes(content)
    with pytest.raises(TrustedTimeStateError, match=problem) as excinfo:
        TrustedClock(path).reference_time()
    assert str(excinfo.value).startswith(f"{path}: ")
    assert "remove the file" in str(excinfo.value)


# --- the clock -----------------------------------------------------------------------------------


def test_the_floor_is_persisted_and_only_raised(tmp_path: Path) -> None:
    now = [T0]
    path = tmp_path / "state" / "trusted_time.json"
    clock = TrustedClock(path, clock=lambda: now[0])
    assert clock.floor() is None and clock.reference_time() == T0
    assert clock.record(T0) is True
    assert clock.record(T0 - timedelta(hours=1)) is False  # never lowered
    assert TrustedClock(path).floor() == T0  # another process reads it back
    now[0] = T0 - timedelta(days=30)
    with pytest.raises(UpdateRejectedError, match="clock_rollback"):
        clock.reference_time()
    assert (path.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["trusted_time.json"]


def test_not_before_is_a_floor_before_any_refresh(tmp_path: Path) -> None:
    built = T0 - timedelta(days=10)
    clock = TrustedClock(
        tmp_path / "t.json", not_before=built, clock=lambda: datetime(1970, 1, 1, tzinfo=UTC)
    )
    with pytest.raises(UpdateRejectedError, match="reads 1970-01-01T00:00:00Z"):
        clock.reference_time()  # a reset RTC
    assert clock.floor() == built
    with pytest.raises(ValueError, match="timezone-aware"):
        TrustedClock(tmp_path / "t.json", not_before=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="negative"):
        TrustedClock(tmp_path / "t.json", tolerance=timedelta(seconds=-1))


CHILD = """
import sys
from datetime import datetime
from pathlib import Path
from ota.trusted_time import TrustedClock

TrustedClock(Path(sys.argv[1])).record(datetime.fromisoformat(sys.argv[2]))
"""


def test_a_power_cut_while_writing_the_floor_leaves_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "trusted_time.json"
    TrustedClock(path).record(T0)
    later = T0 + timedelta(days=1)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), later.isoformat()],
        env={
            **os.environ,
            "TBOX_CRASHPOINT": "trusted_time.floor_written:1",
            "PYTHONPATH": str(REPO),
        },
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == crashpoints.EXIT_STATUS, result.stderr
    assert TrustedClock(path).floor() == T0  # the old floor, whole
    TrustedClock(path).record(later)  # the next run writes it (over the stale temporary file)
    assert TrustedClock(path).floor() == later


# --- the update client ---------------------------------------------------------------------------


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    made = make_bench(tmp_path)
    with made.server:
        yield made


def test_a_clock_set_back_cannot_revive_expired_metadata(bench: Bench) -> None:
    signed_at = bench.now
    bench.now = signed_at + timedelta(hours=12)  # the timestamp (1 day) is valid
    client = bench.client()
    assert [t.name for t in client.check().targets][-1] == ROOTFS
    assert client.clock.floor() == signed_at + timedelta(hours=12)

    bench.now = signed_at + timedelta(days=3)  # the repository is frozen: nothing new signed
    with pytest.raises(UpdateRejectedError) as frozen:
        client.check()
    assert frozen.value.code is RejectionCode.FREEZE
    assert "timestamp.json is expired" in str(frozen.value)

    # An attacker sets the vehicle's clock back to when that timestamp was still valid.
    bench.now = signed_at + timedelta(hours=6)
    before = len(bench.server.requests)
    with pytest.raises(UpdateRejectedError) as set_back:
        client.check()
    assert set_back.value.code is RejectionCode.CLOCK_ROLLBACK
    assert len(bench.server.requests) == before  # refused before asking any server
    # The floor is not moved by failures.
    assert client.clock.floor() == signed_at + timedelta(hours=12)


def test_a_clock_slightly_behind_checks_expiry_at_the_floor(bench: Bench) -> None:
    client = bench.client()
    plan = client.check()
    floor = plan.verified_at
    bench.now = floor - timedelta(minutes=2)  # within the tolerance
    assert client.check().verified_at == floor
    # ngclient really checks at the reference time: a floor past the expiry is a freeze.
    client.clock.record(floor + timedelta(days=2))
    bench.now = floor + timedelta(days=2) - timedelta(minutes=1)
    with pytest.raises(UpdateRejectedError, match="freeze: director repository, timestamp"):
        client.check()


def test_a_fresh_vehicle_with_a_reset_clock_is_held_by_not_before(tmp_path: Path) -> None:
    made = make_bench(tmp_path)
    with made.server:
        made.now = datetime(1970, 1, 1, tzinfo=UTC)
        client = made.client(not_before=datetime.now(UTC) - timedelta(days=1))
        with pytest.raises(UpdateRejectedError, match="clock_rollback"):
            client.check()
