"""The update client as a campaign's update source: :class:`UpdateClientSource`.

:class:`~ota.campaign_runner.CampaignRunner` asks its source for a plan and for verified files
(:class:`~ota.campaign_runner.UpdateSource`); :class:`~ota.update_client.UpdateClient` answers
with an :class:`~ota.update_client.UpdatePlan` and downloads into a given path. This adapter
passes the installed release counter (from the A/B slots) to ``check`` so that the client itself
refuses a downgrade, and stores each target under its flat file name in the campaign's download
directory. Progress is reported as bytes arrive over the network (at most every
:data:`PROGRESS_INTERVAL_S`), and once more when the file is complete.

**Deltas.** A target whose signed custom fields carry a ``delta`` descriptor
(:class:`~ota.target_info.DeltaDescriptor`) can be made from an image the vehicle already has.
Given :class:`~ota.image_cache.BaseImages` (the committed slot, the cache of flashed ECU
images), :meth:`UpdateClientSource.retrieve`:

1. finds the base by the descriptor's ``from_sha256`` and hashes it (it must really be that
   image);
2. downloads the patch — a target of the image repository, its length and hashes from the
   signed metadata, verified by TUF like any image, and refused if it is not smaller than the
   image — resuming like any download;
3. applies it (:func:`ota.delta.apply_delta`) and checks the result against the signed target's
   length and every listed hash before writing it (temporary file, fsync, rename);

and on any problem on the way — no base, a base with another hash, a patch that cannot be
fetched or does not verify, a malformed patch, a result that does not match — logs why and
downloads the full image instead. The :class:`DownloadReport` says which way it went
(``delta from 3f2a61c09b7e (41,870 bytes instead of 300,000)``); progress then counts the
patch's bytes. Images above *max_delta_bytes* are never patched (bsdiff4 works in memory).

Usage (in a worker thread)::

    source = UpdateClientSource(client, slots)
    bases = ChainedBases(KnownImages({slot_sha256: slot_image_path}), ImageCache(cache_dir))
    path = source.download(target, download_dir, progress, bases=bases)
    source.last_report.describe()   # 'delta from 3f2a61c09b7e (41,870 bytes instead of …)'

Every method blocks (HTTP, hashing, bsdiff4): the campaign runner calls them in worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from tuf.api import exceptions

from agent.durable_file import write_durably
from ota.campaign_runner import SlotInstaller
from ota.delta import DeltaBaseMismatchError, DeltaResultMismatchError, apply_delta
from ota.errors import OtaError
from ota.image_cache import BaseImages
from ota.target_info import DeltaDescriptor, ImageKind
from ota.update_client import (
    TARGET_WRITTEN,
    PlannedTarget,
    Slot,
    UpdateClient,
    holds_target,
)

__all__ = [
    "DEFAULT_MAX_DELTA_BYTES",
    "PROGRESS_INTERVAL_S",
    "DownloadMethod",
    "DownloadReport",
    "UpdateClientSource",
    "delta_problem",
]

log = logging.getLogger(__name__)

#: Largest image (and base) patched in memory by default: bsdiff4 holds base, patch and result.
DEFAULT_MAX_DELTA_BYTES: Final = 256 * 1024 * 1024
#: Progress calls while bytes arrive are at least this far apart (the last one always comes).
PROGRESS_INTERVAL_S: Final = 0.25


class DownloadMethod(StrEnum):
    """How a target came to be in its download path."""

    #: Patched from an image on the vehicle with a downloaded delta.
    DELTA = "delta"
    #: The whole image downloaded.
    FULL = "full"
    #: Already there from an earlier call (verified, nothing fetched).
    PRESENT = "present"


@dataclass(frozen=True, slots=True)
class DownloadReport:
    """What :meth:`UpdateClientSource.retrieve` did for one target.

    *transferred* is the size of what was downloaded (the patch, or the image; 0 when already
    present); *base_sha256* the image a delta was applied to; *fallback* why a delta the target
    offers was not used (None when it was, or when there was none).
    """

    target: str
    path: Path
    method: DownloadMethod
    length: int
    transferred: int
    base_sha256: str | None = None
    fallback: str | None = None

    def describe(self) -> str:
        """One line: ``delta from <sha12> (N bytes instead of M)``, ``full image (M bytes)``…"""
        if self.method is DownloadMethod.DELTA:
            assert self.base_sha256 is not None
            return (
                f"delta from {self.base_sha256[:12]} ({self.transferred:,} bytes instead of "
                f"{self.length:,})"
            )
        if self.method is DownloadMethod.PRESENT:
            return f"already downloaded ({self.length:,} bytes)"
        text = f"full image ({self.length:,} bytes)"
        return text if self.fallback is None else f"{text}; delta not used: {self.fallback}"


def delta_problem(target: PlannedTarget, *, have_bases: bool, max_delta_bytes: int) -> str | None:
    """Why *target* cannot be made from a delta here (before looking for its base), or None.

    None also requires a delta descriptor; the caller checks that first.
    """
    if target.custom.delta is None:
        return "the target offers no delta"
    if not have_bases:
        return "no base images are known to this download"
    if target.sha256 is None:
        return "the target lists no sha256 to check the patched image against"
    if target.length > max_delta_bytes:
        return (
            f"the image is {target.length:,} bytes, more than the {max_delta_bytes:,} patched "
            "in memory"
        )
    return None


class _Throttle:
    """Passes progress calls on at most every *interval_s*, and always a call of done == total."""

    def __init__(self, progress: Callable[[int, int], None], interval_s: float) -> None:
        self.progress = progress
        self.interval_s = interval_s
        self._last = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        with self._lock:
            if done < total and now - self._last < self.interval_s:
                return
            self._last = now
        self.progress(done, total)


class UpdateClientSource:
    """:class:`UpdateClient` seen as a campaign's update source (blocking: runs in a thread).

    *bases* are the images deltas may start from when :meth:`download` is not given any;
    *max_delta_bytes* the largest image patched in memory. :attr:`last_report` is the
    :class:`DownloadReport` of the last download.
    """

    def __init__(
        self,
        client: UpdateClient,
        slots: SlotInstaller,
        *,
        bases: BaseImages | None = None,
        max_delta_bytes: int = DEFAULT_MAX_DELTA_BYTES,
    ) -> None:
        self.client = client
        self.slots = slots
        self.bases = bases
        self.max_delta_bytes = max_delta_bytes
        self.last_report: DownloadReport | None = None

    def _installed(self, slot: Slot) -> int | None:
        if slot == (ImageKind.TBOX, None):
            return self.slots.status().committed_release
        return None  # ECU firmware: the ECUs know their versions (flashing, issue 5)

    def check(self) -> tuple[PlannedTarget, ...]:
        """The verified plan: what the director assigns and the image repository vouches for."""
        return self.client.check(self._installed).targets

    def download(
        self,
        target: PlannedTarget,
        dest: Path,
        progress: Callable[[int, int], None],
        *,
        bases: BaseImages | None = None,
    ) -> Path:
        """Download *target* into the directory *dest* (resuming), verified; its path.

        With *bases* (or the constructor's), from a delta where the target offers one and its
        base is there (see the module doc); :attr:`last_report` says how.
        """
        report = self.retrieve(
            target,
            dest / target.file_name,
            progress,
            bases=bases if bases is not None else self.bases,
        )
        return report.path

    def retrieve(
        self,
        target: PlannedTarget,
        path: Path,
        progress: Callable[[int, int], None],
        *,
        bases: BaseImages | None,
    ) -> DownloadReport:
        """Make *path* hold *target*, verified, by a delta from *bases* if possible, else by
        downloading it whole; what was done (also :attr:`last_report`, and logged).

        Errors are those of :meth:`UpdateClient.download` (the full download); a delta's
        problems only make it fall back to that.
        """
        report = self._retrieve(target, path, _Throttle(progress, PROGRESS_INTERVAL_S), bases)
        self.last_report = report
        log.info("ota: %s: %s", target.name, report.describe())
        return report

    # --- plumbing ---------------------------------------------------------------------------------

    def _retrieve(
        self,
        target: PlannedTarget,
        path: Path,
        progress: Callable[[int, int], None],
        bases: BaseImages | None,
    ) -> DownloadReport:
        if holds_target(path, target.target_file()):
            progress(target.length, target.length)
            return DownloadReport(target.name, path, DownloadMethod.PRESENT, target.length, 0)
        delta = target.custom.delta
        fallback: str | None = None
        if delta is not None:
            fallback = delta_problem(
                target, have_bases=bases is not None, max_delta_bytes=self.max_delta_bytes
            )
            if fallback is None:
                assert bases is not None
                try:
                    outcome = self._via_delta(target, delta, path, bases, progress)
                except (OtaError, OSError, MemoryError) as e:
                    outcome = _reason(e)
                if isinstance(outcome, DownloadReport):
                    return outcome
                fallback = outcome
                log.warning(
                    "ota: %s: the delta from %s is not used (%s): downloading the full image",
                    target.name,
                    delta.from_sha256[:12],
                    fallback,
                )
        self.client.download(target, path, progress=progress)
        progress(target.length, target.length)
        return DownloadReport(
            target.name, path, DownloadMethod.FULL, target.length, target.length, fallback=fallback
        )

    def _via_delta(
        self,
        target: PlannedTarget,
        delta: DeltaDescriptor,
        path: Path,
        bases: BaseImages,
        progress: Callable[[int, int], None],
    ) -> DownloadReport | str:
        """The report of making *path* from *delta*, or why it was not tried; raises on
        a failure (the caller falls back on any)."""
        found = bases.find(delta.from_sha256)
        if found is None:
            return f"no image with sha256 {delta.from_sha256[:12]}… is on the vehicle"
        size = found.stat().st_size
        if size > self.max_delta_bytes:
            return (
                f"the base {found} is {size:,} bytes, more than the {self.max_delta_bytes:,} "
                "patched in memory"
            )
        base = found.read_bytes()
        actual = hashlib.sha256(base).hexdigest()
        if actual != delta.from_sha256:
            raise DeltaBaseMismatchError(
                f"the base {found} has sha256 {actual[:12]}…, not {delta.from_sha256[:12]}…"
            )
        assert target.sha256 is not None  # delta_problem
        path.parent.mkdir(parents=True, exist_ok=True)
        patch_path = path.with_name(f".{path.name}.delta")
        try:
            # Not smaller than the image: no point (and no bound on a bogus listing's size).
            patch = self.client.download_listed(
                delta.patch, patch_path, max_length=target.length - 1, progress=progress
            )
            image = apply_delta(
                base,
                patch_path.read_bytes(),
                target_sha256=target.sha256,
                target_length=target.length,
            )
            try:  # every hash the target lists, not only sha256
                target.target_file().verify_length_and_hashes(io.BytesIO(image))
            except exceptions.LengthOrHashMismatchError as e:
                raise DeltaResultMismatchError(f"the patched image does not verify: {e}") from e
            write_durably(path, image, written=TARGET_WRITTEN)
        finally:
            with contextlib.suppress(FileNotFoundError):
                patch_path.unlink()
        progress(patch.length, patch.length)
        return DownloadReport(
            target.name,
            path,
            DownloadMethod.DELTA,
            target.length,
            patch.length,
            base_sha256=delta.from_sha256,
        )


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError):
        return f"{error.filename or 'a file'}: {error.strerror or error}"
    if isinstance(error, MemoryError):
        return "not enough memory to apply it"
    return str(error) or type(error).__name__
