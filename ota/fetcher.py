"""Downloads for the update client that resume after an interruption, even across a reboot.

python-tuf's ngclient downloads through a :class:`~tuf.ngclient.FetcherInterface`; its own
fetchers start over after any interruption and keep nothing on disk. On a vehicle, where a
download of hundreds of megabytes spans ignition cycles and tunnels, that is the difference
between an update that finishes and one that never does. :class:`ResumableFetcher` is a
drop-in fetcher that:

* keeps each large download in ``<partial_dir>/<key>.part`` with a **journal** beside it
  (``<key>.journal``: URL, bytes on disk, the SHA-256 of those bytes, the server's validator),
  written with fsync and an atomic rename every ``checkpoint_bytes``;
* after an interruption — an exception, a killed process, a power cut — **resumes** with an HTTP
  ``Range`` request for the rest, guarded by ``If-Range`` with the ETag (or Last-Modified) it
  had, so that a file that changed on the server is fetched whole again instead of spliced. On
  resume the bytes on disk are re-hashed and compared with the journal: a tail written after the
  last checkpoint is cut off, a prefix that does not match is discarded;
* enforces the **byte limit** ngclient passes (``max_length``) before and while receiving;
* aborts a download whose **average throughput** stays below ``min_bytes_per_s`` after a grace
  period (the slow-retrieval attack: a server that dribbles bytes to hold an update forever) with
  :class:`~tuf.api.exceptions.SlowRetrievalError`; a socket that stalls beyond ``socket_timeout_s``
  ends the same way.

ngclient still checks every target's length and hashes after :meth:`download_file` (and every
metadata file's signatures); the fetcher trusts nothing it downloads. When a downloaded file
fails that check (the caller's ``with`` body raises), its partial and journal are deleted, so the
next attempt starts clean. Small files (below ``resume_min_bytes``, i.e. metadata) and responses
without a validator are downloaded in memory and never resumed.

Blocking (urllib3): run it in a thread, as ngclient itself is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

from agent import crashpoints
from agent.durable_file import write_durably
from ota.http_range import parse_content_range

__all__ = [
    "DownloadJournal",
    "ResumableFetcher",
    "ThroughputFloor",
]

log = logging.getLogger(__name__)

CHECKPOINT_SYNCED = crashpoints.declare(
    "download.data_synced", "a resumable download's received bytes are fsynced, journal not yet"
)
CHECKPOINT_JOURNALED = crashpoints.declare(
    "download.journaled", "a resumable download's journal names the bytes on disk"
)

_JOURNAL_VERSION: Final = 1
_UNSATISFIED_RANGE: Final = re.compile(r"bytes \*/([0-9]{1,19})")
_READ_CHUNK: Final = 64 * 1024


class ThroughputFloor:
    """Decides when a transfer has been too slow for too long (pure: feed it times and sizes).

    Below *min_bytes_per_s* on average since the start of the attempt, once *grace_s* has passed,
    :meth:`update` raises :class:`~tuf.api.exceptions.SlowRetrievalError`. A floor of 0 disables
    the check.
    """

    __slots__ = ("grace_s", "min_bytes_per_s", "received", "started")

    def __init__(self, min_bytes_per_s: float, grace_s: float, started: float) -> None:
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s
        self.started = started
        self.received = 0

    def update(self, now: float, nbytes: int) -> None:
        """Count *nbytes* received at *now*; raise if the average is under the floor."""
        self.received += nbytes
        elapsed = now - self.started
        if self.min_bytes_per_s <= 0 or elapsed < self.grace_s:
            return
        rate = self.received / elapsed
        if rate < self.min_bytes_per_s:
            raise exceptions.SlowRetrievalError(
                f"average {rate:,.0f} B/s over {elapsed:.1f} s is below the floor of "
                f"{self.min_bytes_per_s:,.0f} B/s"
            )


@dataclass(frozen=True, slots=True)
class DownloadJournal:
    """What a partial download on disk is: the first ``offset`` bytes of ``url``, hashing to
    ``prefix_sha256``, as served with validator ``etag`` / ``last_modified``."""

    url: str
    offset: int
    prefix_sha256: str
    etag: str = ""
    last_modified: str = ""
    length: int | None = None

    def to_bytes(self) -> bytes:
        """The journal file's content."""
        doc = {
            "version": _JOURNAL_VERSION,
            "url": self.url,
            "offset": self.offset,
            "prefix_sha256": self.prefix_sha256,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "length": self.length,
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DownloadJournal:
        """Parse a journal file; ValueError if it is not one this version wrote."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"not JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("version") != _JOURNAL_VERSION:
            raise ValueError("not a download journal of this version")
        url, offset, digest = doc.get("url"), doc.get("offset"), doc.get("prefix_sha256")
        etag, modified, length = doc.get("etag"), doc.get("last_modified"), doc.get("length")
        if not (
            isinstance(url, str)
            and isinstance(offset, int)
            and not isinstance(offset, bool)
            and offset >= 0
            and isinstance(digest, str)
            and re.fullmatch(r"[0-9a-f]{64}", digest)
            and isinstance(etag, str)
            and isinstance(modified, str)
            and (length is None or (isinstance(length, int) and not isinstance(length, bool)))
        ):
            raise ValueError("a field is missing or has the wrong type")
        return cls(url, offset, digest, etag, modified, length)


@dataclass(slots=True)
class FetchStats:
    """Counters since the fetcher was made: bytes received over the network, bytes a resume
    did not fetch again, resumes, restarts from zero (validator changed, prefix damaged)."""

    received: int = 0
    reused: int = 0
    resumed: int = 0
    restarted: int = 0


class ResumableFetcher(FetcherInterface):
    """A python-tuf fetcher whose large downloads survive interruptions (see the module doc).

    *partial_dir* holds partial downloads and their journals (created if missing; keep it on
    persistent storage). *clock* is for tests of the throughput floor.
    """

    def __init__(
        self,
        partial_dir: Path,
        *,
        min_bytes_per_s: float = 1024.0,
        grace_s: float = 30.0,
        socket_timeout_s: float = 30.0,
        checkpoint_bytes: int = 1024 * 1024,
        resume_min_bytes: int = 256 * 1024,
        chunk_bytes: int = 64 * 1024,
        user_agent: str = "tbox-agent",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.partial_dir = partial_dir
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s
        self.checkpoint_bytes = checkpoint_bytes
        self.resume_min_bytes = resume_min_bytes
        self.chunk_bytes = chunk_bytes
        self.stats = FetchStats()
        #: Called with the size of every chunk received over the network, from the fetching
        #: thread (progress reports; set and cleared by whoever drives one download).
        self.on_bytes: Callable[[int], None] | None = None
        self._clock = clock
        self._timeout = urllib3.Timeout(connect=socket_timeout_s, read=socket_timeout_s)
        # No automatic retries or redirects: the caller decides when to retry, and a resume
        # must talk to the server that holds the partial's validator.
        self._http = urllib3.PoolManager(headers={"User-Agent": user_agent}, retries=False)

    # -- FetcherInterface ---------------------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        response = self._request(url, {})
        return self._stream(url, response, ThroughputFloor(*self._floor()))

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """Download *url* (at most *max_length* bytes), resuming a partial one; yield the file.

        The partial and its journal are removed once the caller's block ends without an error
        and when it raises (the content was rejected); they stay after a download error.
        """
        if max_length < self.resume_min_bytes:
            with self._download_whole(url, max_length) as f:
                yield f
            return
        key = hashlib.sha256(url.encode()).hexdigest()[:32]
        part = self.partial_dir / f"{key}.part"
        journal = self.partial_dir / f"{key}.journal"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._download_resumable(url, max_length, part, journal)
        except exceptions.DownloadLengthMismatchError:
            # Resuming would only hit the limit again.
            _remove(journal)
            _remove(part)
            raise
        try:
            with part.open("rb") as f:
                yield f
        finally:
            # Delivered or rejected: either way, never resumed again.
            _remove(journal)
            _remove(part)

    # -- the parts ----------------------------------------------------------------------------

    def _floor(self) -> tuple[float, float, float]:
        return self.min_bytes_per_s, self.grace_s, self._clock()

    def _request(self, url: str, headers: dict[str, str], *, ranged: bool = False) -> Any:
        """A streaming response of status 200 or 206 (or 416 when *ranged*), else an error."""
        try:
            response = self._http.request(
                "GET", url, headers=headers, preload_content=False, timeout=self._timeout
            )
        except urllib3.exceptions.NewConnectionError as e:
            # Refused or unresolvable: not slow (urllib3 derives it from ConnectTimeoutError).
            raise exceptions.DownloadError(f"{url}: cannot connect: {e}") from e
        except urllib3.exceptions.TimeoutError as e:
            raise exceptions.SlowRetrievalError(f"{url}: no response in time") from e
        except urllib3.exceptions.HTTPError as e:
            raise exceptions.DownloadError(f"{url}: {e}") from e
        if response.status in (200, 206) or (ranged and response.status == 416):
            return response
        _abandon(response)
        if response.status >= 400:
            raise exceptions.DownloadHTTPError(
                f"{url}: HTTP status {response.status}", response.status
            )
        # Redirects are not followed (a resume must reach the server that holds the validator)
        # and a 3xx body is not the file.
        raise exceptions.DownloadError(f"{url}: unexpected HTTP status {response.status}")

    def _stream(self, url: str, response: Any, floor: ThroughputFloor) -> Iterator[bytes]:
        complete = False
        try:
            for chunk in response.stream(self.chunk_bytes):
                floor.update(self._clock(), len(chunk))
                self.stats.received += len(chunk)
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk))
                yield chunk
            complete = True
        except urllib3.exceptions.TimeoutError as e:
            raise exceptions.SlowRetrievalError(f"{url}: the server stopped sending") from e
        except urllib3.exceptions.HTTPError as e:
            raise exceptions.DownloadError(f"{url}: connection lost: {e}") from e
        finally:
            if complete:
                response.release_conn()
            else:  # abandoned mid-body (too slow, too long, an error)
                _abandon(response)

    @contextlib.contextmanager
    def _download_whole(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        with tempfile.TemporaryFile() as f:
            received = 0
            for chunk in self.fetch(url):
                received += len(chunk)
                if received > max_length:
                    raise exceptions.DownloadLengthMismatchError(
                        f"{url}: more than the {max_length:,} bytes allowed"
                    )
                f.write(chunk)
            f.seek(0)
            yield f

    def _resume_point(self, url: str, part: Path, journal_path: Path) -> DownloadJournal | None:
        """The journal to resume from after checking the bytes on disk, or None: start over."""
        try:
            journal = DownloadJournal.from_bytes(journal_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("download journal %s is unusable (%s): starting over", journal_path, e)
            return None
        if journal.url != url or not (journal.etag or journal.last_modified):
            return None
        try:
            size = part.stat().st_size
        except FileNotFoundError:
            return None
        if size < journal.offset:
            log.warning("partial %s is shorter than its journal says: starting over", part)
            return None
        digest = hashlib.sha256()
        with part.open("rb") as f:
            remaining = journal.offset
            while remaining:
                block = f.read(min(_READ_CHUNK, remaining))
                if not block:
                    break
                digest.update(block)
                remaining -= len(block)
        if digest.hexdigest() != journal.prefix_sha256:
            log.warning("partial %s does not match its journal: starting over", part)
            return None
        if size > journal.offset:
            # Bytes written after the last checkpoint may be garbage after a power cut.
            os.truncate(part, journal.offset)
        return journal

    def _download_resumable(
        self, url: str, max_length: int, part: Path, journal_path: Path
    ) -> None:
        journal = self._resume_point(url, part, journal_path)
        headers: dict[str, str] = {}
        if journal is not None and journal.offset > 0:
            headers["Range"] = f"bytes={journal.offset}-"
            headers["If-Range"] = journal.etag or journal.last_modified
        response = self._request(url, headers, ranged="Range" in headers)
        if response.status == 416:
            # Nothing after the journaled offset: the last checkpoint fell on the last byte.
            # (A server that honours If-Range answers 200 with the whole file if it changed.)
            whole = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range") or "")
            _abandon(response)
            if journal is not None and whole and int(whole.group(1)) == journal.offset:
                self.stats.resumed += 1
                self.stats.reused += journal.offset
                log.info("%s was complete at byte %d", url, journal.offset)
                return
            log.warning(
                "%s: range from byte %d not satisfiable: starting over",
                url,
                journal.offset if journal else 0,
            )
            self.stats.restarted += 1
            _remove(journal_path)
            journal, headers = None, {}
            response = self._request(url, headers)
        offset = 0
        digest = hashlib.sha256()
        if response.status == 206 and "Range" not in headers:
            _abandon(response)
            raise exceptions.DownloadError(f"{url}: partial content for a request of it all")
        if response.status == 206 and journal is not None:
            content_range = parse_content_range(response.headers.get("Content-Range"))
            if content_range is None:
                _abandon(response)
                raise exceptions.DownloadError(f"{url}: a 206 reply without a valid Content-Range")
            first, total = content_range.start, content_range.size
            if first != journal.offset or (total is not None and total > max_length):
                _abandon(response)
                raise exceptions.DownloadError(
                    f"{url}: the server sent bytes {first}- for a request from {journal.offset}"
                    if first != journal.offset
                    else f"{url}: {total:,} bytes is more than the {max_length:,} allowed"
                )
            offset = journal.offset
            with part.open("rb") as f:
                for block in iter(lambda: f.read(_READ_CHUNK), b""):
                    digest.update(block)
            self.stats.resumed += 1
            self.stats.reused += offset
            log.info("resuming %s at byte %d", url, offset)
        else:
            if journal is not None:
                self.stats.restarted += 1
            _remove(journal_path)
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_length:
                _abandon(response)
                raise exceptions.DownloadLengthMismatchError(
                    f"{url}: {int(length):,} bytes is more than the {max_length:,} allowed"
                )
        etag = response.headers.get("ETag", "") or ""
        modified = response.headers.get("Last-Modified", "") or ""
        if journal is not None and offset:
            # Same content as journaled (If-Range held); keep the validator we resumed with.
            etag, modified = journal.etag, journal.last_modified
        self._receive(url, response, part, journal_path, offset, digest, max_length, etag, modified)

    def _receive(
        self,
        url: str,
        response: Any,
        part: Path,
        journal_path: Path,
        offset: int,
        digest: Any,
        max_length: int,
        etag: str,
        modified: str,
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else os.O_TRUNC)
        fd = os.open(part, flags, 0o600)
        try:
            unsynced = 0
            for chunk in self._stream(url, response, ThroughputFloor(*self._floor())):
                if offset + len(chunk) > max_length:
                    raise exceptions.DownloadLengthMismatchError(
                        f"{url}: more than the {max_length:,} bytes allowed"
                    )
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                digest.update(chunk)
                offset += len(chunk)
                unsynced += len(chunk)
                if unsynced >= self.checkpoint_bytes and (etag or modified):
                    self._checkpoint(fd, url, journal_path, offset, digest, etag, modified)
                    unsynced = 0
            os.fsync(fd)
        finally:
            os.close(fd)

    def _checkpoint(
        self,
        fd: int,
        url: str,
        journal_path: Path,
        offset: int,
        digest: Any,
        etag: str,
        modified: str,
    ) -> None:
        os.fsync(fd)
        CHECKPOINT_SYNCED.hit()
        journal = DownloadJournal(url, offset, digest.copy().hexdigest(), etag, modified)
        write_durably(journal_path, journal.to_bytes(), mode=0o600)
        CHECKPOINT_JOURNALED.hit()


def _abandon(response: Any) -> None:
    """Give up on a response whose body was not read to its end: close its connection instead
    of returning it to the pool, where the next request would read the rest of this body as
    its own reply (and an endless body must not be drained)."""
    response.close()
    response.release_conn()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
