"""The TUF conformance suite's client protocol over the update client's own TUF code.

The TUF project's conformance suite (theupdateframework/tuf-conformance) tests a client through
three commands (its ``CLIENT-CLI.md``); ``tbox ota tuf-client`` implements them here::

    tbox ota tuf-client --metadata-dir DIR init TRUSTED_ROOT
    tbox ota tuf-client --metadata-dir DIR --metadata-url URL refresh
    tbox ota tuf-client --metadata-dir DIR --metadata-url URL --target-name NAME \\
        --target-base-url URL --target-dir DIR download

Exit status 0 on success, 1 on any failure. The same pieces as the vehicle's
:class:`~ota.update_client.UpdateClient` do the work — :class:`~ota.update_client.DurableUpdater`
(ngclient with durable metadata and the trusted reference time), the
:class:`~ota.update_client.RecordingFetcher` (resumable, byte limits, throughput floor) and
:class:`~ota.trusted_time.TrustedClock` — so that the independent suite checks the vehicle's
client code. The client's own state (the trusted-time floor, partial downloads) is kept in
``DIR/.tbox/``, beside ngclient's metadata files (``root.json``, ``timestamp.json`` …).

Unlike the vehicle client, the trust anchor after ``init`` is the newest root in ``DIR`` (as
the protocol has it: ``init`` provides the root once).
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Final

from tuf.ngclient.config import UpdaterConfig

from ota.errors import OtaInputError, OtaIOError, OtaUsageError
from ota.trusted_time import TrustedClock
from ota.update_client import DurableUpdater, RecordingFetcher, open_updater, tuf_errors

__all__ = ["STATE_DIR", "download", "init", "refresh"]

#: Our own state inside the metadata directory (hidden: no TUF role file is named so).
STATE_DIR: Final = ".tbox"


def init(metadata_dir: Path, trusted_root: Path) -> None:
    """Trust *trusted_root*: copy it to ``DIR/root.json`` (no network, no checks yet: the first
    refresh verifies it)."""
    try:
        metadata_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trusted_root, metadata_dir / "root.json")
    except FileNotFoundError as e:
        raise OtaUsageError(f"trusted root {trusted_root}: no such file") from e
    except OSError as e:
        raise OtaIOError(
            f"cannot copy trusted root {trusted_root} to {metadata_dir}: {e.strerror or e}"
        ) from e


def refresh(metadata_dir: Path, metadata_url: str) -> DurableUpdater:
    """Refresh the top-level metadata of the repository at *metadata_url*; the updater."""
    clock = _clock(metadata_dir)
    reference = clock.reference_time()
    fetcher = _fetcher(metadata_dir)
    updater = _updater(metadata_dir, metadata_url, fetcher, reference)
    with tuf_errors(metadata_url, fetcher):
        updater.refresh()
    clock.record(reference)
    return updater


def download(
    metadata_dir: Path,
    metadata_url: str,
    *,
    target_name: str,
    target_base_url: str,
    target_dir: Path,
) -> Path:
    """Refresh, then download target *target_name* into *target_dir* unless a verified copy is
    there already; the file's path (the target name URL-quoted, as ngclient names it)."""
    clock = _clock(metadata_dir)
    reference = clock.reference_time()
    fetcher = _fetcher(metadata_dir)
    updater = _updater(metadata_dir, metadata_url, fetcher, reference, target_dir)
    with tuf_errors(metadata_url, fetcher):
        updater.refresh()
    clock.record(reference)
    with tuf_errors(metadata_url, fetcher):
        info = updater.get_targetinfo(target_name)
    if info is None:
        raise OtaInputError(f"{metadata_url}: no target {target_name!r} in the repository")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        cached = updater.find_cached_target(info)
        if cached is not None:
            return Path(cached)
        with tuf_errors(metadata_url, fetcher, role="target"):
            return Path(updater.download_target(info, None, target_base_url))
    except ValueError as e:  # ngclient: a target path it cannot turn into a URL or file name
        raise OtaInputError(f"{metadata_url}: target {target_name!r}: {e}") from e
    except OSError as e:
        raise OtaIOError(f"cannot write target {target_name!r} in {target_dir}: {e}") from e


def _clock(metadata_dir: Path) -> TrustedClock:
    return TrustedClock(metadata_dir / STATE_DIR / "trusted_time.json")


def _fetcher(metadata_dir: Path) -> RecordingFetcher:
    return RecordingFetcher(metadata_dir / STATE_DIR / "partial")


def _updater(
    metadata_dir: Path,
    metadata_url: str,
    fetcher: RecordingFetcher,
    reference: datetime,
    target_dir: Path | None = None,
) -> DurableUpdater:
    if not (metadata_dir / "root.json").exists():
        raise OtaUsageError(f"{metadata_dir}: no trusted root.json; run `init` first")
    return open_updater(
        metadata_dir,
        metadata_url,
        bootstrap=None,  # the newest trusted root, which ngclient links as root.json
        fetcher=fetcher,
        config=UpdaterConfig(),
        reference_time=reference,
        repository=metadata_url,
        target_dir=target_dir,
    )
