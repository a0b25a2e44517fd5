"""The fetcher's pure parts: the throughput floor and the journal format."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuf.api import exceptions

from ota.fetcher import DownloadJournal, ThroughputFloor


def test_throughput_floor_after_grace() -> None:
    floor = ThroughputFloor(min_bytes_per_s=1000, grace_s=10, started=0.0)
    floor.update(5.0, 10)  # slow, but within the grace period
    floor.update(10.0, 9990)  # 10,000 B in 10 s: exactly on the floor
    with pytest.raises(exceptions.SlowRetrievalError, match="below the floor of 1,000 B/s"):
        floor.update(20.0, 100)
    ThroughputFloor(0, 0, 0.0).update(1e6, 0)  # a floor of 0 never fires


def test_journal_round_trip_and_rejects() -> None:
    j = DownloadJournal("http://h/t", 1024, "ab" * 32, etag='"x"', length=None)
    assert DownloadJournal.from_bytes(j.to_bytes()) == j
    for bad in (
        b"",
        b"[]",
        b'{"version": 1}',
        j.to_bytes().replace(b'"offset": 1024', b'"offset": -1'),
    ):
        with pytest.raises(ValueError):
            DownloadJournal.from_bytes(bad)


@given(st.binary(max_size=200))
def test_journal_from_untrusted_bytes(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        DownloadJournal.from_bytes(data)
