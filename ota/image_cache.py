"""Images a delta can start from: the :class:`BaseImages` protocol and :class:`ImageCache`.

A delta (:mod:`ota.delta`) applies to an image the vehicle already holds, named by its sha256.
The update source asks a :class:`BaseImages` for it (``find(sha256)``) and checks the file's
hash itself before using it, so a provider may answer with any file it believes holds that
image. Providers:

* the T-box's committed A/B slot — :class:`KnownImages` over ``{sha256: image path}`` from the
  slot manifest;
* :class:`ImageCache` — a content-addressed directory of the ECU images the T-box flashed
  (ECUs cannot be read back), one file ``<directory>/<sha256>`` each;
* :class:`ChainedBases` — the first of several that has the image.

:class:`ImageCache` writes atomically (a temporary file in the directory, fsync, ``os.replace``,
fsync of the directory: a power cut leaves a complete entry or none, and at worst a temporary
file that :meth:`~ImageCache.retain` removes) and stays bounded: after each
:meth:`~ImageCache.add` the oldest entries beyond *max_entries* or *max_bytes* are deleted (never
the one just added), and :meth:`~ImageCache.retain` keeps only the images still installed.
Which entries go is a pure decision (:func:`evictions`).

Usage::

    cache = ImageCache(state_dir / "ecu-images", max_entries=8)
    sha256 = cache.add(Path(downloaded_bms_image))   # after flashing it
    cache.find(sha256)                                # Path, or None
    cache.retain({"…sha256 of every image an ECU runs…"})
    bases = ChainedBases(KnownImages({slot_sha256: slot_path}), cache)

Blocking file I/O and hashing: call it from a worker thread in async code.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from agent.durable_file import fsync_dir
from ota.errors import OtaIOError, OtaUsageError

__all__ = [
    "BaseImages",
    "CacheEntry",
    "ChainedBases",
    "ImageCache",
    "KnownImages",
    "evictions",
]

_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_TEMP_PREFIX: Final = ".add-"
_CHUNK: Final = 1024 * 1024


class BaseImages(Protocol):
    """Where images a delta can apply to are found, by sha256."""

    def find(self, sha256: str) -> Path | None:
        """A file believed to hold the image with this sha256 (the caller verifies it), or
        ``None``. Never raises for an image it does not have."""
        ...


class KnownImages:
    """A :class:`BaseImages` over known files: ``{sha256: path}`` (e.g. the committed slot)."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)

    def find(self, sha256: str) -> Path | None:
        """The file listed for *sha256*, if any."""
        return self.files.get(sha256)


class ChainedBases:
    """A :class:`BaseImages` asking each of *sources* in turn."""

    def __init__(self, *sources: BaseImages) -> None:
        self.sources = sources

    def find(self, sha256: str) -> Path | None:
        """The first source's answer that is not ``None``."""
        for source in self.sources:
            found = source.find(sha256)
            if found is not None:
                return found
        return None


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached image: its sha256, its size and when it was added (``st_mtime_ns``)."""

    sha256: str
    size: int
    added_ns: int


def evictions(
    entries: Sequence[CacheEntry],
    *,
    max_entries: int,
    max_bytes: int | None,
    protect: Iterable[str] = (),
) -> list[str]:
    """The sha256s to delete so that *entries* fit *max_entries* and *max_bytes*: the oldest
    first, never one in *protect* (which may therefore stay above the bounds)."""
    protected = set(protect)
    kept = sorted(entries, key=lambda e: (e.added_ns, e.sha256))
    count = len(kept)
    size = sum(e.size for e in kept)
    evicted: list[str] = []
    for entry in kept:
        over = count > max_entries or (max_bytes is not None and size > max_bytes)
        if not over:
            break
        if entry.sha256 in protected:
            continue
        evicted.append(entry.sha256)
        count -= 1
        size -= entry.size
    return evicted


class ImageCache:
    """A content-addressed, bounded directory of images: ``<directory>/<sha256>``.

    *max_entries* (≥ 1) and *max_bytes* (None: unbounded) bound it after each :meth:`add`.
    Thread-safe within one process; the directory is created on the first :meth:`add`.
    Errors of the file system are :class:`~ota.errors.OtaIOError`.
    """

    def __init__(
        self, directory: Path, *, max_entries: int = 8, max_bytes: int | None = None
    ) -> None:
        if type(max_entries) is not int or max_entries < 1:
            raise OtaUsageError(f"image cache max_entries {max_entries!r} is not an integer ≥ 1")
        if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 1):
            raise OtaUsageError(f"image cache max_bytes {max_bytes!r} is not an integer ≥ 1")
        self.directory = Path(directory)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def path_of(self, sha256: str) -> Path:
        """Where the image with *sha256* is (or would be) kept."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise OtaUsageError(f"{sha256!r} is not a sha256 (64 lowercase hex digits)")
        return self.directory / sha256

    def find(self, sha256: str) -> Path | None:
        """The cached file for *sha256*, or ``None`` (also for a malformed sha256)."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            return None
        path = self.directory / sha256
        return path if path.is_file() else None

    def entries(self) -> list[CacheEntry]:
        """Every cached image, oldest first."""
        found: list[CacheEntry] = []
        try:
            listing = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise OtaIOError(f"cannot list image cache {self.directory}: {e.strerror or e}") from e
        for item in listing:
            if not _SHA256.fullmatch(item.name):
                continue
            try:
                stat = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted meanwhile
            except OSError as e:
                raise OtaIOError(f"cannot stat {item.path}: {e.strerror or e}") from e
            found.append(CacheEntry(item.name, stat.st_size, stat.st_mtime_ns))
        return sorted(found, key=lambda e: (e.added_ns, e.sha256))

    def add(self, image: Path | bytes) -> str:
        """Keep *image* (a file, copied, or bytes); its sha256. Adding a cached image again
        makes it the newest. Older entries beyond the bounds are deleted afterwards."""
        with self._lock:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                before = self.entries()
                sha256 = self._store(image)
                # Strictly the newest, even where the file system's timestamps are coarse.
                stamp = max([time.time_ns(), *(e.added_ns + 1 for e in before)])
                os.utime(self.directory / sha256, ns=(stamp, stamp))
                fsync_dir(self.directory)
            except OSError as e:
                what = image if isinstance(image, Path) else f"{len(image)} bytes"
                raise OtaIOError(
                    f"cannot add {what} to image cache {self.directory}: {e.strerror or e}"
                ) from e
            self._delete(
                evictions(
                    self.entries(),
                    max_entries=self.max_entries,
                    max_bytes=self.max_bytes,
                    protect={sha256},
                )
            )
            return sha256

    def retain(self, keep: Iterable[str]) -> list[str]:
        """Delete every cached image whose sha256 is not in *keep* (and temporary files left by
        a crash); the sha256s deleted."""
        wanted = set(keep)
        with self._lock:
            self._remove_temporaries()
            gone = [e.sha256 for e in self.entries() if e.sha256 not in wanted]
            self._delete(gone)
            return gone

    # --- plumbing ---------------------------------------------------------------------------------

    def _store(self, image: Path | bytes) -> str:
        fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=self.directory)
        temporary = Path(name)
        try:
            try:
                digest = hashlib.sha256()
                if isinstance(image, bytes):
                    digest.update(image)
                    _write_all(fd, image)
                else:
                    with image.open("rb") as source:
                        while chunk := source.read(_CHUNK):
                            digest.update(chunk)
                            _write_all(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            sha256 = digest.hexdigest()
            # Same name, same bytes: replacing an existing entry only makes it the newest.
            temporary.replace(self.directory / sha256)
            return sha256
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()

    def _delete(self, sha256s: Iterable[str]) -> None:
        deleted = False
        for sha256 in sha256s:
            try:
                (self.directory / sha256).unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise OtaIOError(
                    f"cannot delete {self.directory / sha256} from the image cache: "
                    f"{e.strerror or e}"
                ) from e
            deleted = True
        if deleted:
            try:
                fsync_dir(self.directory)
            except OSError as e:
                raise OtaIOError(f"cannot sync {self.directory}: {e.strerror or e}") from e

    def _remove_temporaries(self) -> None:
        try:
            leftovers = [p for p in self.directory.iterdir() if p.name.startswith(_TEMP_PREFIX)]
            for path in leftovers:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            return
        except OSError as e:
            raise OtaIOError(f"cannot clean image cache {self.directory}: {e.strerror or e}") from e


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
