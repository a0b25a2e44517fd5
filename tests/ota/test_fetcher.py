"""The resumable fetcher against a real HTTP server (ota.http_server.RepositoryServer): resuming
after a cut connection and after a restart, damaged journals and prefixes, a file that changed
on the server, byte limits, the throughput floor, and power cuts at its crash points."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api import exceptions

from agent.crashpoints import EXIT_STATUS
from ota.fetcher import DownloadJournal, ResumableFetcher
from ota.http_server import RepositoryServer, ServedRequest

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = 64 * 1024
SIZE = 1024 * 1024 + 1234  # 16 checkpoints and a bit
DATA = hashlib.sha256(b"seed").digest() * (SIZE // 32 + 1)
DATA = bytes(b ^ (i % 251) for i, b in enumerate(DATA[:SIZE]))


@pytest.fixture
def served(tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    root.mkdir()
    (root / "image.bin").write_bytes(DATA)
    (root / "small.json").write_bytes(b'{"x": 1}')
    return root


def _fetcher(partial: Path, **options: float) -> ResumableFetcher:
    settings: dict[str, float] = {
        "checkpoint_bytes": CHECKPOINT,
        "resume_min_bytes": 1024,
        "min_bytes_per_s": 0,
    }
    settings.update(options)
    return ResumableFetcher(partial, **settings)  # type: ignore[arg-type]


def _get(fetcher: ResumableFetcher, url: str, max_length: int = SIZE) -> bytes:
    with fetcher.download_file(url, max_length) as f:
        return f.read()


def _journal(partial: Path) -> DownloadJournal:
    (path,) = partial.glob("*.journal")
    return DownloadJournal.from_bytes(path.read_bytes())


def _image_requests(server: RepositoryServer) -> list[ServedRequest]:
    return [r for r in server.requests if r.path == "image.bin"]


def test_a_cut_download_resumes_from_its_last_checkpoint(served: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    with RepositoryServer(served, fail_after=300_000) as server:
        fetcher = _fetcher(partial)
        with pytest.raises(exceptions.DownloadError):
            _get(fetcher, server.url + "image.bin")
        journal = _journal(partial)
        assert journal.offset % CHECKPOINT == 0 and 0 < journal.offset <= 300_000
        assert journal.prefix_sha256 == hashlib.sha256(DATA[: journal.offset]).hexdigest()
        assert _get(fetcher, server.url + "image.bin") == DATA
        first, second = _image_requests(server)
    assert (first.range, first.dropped, first.body_bytes) == (None, True, 300_000)
    assert (second.range, second.status) == (f"bytes={journal.offset}-", 206)
    assert second.body_bytes == SIZE - journal.offset
    # What was fetched twice is what came after the last checkpoint: less than one interval.
    assert first.body_bytes - journal.offset < CHECKPOINT
    assert (fetcher.stats.resumed, fetcher.stats.reused) == (1, journal.offset)
    assert list(partial.iterdir()) == []  # delivered: partial and journal removed


def test_a_restart_resumes_with_a_new_fetcher(served: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    with RepositoryServer(served, fail_after=500_000) as server:
        with pytest.raises(exceptions.DownloadError):
            _get(_fetcher(partial), server.url + "image.bin")
        offset = _journal(partial).offset
        fresh = _fetcher(partial)  # another process after a reboot: only the disk is left
        assert _get(fresh, server.url + "image.bin") == DATA
        assert _image_requests(server)[-1].range == f"bytes={offset}-"
    assert fresh.stats.received == SIZE - offset and fresh.stats.reused == offset


@pytest.mark.parametrize("damage", ["journal", "prefix", "short"])
def test_a_damaged_journal_or_prefix_starts_over_cleanly(
    damage: str, served: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial"
    with RepositoryServer(served, fail_after=300_000) as server:
        with pytest.raises(exceptions.DownloadError):
            _get(_fetcher(partial), server.url + "image.bin")
        (journal,) = partial.glob("*.journal")
        (part,) = partial.glob("*.part")
        if damage == "journal":
            journal.write_bytes(b'{"version": 1, "offset": "garbage')
        elif damage == "prefix":
            with part.open("r+b") as f:
                f.seek(100)
                f.write(b"\xff\xfe")
        else:
            os.truncate(part, 10)
        fetcher = _fetcher(partial)
        assert _get(fetcher, server.url + "image.bin") == DATA
        last = _image_requests(server)[-1]
    assert (last.range, last.status, last.body_bytes) == (None, 200, SIZE)
    assert fetcher.stats.resumed == 0


def test_bytes_after_the_journal_are_cut_off_before_resuming(served: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    with RepositoryServer(served, fail_after=300_000) as server:
        with pytest.raises(exceptions.DownloadError):
            _get(_fetcher(partial), server.url + "image.bin")
        offset = _journal(partial).offset
        (part,) = partial.glob("*.part")
        with part.open("ab") as f:
            f.write(b"garbage a power cut left behind")
        assert _get(_fetcher(partial), server.url + "image.bin") == DATA
        assert _image_requests(server)[-1].range == f"bytes={offset}-"


def test_a_file_changed_on_the_server_is_fetched_whole_again(served: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    with RepositoryServer(served, fail_after=300_000) as server:
        with pytest.raises(exceptions.DownloadError):
            _get(_fetcher(partial), server.url + "image.bin")
        changed = DATA[::-1]
        (served / "image.bin").write_bytes(changed)
        stat = (served / "image.bin").stat()
        os.utime(served / "image.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        fetcher = _fetcher(partial)
        assert _get(fetcher, server.url + "image.bin") == changed  # not a splice of both
        last = _image_requests(server)[-1]
    assert last.range is not None and last.status == 200 and last.body_bytes == SIZE
    assert fetcher.stats.restarted == 1 and fetcher.stats.resumed == 0


def test_byte_limits(served: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    with RepositoryServer(served) as server:
        fetcher = _fetcher(partial)
        with pytest.raises(exceptions.DownloadLengthMismatchError, match="more than"):
            _get(fetcher, server.url + "image.bin", max_length=SIZE - 1)
        assert list(partial.iterdir()) == []  # nothing kept to resume: it would hit it again
        assert fetcher.stats.received == 0  # refused on Content-Length, no body read
        with pytest.raises(exceptions.DownloadLengthMismatchError):
            _get(fetcher, server.url + "small.json", max_length=3)  # in memory (metadata)
        assert _get(fetcher, server.url + "small.json", max_length=100) == b'{"x": 1}'


def test_a_limit_is_enforced_while_receiving_a_resumed_download(
    served: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial"
    with RepositoryServer(served, fail_after=300_000) as server:
        with pytest.raises(exceptions.DownloadError):
            _get(_fetcher(partial), server.url + "image.bin")
        (served / "image.bin").write_bytes(DATA + b"x" * 100_000)  # grew, same validator?
        stat = (served / "image.bin").stat()
        os.utime(served / "image.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        with pytest.raises(exceptions.DownloadLengthMismatchError):
            _get(_fetcher(partial), server.url + "image.bin")
    assert list(partial.iterdir()) == []


def test_http_errors(served: Path, tmp_path: Path) -> None:
    with RepositoryServer(served) as server:
        fetcher = _fetcher(tmp_path / "partial")
        with pytest.raises(exceptions.DownloadHTTPError) as excinfo:
            _get(fetcher, server.url + "missing.bin")
        assert excinfo.value.status_code == 404
        url = server.url
    with pytest.raises(exceptions.DownloadError):  # nobody listening any more
        _get(fetcher, url + "image.bin")


def test_a_slow_server_is_abandoned(served: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    fetcher = _fetcher(partial, min_bytes_per_s=200_000, grace_s=0.3)
    with RepositoryServer(served, throttle=20_000) as server:
        began = time.monotonic()
        with pytest.raises(exceptions.SlowRetrievalError, match="below the floor of 200,000 B/s"):
            _get(fetcher, server.url + "image.bin")
        assert time.monotonic() - began < 5
        # The same floor for small files (metadata), fetched in memory.
        with pytest.raises(exceptions.SlowRetrievalError):
            _get(_fetcher(partial, min_bytes_per_s=10**9, grace_s=0), server.url + "small.json")


def test_a_stalled_socket_ends_as_slow_retrieval(served: Path, tmp_path: Path) -> None:
    fetcher = ResumableFetcher(
        tmp_path / "partial", socket_timeout_s=0.3, min_bytes_per_s=0, resume_min_bytes=1024
    )
    with (
        RepositoryServer(served, throttle=1) as server,  # one byte per second
        pytest.raises(exceptions.SlowRetrievalError, match=r"stopped sending|in time"),
    ):
        _get(fetcher, server.url + "image.bin")


def test_content_that_fails_verification_is_not_resumed(served: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    with RepositoryServer(served, fail_after=300_000) as server:
        fetcher = _fetcher(partial)
        with pytest.raises(exceptions.DownloadError):
            _get(fetcher, server.url + "image.bin")
        with (
            pytest.raises(exceptions.LengthOrHashMismatchError),
            fetcher.download_file(server.url + "image.bin", SIZE),
        ):
            raise exceptions.LengthOrHashMismatchError("the caller rejects it")
    assert list(partial.iterdir()) == []


# --- power cuts ----------------------------------------------------------------------------------

CHILD = """
import sys
from pathlib import Path
from ota.fetcher import ResumableFetcher

fetcher = ResumableFetcher(
    Path(sys.argv[1]), checkpoint_bytes=int(sys.argv[3]), resume_min_bytes=1024,
    min_bytes_per_s=0,
)
with fetcher.download_file(sys.argv[2], int(sys.argv[4])) as f:
    f.read()
print("complete")
"""


def _child(partial: Path, url: str, crashpoint: str, *, size: int = SIZE) -> int:
    env = {**os.environ, "TBOX_CRASHPOINT": crashpoint, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(partial), url, str(CHECKPOINT), str(size)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode


@pytest.mark.parametrize(
    ("point", "n"),
    [
        ("download.data_synced", 1),
        ("download.data_synced", 7),
        ("download.journaled", 1),
        ("download.journaled", 9),
    ],
)
def test_a_power_cut_at_a_crash_point_resumes_without_refetching_journaled_bytes(
    point: str, n: int, served: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial"
    with RepositoryServer(served) as server:
        url = server.url + "image.bin"
        assert _child(partial, url, f"{point}:{n}") == EXIT_STATUS
        journaled = 0 if not list(partial.glob("*.journal")) else _journal(partial).offset
        fetcher = _fetcher(partial)
        assert _get(fetcher, url) == DATA
        resumed = _image_requests(server)[-1]
    # data_synced:n cuts after the n-th fsync, before its journal: n-1 checkpoints are journaled.
    expected_checkpoints = n - 1 if point == "download.data_synced" else n
    assert journaled >= expected_checkpoints * CHECKPOINT
    assert journaled < (expected_checkpoints + 1) * CHECKPOINT + 64 * 1024
    if journaled:
        assert resumed.range == f"bytes={journaled}-"
        assert fetcher.stats.reused == journaled
    assert resumed.body_bytes == SIZE - journaled
    # Nothing journaled (and so verified on resume) is fetched again.
    assert fetcher.stats.received == SIZE - journaled


def test_a_power_cut_after_the_last_checkpoint_needs_no_more_bytes(
    served: Path, tmp_path: Path
) -> None:
    # A file of exactly four checkpoints: the fourth journal entry names the whole file, so the
    # resume's Range is unsatisfiable (416) and the partial is complete as it is.
    exact = DATA[: 4 * CHECKPOINT]
    (served / "exact.bin").write_bytes(exact)
    partial = tmp_path / "partial"
    with RepositoryServer(served) as server:
        url = server.url + "exact.bin"
        code = _child(partial, url, "download.journaled:4", size=len(exact))
        assert code == EXIT_STATUS
        assert _journal(partial).offset == len(exact)
        fetcher = _fetcher(partial)
        assert _get(fetcher, url, max_length=len(exact)) == exact
        last = [r for r in server.requests if r.path == "exact.bin"][-1]
    assert (last.status, last.body_bytes) == (416, 0)
    assert fetcher.stats.received == 0 and fetcher.stats.reused == len(exact)


def test_the_journal_is_json_naming_the_url_and_validator(served: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    with RepositoryServer(served, fail_after=200_000) as server:
        with pytest.raises(exceptions.DownloadError):
            _get(_fetcher(partial), server.url + "image.bin")
        (path,) = partial.glob("*.journal")
        doc = json.loads(path.read_bytes())
        assert doc["url"] == server.url + "image.bin"
        assert doc["etag"].startswith('"') and doc["last_modified"].endswith("GMT")
        assert (path.stat().st_mode & 0o777) == 0o600


def test_partials_do_not_leak_between_urls(served: Path, tmp_path: Path) -> None:
    (served / "other.bin").write_bytes(DATA[:400_000])
    partial = tmp_path / "partial"
    with RepositoryServer(served, fail_after=300_000, fail_match="image.bin") as server:
        fetcher = _fetcher(partial)
        with pytest.raises(exceptions.DownloadError):
            _get(fetcher, server.url + "image.bin")
        assert _get(fetcher, server.url + "other.bin", max_length=400_000) == DATA[:400_000]
        assert len(list(partial.glob("*.journal"))) == 1  # image.bin's is still there
        assert _get(fetcher, server.url + "image.bin") == DATA


@pytest.fixture(autouse=True)
def _no_stray_crashpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TBOX_CRASHPOINT", raising=False)
    yield
