"""The delta base images (ota.image_cache): the content-addressed, bounded ImageCache, its pure
eviction decision, and the small BaseImages providers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ota.errors import OtaIOError, OtaUsageError
from ota.image_cache import (
    BaseImages,
    CacheEntry,
    ChainedBases,
    ImageCache,
    KnownImages,
    evictions,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_add_find_and_add_again(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    assert cache.find(_sha(b"bms-2")) is None and cache.entries() == []
    sha = cache.add(b"bms-2")
    assert sha == _sha(b"bms-2")
    found = cache.find(sha)
    assert found == tmp_path / "cache" / sha and found.read_bytes() == b"bms-2"
    source = tmp_path / "vcu.img"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))  # more than one copy chunk
    vcu = cache.add(source)
    assert vcu == _sha(source.read_bytes())
    assert cache.path_of(vcu).read_bytes() == source.read_bytes()
    assert cache.add(b"bms-2") == sha  # again: the newest now
    assert [e.sha256 for e in cache.entries()] == [vcu, sha]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([sha, vcu])


def test_find_never_raises_for_what_it_does_not_have(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "absent")
    for wrong in ("", "ABC", "../etc/passwd", "0" * 63, "g" * 64):
        assert cache.find(wrong) is None
    with pytest.raises(OtaUsageError, match="not a sha256"):
        cache.path_of("../x")


def test_it_stays_within_its_bounds_keeping_the_newest(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "c", max_entries=2)
    first, second, third = (cache.add(bytes([n]) * 10) for n in range(3))
    assert [e.sha256 for e in cache.entries()] == [second, third]
    assert cache.find(first) is None
    by_size = ImageCache(tmp_path / "s", max_entries=10, max_bytes=25)
    a = by_size.add(b"a" * 10)
    b = by_size.add(b"b" * 10)
    c = by_size.add(b"c" * 10)
    assert [e.sha256 for e in by_size.entries()] == [b, c]
    big = by_size.add(b"d" * 100)  # alone above the bound: kept, the others go
    assert [e.sha256 for e in by_size.entries()] == [big]
    assert a not in {e.sha256 for e in by_size.entries()}


def test_retain_keeps_only_what_is_installed_and_cleans_up_after_a_crash(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    keep = cache.add(b"running on the bms")
    gone = cache.add(b"replaced on the vcu")
    (tmp_path / ".add-abc123").write_bytes(b"half an image")  # a power cut during add
    assert cache.retain({keep, "f" * 64}) == [gone]
    assert sorted(p.name for p in tmp_path.iterdir()) == [keep]
    assert ImageCache(tmp_path / "nothing-yet").retain(set()) == []


def test_evictions_is_oldest_first_and_spares_the_protected() -> None:
    entries = [CacheEntry("a", 10, 1), CacheEntry("c", 10, 3), CacheEntry("b", 10, 2)]
    assert evictions(entries, max_entries=1, max_bytes=None) == ["a", "b"]
    assert evictions(entries, max_entries=1, max_bytes=None, protect={"a"}) == ["b", "c"]
    assert evictions(entries, max_entries=5, max_bytes=15) == ["a", "b"]
    assert evictions(entries, max_entries=5, max_bytes=None) == []


def test_bad_settings_and_file_system_errors(tmp_path: Path) -> None:
    with pytest.raises(OtaUsageError, match="max_entries"):
        ImageCache(tmp_path, max_entries=0)
    with pytest.raises(OtaUsageError, match="max_bytes"):
        ImageCache(tmp_path, max_bytes=0)
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OtaIOError, match="cannot add 2 bytes to image cache"):
        ImageCache(blocker / "cache").add(b"xy")
    with pytest.raises(OtaIOError, match=r"absent\.img"):
        ImageCache(tmp_path / "c").add(tmp_path / "absent.img")
    assert [p.name for p in (tmp_path / "c").iterdir()] == []  # no temporary left


def test_known_and_chained_bases(tmp_path: Path) -> None:
    slot = tmp_path / "slot-a.img"
    cache = ImageCache(tmp_path / "cache")
    ecu = cache.add(b"ecu image")
    bases: BaseImages = ChainedBases(KnownImages({"1" * 64: slot}), cache)
    assert bases.find("1" * 64) == slot
    assert bases.find(ecu) == cache.path_of(ecu)
    assert bases.find("2" * 64) is None
