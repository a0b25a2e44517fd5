"""The A/B installer for the T-box's own software: slot files, verification and durable switches.

Simulated under a root directory, so that it runs in CI as it would on a T-box::

    ROOT/state.json          which slot is committed, active and to try; the pending update
    ROOT/a/image             slot a's image (a partition on a real T-box)
    ROOT/a/manifest.json     what slot a holds: release counter, version, sha256, length, when
    ROOT/b/…                 the same for slot b
    ROOT/.lock               held while an operation runs (one process at a time)

:mod:`ota.slot_state` decides every transition and documents the file formats; this module does
the I/O. Usage (the agent's update campaign, one step after another)::

    installer = AbInstaller(Path("/var/lib/tbox/slots"), max_attempts=3)
    installer.boot()                                  # at power-on: the bootloader's part
    installer.install(image, sha256, length, release_counter=6, version="2026.12")
    installer.boot()                                  # after the reboot into the new slot
    result = installer.check_health(CommandCheck("tbox selftest", timeout_s=60))
    if result.passed:
        installer.commit()                            # else it has rolled back already
    installer.status()                                # a frozen SlotStatus for the report

Guarantees

* **The active slot is never written.** An update goes into the other slot; a second install
  while one is pending is refused (:class:`~ota.errors.UpdatePendingError`).
* **Verified after writing.** The image is copied in a stream while hashing it; then it is
  fsynced, its cached pages are dropped and it is hashed again *from the storage*. A mismatch
  (:class:`~ota.errors.SlotWriteVerificationError`) leaves the slot empty and the update failed.
* **Atomic switch.** A slot becomes "to try" only by replacing the state file (temporary file,
  fsync, rename, fsync of the directory — :func:`agent.durable_file.write_durably`), after its
  manifest is durable. Before its image is written the slot's manifest is removed, so a slot
  with a manifest holds exactly that image, and :meth:`status` never needs to hash to be true.
* **Verified boot.** :meth:`boot` hashes the slot it is about to boot. An update that does not
  verify, or that used all its boot attempts, is rolled back to the committed slot with the
  reason recorded; a committed slot that does not verify is
  :class:`~ota.errors.NoBootableSlotError`.
* **Power cuts.** Every persistence step hits a named crash point (contract C6: ``slots.*``,
  listed by ``tbox debug crashpoints``). After a cut anywhere, :meth:`boot` leaves a verified
  slot running and the update either still on its way (to be checked and committed) or
  recorded as failed — never half-switched.
* **A missing or unreadable state file** is a :class:`~ota.errors.SlotStateError` naming it;
  no slot is ever picked by guessing. :meth:`recover` writes a new state file trusting the slot
  an operator names, once its image verifies against its manifest.

Threads: the API is synchronous on purpose. Each call is one sequence of file operations that
must not interleave with another (a lock serializes them), and copying and hashing an image
takes seconds to minutes: async callers run each call in a worker thread
(``await asyncio.to_thread(installer.install, …)``), which keeps crash-point counts exact and
the API single. :meth:`status` takes no lock and never blocks on a running install.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from agent import crashpoints
from agent.crashpoints import CrashPoint
from agent.durable_file import fsync_dir, write_durably
from agent.errors import TboxError
from ota import slot_state as decide
from ota.errors import (
    ImageMismatchError,
    NoBootableSlotError,
    OtaUsageError,
    SlotIOError,
    SlotSequenceError,
    SlotStateError,
    SlotWriteVerificationError,
)
from ota.health_check import HealthCheck, HealthResult
from ota.slot_state import (
    SLOTS,
    ImageInfo,
    Phase,
    Slot,
    SlotManifest,
    SlotState,
    SlotStatus,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_MAX_ATTEMPTS", "AbInstaller", "sha256_from_disk"]

DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_CHUNK_SIZE: Final = 1 << 20

STATE_FILE: Final = "state.json"
IMAGE_FILE: Final = "image"
MANIFEST_FILE: Final = "manifest.json"
LOCK_FILE: Final = ".lock"


def _state_points(step: str, what: str) -> tuple[CrashPoint, CrashPoint]:
    before = crashpoints.declare(
        f"slots.before_{step}",
        f"the state file {what} is written and fsynced as a temporary file, not yet renamed",
    )
    after = crashpoints.declare(
        f"slots.after_{step}",
        f"the state file {what} has replaced the old one; its directory is not yet fsynced",
    )
    return before, after


CP_FRESH_STATE = _state_points("fresh_state", "of a provisioned or recovered T-box")
CP_BEGIN = _state_points("begin", "saying that an update is being written into a slot")
CP_AFTER_INVALIDATE = crashpoints.declare(
    "slots.after_invalidate",
    "the manifest of the slot about to be written is removed (durably); its image is untouched",
)
CP_IMAGE_CHUNK = crashpoints.declare(
    "slots.image_chunk_written", "one more chunk of an image is written into its slot, unsynced"
)
CP_AFTER_IMAGE_FSYNC = crashpoints.declare(
    "slots.after_image_fsync", "a slot's image is fully written and fsynced, not yet re-hashed"
)
CP_MANIFEST = (
    crashpoints.declare(
        "slots.before_manifest",
        "a verified slot's manifest is written and fsynced as a temporary file, not yet renamed",
    ),
    crashpoints.declare(
        "slots.after_manifest",
        "a verified slot's manifest is in place; its directory is not yet fsynced",
    ),
)
CP_SWITCH = _state_points("switch", "marking the verified slot to be tried at the next boot")
CP_FAIL = _state_points("fail", "recording a failed or interrupted install")
CP_BOOT_COUNT = _state_points("boot_count", "with the boot attempt of an update counted")
CP_HEALTH = _state_points("health", "recording that the booted update's health check passed")
CP_COMMIT = _state_points("commit", "making the booted update the committed software")
CP_ROLLBACK = _state_points("rollback", "rolling an update back to the committed slot")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AbInstaller:
    """The two slots under *root* and their state file (see the module's docstring).

    *max_attempts* is how many boots an installed update gets to be committed (the boot
    counter); *chunk_size* is the unit of copying and hashing; *clock* stamps manifests and
    failures (UTC).
    """

    def __init__(
        self,
        root: Path,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        if type(max_attempts) is not int or max_attempts < 1:
            raise OtaUsageError(f"max_attempts {max_attempts!r} is not an integer ≥ 1")
        if type(chunk_size) is not int or chunk_size < 1:
            raise OtaUsageError(f"chunk_size {chunk_size!r} is not an integer ≥ 1")
        self.root = Path(root)
        self.max_attempts = max_attempts
        self._chunk_size = chunk_size
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def state_path(self) -> Path:
        """The state file."""
        return self.root / STATE_FILE

    def image_path(self, slot: Slot) -> Path:
        """The image file of *slot*."""
        return self.root / slot / IMAGE_FILE

    def manifest_path(self, slot: Slot) -> Path:
        """The manifest file of *slot*."""
        return self.root / slot / MANIFEST_FILE

    # --- operations ----------------------------------------------------------------------------

    def provision(
        self, image_path: Path, sha256: str, length: int, release_counter: int, *, version: str = ""
    ) -> SlotStatus:
        """Factory install: write *image_path* into slot ``a`` and commit it.

        Only for a root without a state file (a new T-box, or a provisioning a power cut
        interrupted, which is simply done again).
        """
        image = self._image_info(sha256, length, release_counter, version)
        with self._exclusive():
            if self.state_path.exists():
                raise SlotSequenceError(
                    f"{self.root} is already provisioned ({self.state_path} exists); install() "
                    "updates it, recover() repairs an unreadable state file"
                )
            for slot in SLOTS:
                self._make_dir(self.root / slot)
            self._write_slot("a", Path(image_path), image)
            state = decide.fresh_state("a", image, max_attempts=self.max_attempts)
            self._save(state, CP_FRESH_STATE)
            return self._snapshot(state)

    def install(
        self,
        image_path: Path,
        expected_sha256: str,
        expected_length: int,
        release_counter: int,
        *,
        version: str = "",
    ) -> SlotStatus:
        """Write *image_path* into the inactive slot, verify it, and mark it to try at next boot.

        Raises :class:`~ota.errors.UpdatePendingError` or :class:`~ota.errors.DowngradeError`
        before touching anything; :class:`~ota.errors.ImageMismatchError` (the image is not the
        one expected), :class:`~ota.errors.SlotWriteVerificationError` (the slot does not read
        back as written) or :class:`~ota.errors.SlotIOError` after recording the update as
        failed. The active slot is never written.
        """
        image = self._image_info(expected_sha256, expected_length, release_counter, version)
        with self._exclusive():
            state = self._load()
            state = decide.begin_install(
                state, image, max_attempts=self.max_attempts, now=self._now()
            )
            self._save(state, CP_BEGIN)
            assert state.pending is not None  # begin_install's result always has one
            try:
                self._write_slot(state.pending.slot, Path(image_path), image)
            except TboxError as e:
                self._save(decide.fail_install(state, str(e), now=self._now()), CP_FAIL)
                raise
            state = decide.finish_install(state)
            self._save(state, CP_SWITCH)
            return self._snapshot(state)

    def boot(self) -> SlotStatus:
        """Simulate the bootloader at power-on; return the status of the system that runs.

        Counts an attempt of an update to try, or rolls it back (attempts exhausted, image not
        verifying, install interrupted) to the committed slot, recording why. Raises
        :class:`~ota.errors.NoBootableSlotError` if the slot to run does not verify.
        """
        with self._exclusive():
            state = self._load()
            trial = decide.trial_slot(state)
            problem = None
            if trial is not None and state.pending is not None:
                problem = self._slot_problem(trial, state.pending.image)
            booted = decide.boot(state, trial_problem=problem, now=self._now())
            if booted != state:
                self._save(booted, self._points_for(state, booted))
            if booted.active == booted.committed.slot:
                problem = self._slot_problem(booted.committed.slot, booted.committed.image)
                if problem is not None:
                    raise NoBootableSlotError(
                        f"cannot boot: the committed slot {booted.committed.slot} "
                        f"({booted.committed.image.describe()}) does not verify: {problem}"
                    )
            return self._snapshot(booted)

    def check_health(self, check: HealthCheck) -> HealthResult:
        """Run *check* on the booted update: record a pass, or roll back with its reason.

        Raises :class:`~ota.errors.SlotSequenceError` (before running it) unless an update has
        been booted and is on trial. Blocks for up to the check's timeout.
        """
        with self._exclusive():
            state = self._load()
            decide.require_booted_update(state)
            result = check.run()
            checked = decide.record_health(
                state, passed=result.passed, reason=result.reason, now=self._now()
            )
            if checked != state:
                self._save(checked, CP_HEALTH if result.passed else CP_ROLLBACK)
            return result

    def commit(self) -> SlotStatus:
        """Make the booted, healthy update permanent; harmless when nothing is pending."""
        with self._exclusive():
            state = self._load()
            committed = decide.commit(state)
            if committed != state:
                self._save(committed, CP_COMMIT)
            return self._snapshot(committed)

    def rollback(self, reason: str) -> SlotStatus:
        """Abandon the pending update for the committed slot, recording *reason*."""
        with self._exclusive():
            state = self._load()
            rolled = decide.rollback(state, reason, now=self._now())
            self._save(rolled, self._points_for(state, rolled))
            return self._snapshot(rolled)

    def recover(self, slot: Slot) -> SlotStatus:
        """Replace a missing or unreadable state file with one that commits *slot*.

        An operator's decision, never taken automatically: *slot*'s image must verify against
        its manifest, and its release counter becomes the anti-rollback floor.
        """
        if slot not in SLOTS:
            raise OtaUsageError(f"slot {slot!r} is neither 'a' nor 'b'")
        with self._exclusive():
            try:
                self._load()
            except SlotStateError:
                pass
            else:
                raise SlotSequenceError(
                    f"{self.state_path} is readable; recover() only replaces a missing or "
                    "unreadable state file"
                )
            try:
                manifest = self._read_manifest(slot)
            except SlotStateError as e:
                raise SlotSequenceError(f"cannot trust slot {slot}: {e}") from e
            if manifest is None:
                raise SlotSequenceError(f"cannot trust slot {slot}: it has no manifest")
            problem = self._slot_problem(slot, manifest.image)
            if problem is not None:
                raise SlotSequenceError(f"cannot trust slot {slot}: {problem}")
            state = decide.fresh_state(slot, manifest.image, max_attempts=self.max_attempts)
            self._save(state, CP_FRESH_STATE)
            return self._snapshot(state)

    def status(self) -> SlotStatus:
        """A frozen snapshot of the state and of what each slot holds (no hashing, no lock)."""
        return self._snapshot(self._load())

    # --- steps ---------------------------------------------------------------------------------

    def _write_slot(self, slot: Slot, source: Path, image: ImageInfo) -> None:
        """Invalidate *slot*, copy *source* into it while hashing, re-hash it from the storage,
        then write its manifest: a slot has a manifest only while its image matches it."""
        manifest_path = self.manifest_path(slot)
        try:
            manifest_path.unlink(missing_ok=True)
            fsync_dir(manifest_path.parent)
        except OSError as e:
            raise SlotIOError(f"cannot remove {manifest_path}: {e.strerror or e}") from e
        CP_AFTER_INVALIDATE.hit()
        target = self.image_path(slot)
        self._copy_hashing(source, target, image)
        CP_AFTER_IMAGE_FSYNC.hit()
        try:
            digest, length = sha256_from_disk(target, self._chunk_size)
        except OSError as e:
            raise SlotIOError(f"cannot read back {target}: {e.strerror or e}") from e
        if (digest, length) != (image.sha256, image.length):
            raise SlotWriteVerificationError(
                f"slot {slot} reads back as {length} bytes with sha256 {digest[:12]}… after "
                f"writing {image.length} bytes with sha256 {image.sha256[:12]}… ({target}): "
                "the storage is failing or the file was changed while it was written"
            )
        manifest = SlotManifest(image, self._now())
        try:
            write_durably(
                manifest_path,
                decide.encode_manifest(manifest),
                written=CP_MANIFEST[0],
                renamed=CP_MANIFEST[1],
            )
        except OSError as e:
            raise SlotIOError(f"cannot write {manifest_path}: {e.strerror or e}") from e

    def _copy_hashing(self, source: Path, target: Path, image: ImageInfo) -> None:
        digest = hashlib.sha256()
        copied = 0
        try:
            reader = source.open("rb")
        except OSError as e:
            raise SlotIOError(f"cannot read the update image {source}: {e.strerror or e}") from e
        with reader:
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as e:
                raise SlotIOError(f"cannot write {target}: {e.strerror or e}") from e
            try:
                while True:
                    try:
                        chunk = reader.read(self._chunk_size)
                    except OSError as e:
                        raise SlotIOError(f"cannot read {source}: {e.strerror or e}") from e
                    if not chunk:
                        break
                    copied += len(chunk)
                    if copied > image.length:
                        # an endless or oversized image is refused as soon as it overflows
                        raise ImageMismatchError(
                            f"{source} is longer than the expected {image.length} bytes"
                        )
                    digest.update(chunk)
                    _write_all(fd, chunk, target)
                    CP_IMAGE_CHUNK.hit()
                try:
                    os.fsync(fd)
                except OSError as e:
                    raise SlotIOError(f"cannot flush {target}: {e.strerror or e}") from e
            finally:
                os.close(fd)
        if copied != image.length:
            raise ImageMismatchError(f"{source} is {copied} bytes, not the expected {image.length}")
        if digest.hexdigest() != image.sha256:
            raise ImageMismatchError(
                f"{source} has sha256 {digest.hexdigest()}, not the expected {image.sha256}: "
                "it is corrupt or not the image the update names"
            )

    def _slot_problem(self, slot: Slot, expected: ImageInfo) -> str | None:
        """Why *slot* cannot be booted as *expected* (manifest and image), or ``None``."""
        try:
            manifest = self._read_manifest(slot)
        except SlotStateError as e:
            return str(e)
        if manifest is None:
            return f"it has no manifest ({self.manifest_path(slot)})"
        if manifest.image != expected:
            return (
                f"its manifest names {manifest.image.describe()} with sha256 "
                f"{manifest.image.sha256[:12]}…, not {expected.describe()} with sha256 "
                f"{expected.sha256[:12]}…"
            )
        path = self.image_path(slot)
        try:
            digest, length = sha256_from_disk(path, self._chunk_size)
        except FileNotFoundError:
            return f"its image {path} is missing"
        except OSError as e:
            return f"its image {path} cannot be read: {e.strerror or e}"
        if (digest, length) != (expected.sha256, expected.length):
            return (
                f"its image {path} is {length} bytes with sha256 {digest[:12]}…; its manifest "
                f"says {expected.length} bytes with sha256 {expected.sha256[:12]}…"
            )
        return None

    # --- files ---------------------------------------------------------------------------------

    def _load(self) -> SlotState:
        path = self.state_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SlotStateError(
                str(path),
                None,
                "does not exist: the slots were never provisioned or the state file was lost; "
                "no slot is booted by guessing: provision() a new T-box, or recover(slot) "
                f"naming the slot to trust ({self._manifests_summary()})",
            ) from None
        except OSError as e:
            raise SlotIOError(f"cannot read {path}: {e.strerror or e}") from e
        try:
            return decide.parse_state(data, source=str(path))
        except SlotStateError as e:
            raise SlotStateError(
                e.source,
                e.key,
                f"{e.problem}; no slot is booted by guessing: recover(slot) naming the slot to "
                f"trust replaces the file ({self._manifests_summary()})",
            ) from e

    def _save(self, state: SlotState, points: tuple[CrashPoint, CrashPoint]) -> None:
        try:
            write_durably(
                self.state_path, decide.encode_state(state), written=points[0], renamed=points[1]
            )
        except OSError as e:
            raise SlotIOError(f"cannot write {self.state_path}: {e.strerror or e}") from e

    def _read_manifest(self, slot: Slot) -> SlotManifest | None:
        path = self.manifest_path(slot)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SlotStateError(str(path), None, f"cannot be read: {e.strerror or e}") from e
        return decide.parse_manifest(data, source=str(path))

    def _snapshot(self, state: SlotState) -> SlotStatus:
        manifests: dict[Slot, SlotManifest | None] = {}
        for slot in SLOTS:
            try:
                manifests[slot] = self._read_manifest(slot)
            except SlotStateError:
                manifests[slot] = None  # an unreadable manifest holds no usable image
        return decide.snapshot(state, manifests)

    def _manifests_summary(self) -> str:
        parts = []
        for slot in SLOTS:
            try:
                manifest = self._read_manifest(slot)
            except SlotStateError:
                parts.append(f"slot {slot}: unreadable manifest")
                continue
            what = "empty" if manifest is None else manifest.image.describe()
            parts.append(f"slot {slot}: {what}")
        return "; ".join(parts)

    def _make_dir(self, path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SlotIOError(f"cannot create {path}: {e.strerror or e}") from e

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One operation at a time: across threads (a lock) and processes (``flock``)."""
        with self._lock:
            self._make_dir(self.root)
            lock_path = self.root / LOCK_FILE
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise SlotIOError(f"cannot open {lock_path}: {e.strerror or e}") from e
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise SlotSequenceError(
                        f"another process is working on the slots under {self.root} (it holds "
                        f"{lock_path}); try again when it has finished"
                    ) from None
                yield
            finally:
                os.close(fd)  # releases the flock

    def _points_for(self, old: SlotState, new: SlotState) -> tuple[CrashPoint, CrashPoint]:
        """The crash points of the state change from *old* to *new* made by boot or rollback."""
        if new.pending is not None:
            return CP_BOOT_COUNT
        assert old.pending is not None  # boot and rollback change nothing without a pending
        return CP_FAIL if old.pending.phase is Phase.WRITING else CP_ROLLBACK

    def _image_info(
        self, sha256: str, length: int, release_counter: int, version: str
    ) -> ImageInfo:
        image = ImageInfo(release_counter, sha256, length, version)
        problem = decide.image_problem(image)
        if problem is not None:
            raise OtaUsageError(f"cannot install: {problem}")
        return image

    def _now(self) -> str:
        return self._clock().astimezone(dt.UTC).isoformat(timespec="seconds")


def sha256_from_disk(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[str, int]:
    """The sha256 (hex) and length of *path*, read from the storage rather than from the cache.

    The file's cached pages are dropped first (``posix_fadvise(DONTNEED)``, effective once they
    are fsynced), so verifying a freshly written slot reads what the storage returns, not what
    was just handed to the kernel (RAUC's "no verification after writing").
    """
    digest = hashlib.sha256()
    length = 0
    with path.open("rb") as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while chunk := f.read(chunk_size):
            digest.update(chunk)
            length += len(chunk)
    return digest.hexdigest(), length


def _write_all(fd: int, data: bytes, target: Path) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except OSError as e:
            raise SlotIOError(f"cannot write {target}: {e.strerror or e}") from e
