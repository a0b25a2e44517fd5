"""The vehicle's update client: Uptane-style verification over two TUF repositories.

A vehicle installs a target only if the **director** assigns it to this vehicle (and to an ECU
this client serves, built for its hardware) *and* the **image repository** vouches for it with
identical length, hashes and custom fields (docs/adr/0007), and its release counter is not
lower than the installed one. python-tuf's ngclient does every TUF check (signatures,
thresholds, versions, expiry, lengths and hashes, root rotation); this module adds what it
lacks around it:

* downloads through :class:`~ota.fetcher.ResumableFetcher` (Range resume after a restart, byte
  limits, a throughput floor against slow retrieval);
* :class:`~ota.trusted_time.TrustedClock`: expiry is checked at ``max(clock, floor)`` and a
  clock set back below the floor is refused (``clock_rollback``);
* ngclient's metadata cache written durably (fsync, rename, fsync of the directory), so that a
  power cut cannot lose the versions rollback protection compares with;
* the Uptane checks on every director target (:func:`verify_assignments`, pure);
* every refusal as :class:`~ota.errors.UpdateRejectedError` with a machine-readable
  :class:`~ota.errors.RejectionCode` (python-tuf's exceptions are mapped at the seam,
  :func:`classify_tuf_error`); an unreachable server is :class:`~ota.errors.UpdateUnavailableError`.

Usage::

    config = UpdateClientConfig(
        vehicle_id="VIN1", hardware_id="tbox-hw2", ecus={"bms": "bms-hw1"},
        director_url="https://ota.example/director/", image_url="https://ota.example/image/",
        state_dir=Path("/var/lib/tbox/ota"),
        director_root=Path("/etc/tbox/director-root.json"),
        image_root=Path("/etc/tbox/image-root.json"),
    )
    client = UpdateClient(config)
    plan = client.check(installed={(ImageKind.TBOX, None): 11})   # UpdateRejectedError if refused
    for target in plan.targets:
        path = client.download(target, Path("/var/lib/tbox/ota/images") / target.file_name)
    # from asyncio: await client.check_async(...), await client.download_async(...)

The API is synchronous and blocking (HTTP, hashing, fsync); async callers use the ``*_async``
wrappers, which run it in a thread (:func:`asyncio.to_thread`). One client per state directory:
two processes must not share it (ngclient's rule for its metadata directory).

python-tuf 7 internals relied upon (pinned by tests/ota/test_update_client.py): the
``Updater``'s ``_trusted_set`` (its ``reference_time``, set before refresh, and its verified
top-level ``targets``) and ``_persist_file`` (overridden to write durably).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Final
from urllib.parse import quote, unquote, urlsplit

from tuf.api import exceptions
from tuf.api.metadata import TargetFile, Targets
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.updater import Updater

from agent import crashpoints
from agent.durable_file import fsync_dir, write_durably
from ota.errors import (
    OtaInputError,
    OtaIOError,
    OtaUsageError,
    OtaVerificationError,
    RejectionCode,
    UpdateRejectedError,
    UpdateUnavailableError,
)
from ota.fetcher import ResumableFetcher
from ota.target_info import (
    ImageKind,
    TargetCustom,
    check_matches_image,
    identifier_problem,
    vehicle_id_problem,
)
from ota.trusted_time import DEFAULT_TOLERANCE, TrustedClock

__all__ = [
    "DurableUpdater",
    "InstalledCounters",
    "PlannedTarget",
    "Progress",
    "RecordingFetcher",
    "Repository",
    "Slot",
    "UpdateClient",
    "UpdateClientConfig",
    "UpdatePlan",
    "classify_tuf_error",
    "holds_target",
    "verify_assignments",
]

METADATA_WRITTEN = crashpoints.declare(
    "update_client.metadata_written",
    "verified TUF metadata is fsynced in the client's cache, not yet renamed into place",
)
TARGET_WRITTEN = crashpoints.declare(
    "update_client.target_written",
    "a verified target is fsynced under a temporary name, not yet renamed to its destination",
)

#: What an assignment occupies on the vehicle: (image kind, ECU id or None for the T-box).
Slot = tuple[ImageKind, str | None]

#: Called with ``(bytes received so far, bytes expected)`` while a target downloads, from the
#: downloading thread.
Progress = Callable[[int, int], None]

#: The installed release counter of each slot: a mapping, or a function returning None for a
#: slot with nothing installed.
InstalledCounters = Mapping[Slot, int] | Callable[[Slot], int | None]

_DEFAULTS: Final = UpdaterConfig()
_METADATA_NAME = re.compile(r"(?:[0-9]+\.)?(.+)\.json")
_SIGNED_BY = re.compile(r"signed by ([0-9]+)/([0-9]+) keys")


class Repository(StrEnum):
    """The two repositories of an Uptane-style client."""

    DIRECTOR = "director"
    IMAGE = "image"


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateClientConfig:
    """Everything one vehicle's update client needs; validated on construction
    (:class:`~ota.errors.OtaUsageError`).

    * *vehicle_id*, *hardware_id* (the T-box's), *ecus* (the ECUs this client updates: ECU id →
      that ECU's hardware id);
    * *director_url*, *image_url*: the repositories' base URLs (the director's metadata is
      fetched from ``<director_url>vehicles/<quoted vehicle id>/metadata/``, images from
      ``<image_url>targets/``);
    * *state_dir*: the client's persistent state — ``director/`` and ``image/`` (ngclient's
      metadata caches), ``partial/`` (resumable downloads), ``trusted_time.json``;
    * *director_root*, *image_root*: the root metadata files the vehicle was provisioned with;
    * byte limits: *max_target_bytes* and the metadata limits (ngclient's defaults);
    * the throughput floor *min_bytes_per_s* after *grace_s*, *socket_timeout_s*;
    * *checkpoint_bytes* (a resumable download's journal interval), *resume_min_bytes* (smaller
      files are fetched in memory);
    * *clock_tolerance*, *not_before*: see :mod:`ota.trusted_time`.
    """

    vehicle_id: str
    hardware_id: str
    director_url: str
    image_url: str
    state_dir: Path
    director_root: Path
    image_root: Path
    ecus: Mapping[str, str] = field(default_factory=dict)
    max_target_bytes: int = 4 * 1024**3
    root_max_bytes: int = _DEFAULTS.root_max_length
    timestamp_max_bytes: int = _DEFAULTS.timestamp_max_length
    snapshot_max_bytes: int = _DEFAULTS.snapshot_max_length
    targets_max_bytes: int = _DEFAULTS.targets_max_length
    min_bytes_per_s: float = 1024.0
    grace_s: float = 30.0
    socket_timeout_s: float = 30.0
    checkpoint_bytes: int = 1024 * 1024
    resume_min_bytes: int = 256 * 1024
    clock_tolerance: timedelta = DEFAULT_TOLERANCE
    not_before: datetime | None = None

    def __post_init__(self) -> None:
        problem = vehicle_id_problem(self.vehicle_id)
        if problem is not None:
            raise OtaUsageError(f"vehicle id {problem}")
        problem = identifier_problem(self.hardware_id)
        if problem is not None:
            raise OtaUsageError(f"hardware id {problem}")
        for ecu, hardware in self.ecus.items():
            for what, value in (("ECU id", ecu), (f"ECU {ecu}'s hardware id", hardware)):
                problem = identifier_problem(value)
                if problem is not None:
                    raise OtaUsageError(f"{what} {problem}")
        # A read-only copy: the config is shared with threads and must not change under them.
        object.__setattr__(self, "ecus", MappingProxyType(dict(self.ecus)))
        for name in ("director_url", "image_url"):
            url = getattr(self, name)
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise OtaUsageError(f"{name.replace('_', ' ')} {url!r} is not an http(s) URL")
            object.__setattr__(self, name, url if url.endswith("/") else url + "/")
        limits = (
            "max_target_bytes",
            "root_max_bytes",
            "timestamp_max_bytes",
            "snapshot_max_bytes",
            "targets_max_bytes",
            "checkpoint_bytes",
        )
        for name in limits:
            if getattr(self, name) < 1:
                raise OtaUsageError(f"{name} must be at least 1")
        if self.min_bytes_per_s < 0 or self.grace_s < 0 or self.socket_timeout_s <= 0:
            raise OtaUsageError("throughput floor, grace and socket timeout must be positive")

    @property
    def director_metadata_url(self) -> str:
        """This vehicle's director metadata URL (the vehicle id URL-quoted, ADR 0007)."""
        return f"{self.director_url}vehicles/{quote(self.vehicle_id, safe='')}/metadata/"

    @property
    def image_metadata_url(self) -> str:
        """The image repository's metadata URL."""
        return f"{self.image_url}metadata/"

    @property
    def image_targets_url(self) -> str:
        """The image repository's targets URL (images are downloaded from here only)."""
        return f"{self.image_url}targets/"

    def metadata_dir(self, repository: Repository) -> Path:
        """ngclient's metadata cache of *repository*."""
        return self.state_dir / repository.value

    @property
    def partial_dir(self) -> Path:
        """Where partial downloads and their journals are kept."""
        return self.state_dir / "partial"

    @property
    def time_floor_file(self) -> Path:
        """The persisted trusted-time floor."""
        return self.state_dir / "trusted_time.json"

    def updater_config(self) -> UpdaterConfig:
        """ngclient's configuration with our metadata byte limits."""
        return UpdaterConfig(
            root_max_length=self.root_max_bytes,
            timestamp_max_length=self.timestamp_max_bytes,
            snapshot_max_length=self.snapshot_max_bytes,
            targets_max_length=self.targets_max_bytes,
        )

    def new_fetcher(self) -> RecordingFetcher:
        """A fetcher with this configuration's limits, keeping partials in :attr:`partial_dir`."""
        return RecordingFetcher(
            self.partial_dir,
            min_bytes_per_s=self.min_bytes_per_s,
            grace_s=self.grace_s,
            socket_timeout_s=self.socket_timeout_s,
            checkpoint_bytes=self.checkpoint_bytes,
            resume_min_bytes=self.resume_min_bytes,
        )


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedTarget:
    """A target the director assigns and the image repository vouches for, verified."""

    name: str
    length: int
    hashes: Mapping[str, str]
    custom: TargetCustom

    @property
    def image_kind(self) -> ImageKind:
        """The T-box's own software or an ECU's firmware."""
        return self.custom.image_kind

    @property
    def ecu_id(self) -> str | None:
        """The ECU to flash (None: the T-box itself)."""
        return self.custom.ecu_id

    @property
    def release_counter(self) -> int:
        """The release counter (never lower than the installed one)."""
        return self.custom.release_counter

    @property
    def slot(self) -> Slot:
        """What this target occupies when installed."""
        return (self.custom.image_kind, self.custom.ecu_id)

    @property
    def sha256(self) -> str | None:
        """The sha256 listed, if any."""
        return self.hashes.get("sha256")

    @property
    def file_name(self) -> str:
        """A flat file name for this target (its name URL-quoted, as ngclient stores it)."""
        return quote(self.name, safe="")

    def target_file(self) -> TargetFile:
        """The python-tuf form (for ngclient's download)."""
        return TargetFile(
            self.length, dict(self.hashes), self.name, {"custom": self.custom.to_json()}
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "name": self.name,
            "length": self.length,
            "hashes": dict(self.hashes),
            "custom": self.custom.to_json(),
        }


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """What the director assigns to this vehicle, every target verified (possibly none)."""

    vehicle_id: str
    targets: tuple[PlannedTarget, ...]
    director_version: int
    image_version: int
    verified_at: datetime

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "vehicle_id": self.vehicle_id,
            "director_targets_version": self.director_version,
            "image_targets_version": self.image_version,
            "verified_at": self.verified_at.isoformat(),
            "targets": [t.to_json() for t in self.targets],
        }


# --- decisions (pure) ----------------------------------------------------------------------------


def _installed_counter(installed: InstalledCounters, slot: Slot) -> int | None:
    if callable(installed):
        return installed(slot)
    return installed.get(slot)


def _slot_text(slot: Slot) -> str:
    kind, ecu = slot
    return "the T-box" if ecu is None and kind is ImageKind.TBOX else f"{kind.value} {ecu}"


def verify_assignments(
    director_targets: Mapping[str, TargetFile],
    image_targets: Mapping[str, TargetFile | None],
    *,
    config: UpdateClientConfig,
    installed: InstalledCounters,
) -> tuple[PlannedTarget, ...]:
    """The verified plan for *director_targets* (verified director metadata), given what the
    verified image repository lists under each name (*image_targets*; None: not listed) and
    the installed release counters.

    Any director target that fails a check refuses the whole plan
    (:class:`UpdateRejectedError`): director metadata with one forged or misdirected entry is
    not trusted for the others.
    """
    planned: list[PlannedTarget] = []
    seen: dict[Slot, str] = {}
    for name in sorted(director_targets):
        assigned = director_targets[name]

        def reject(code: RejectionCode, reason: str, name: str = name) -> UpdateRejectedError:
            return UpdateRejectedError(
                code, f"director target {name}: {reason}", repository="director", role=name
            )

        try:
            custom = TargetCustom.from_json(assigned.custom, where=f"director target {name}")
        except OtaInputError as e:
            raise UpdateRejectedError(
                RejectionCode.INVALID_METADATA, str(e), repository="director", role=name
            ) from e
        if custom.vehicle_id != config.vehicle_id:
            raise reject(
                RejectionCode.WRONG_VEHICLE,
                f"assigned to vehicle {custom.vehicle_id!r}, this is {config.vehicle_id!r}",
            )
        if custom.ecu_id is None:
            if custom.image_kind is not ImageKind.TBOX:
                raise reject(RejectionCode.WRONG_ECU, "ECU firmware assigned to no ECU")
            expected_hardware = config.hardware_id
            where = "this T-box"
        else:
            if custom.ecu_id not in config.ecus:
                served = ", ".join(sorted(config.ecus)) or "none"
                raise reject(
                    RejectionCode.WRONG_ECU,
                    f"for ECU {custom.ecu_id!r}, which this client does not serve (ECUs: {served})",
                )
            expected_hardware = config.ecus[custom.ecu_id]
            where = f"ECU {custom.ecu_id}"
        if custom.hardware_id != expected_hardware:
            raise reject(
                RejectionCode.WRONG_HARDWARE,
                f"built for hardware {custom.hardware_id!r}, {where} is {expected_hardware!r}",
            )
        if assigned.length > config.max_target_bytes:
            raise reject(
                RejectionCode.ENDLESS_DATA,
                f"{assigned.length:,} bytes is more than the {config.max_target_bytes:,} allowed",
            )
        vouched = image_targets.get(name)
        if vouched is None:
            raise reject(
                RejectionCode.DIRECTOR_IMAGE_MISMATCH, "the image repository does not list it"
            )
        try:
            check_matches_image(assigned, vouched)
        except OtaVerificationError as e:
            raise reject(
                RejectionCode.DIRECTOR_IMAGE_MISMATCH,
                f"not what the image repository vouches for ({e})",
            ) from e
        slot: Slot = (custom.image_kind, custom.ecu_id)
        if slot in seen:
            raise reject(
                RejectionCode.INVALID_METADATA,
                f"{_slot_text(slot)} is assigned twice (also {seen[slot]})",
            )
        seen[slot] = name
        current = _installed_counter(installed, slot)
        if current is not None and custom.release_counter < current:
            raise reject(
                RejectionCode.DOWNGRADE,
                f"release counter {custom.release_counter} is lower than the "
                f"{current} installed on {_slot_text(slot)}",
            )
        planned.append(
            PlannedTarget(name, assigned.length, MappingProxyType(dict(assigned.hashes)), custom)
        )
    return tuple(planned)


def role_of_url(url: str) -> str:
    """The TUF role a metadata URL names (``…/3.snapshot.json`` → ``snapshot``), else
    ``"target"``."""
    last = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    m = _METADATA_NAME.fullmatch(last)
    return m.group(1) if m else "target"


def classify_tuf_error(
    error: Exception, *, repository: str, role: str | None
) -> UpdateRejectedError | UpdateUnavailableError | OtaIOError:
    """python-tuf's (and the fetcher's) *error* as one of ours, with the rejection code of the
    attack it reveals. *role* is the role (or ``"target"``) being fetched when it was raised.

    Timestamp and snapshot versions lower than trusted, a new root numbered wrongly, targets
    listed at a lower version → ``rollback``; expired → ``freeze``; a snapshot or targets file
    that is not what the role above lists → ``mix_and_match``; no valid signature →
    ``bad_signature``, some but too few → ``threshold``, a new root failing either →
    ``key_rotation``; more bytes than allowed → ``endless_data``; too slow →
    ``slow_retrieval``; a target's bytes not matching its hashes → ``bad_hash``.
    """
    message = str(error) or type(error).__name__
    where = f"{repository} repository" + (f", {role}" if role else "")

    def rejected(code: RejectionCode, reason: str) -> UpdateRejectedError:
        return UpdateRejectedError(code, f"{where}: {reason}", repository=repository, role=role)

    if isinstance(error, exceptions.ExpiredMetadataError):
        return rejected(RejectionCode.FREEZE, f"{message} (a frozen or stale repository state)")
    if isinstance(error, exceptions.UnsignedMetadataError):
        if role == "root":
            return rejected(
                RejectionCode.KEY_ROTATION,
                f"a new root version is not signed by a threshold of the trusted root's keys "
                f"and of its own ({message})",
            )
        m = _SIGNED_BY.search(message)
        if m and 0 < int(m.group(1)) < int(m.group(2)):
            return rejected(RejectionCode.THRESHOLD, f"too few valid signatures: {message}")
        return rejected(RejectionCode.BAD_SIGNATURE, f"no valid signature: {message}")
    if isinstance(error, exceptions.BadVersionNumberError):
        # ngclient raises it for versions lower than trusted (rollback) and for a file whose
        # version differs from the one the role above lists (files of different states).
        mismatch = (role == "snapshot" and "Expected snapshot version" in message) or (
            role not in ("root", "timestamp", "snapshot") and message.startswith("Expected ")
        )
        if mismatch:
            return rejected(
                RejectionCode.MIX_AND_MATCH,
                f"not the version the role above lists: {message}",
            )
        return rejected(RejectionCode.ROLLBACK, f"older than already trusted: {message}")
    if isinstance(error, exceptions.LengthOrHashMismatchError):
        if role == "target":
            return rejected(RejectionCode.BAD_HASH, f"the bytes do not match: {message}")
        return rejected(
            RejectionCode.MIX_AND_MATCH,
            f"not the file the role above lists (length or hash differ): {message}",
        )
    if isinstance(error, exceptions.DownloadLengthMismatchError):
        return rejected(RejectionCode.ENDLESS_DATA, message)
    if isinstance(error, exceptions.SlowRetrievalError):
        return rejected(RejectionCode.SLOW_RETRIEVAL, message)
    if isinstance(error, exceptions.DownloadError):
        return UpdateUnavailableError(f"{where}: {message}", repository=repository, role=role)
    if isinstance(error, exceptions.RepositoryError):
        if message.startswith("New snapshot is missing info"):
            return rejected(RejectionCode.ROLLBACK, f"a role was dropped: {message}")
        return rejected(RejectionCode.INVALID_METADATA, message)
    if isinstance(error, OSError):
        return OtaIOError(f"{where}: cannot write the metadata cache: {error.strerror or error}")
    raise TypeError(f"not a python-tuf error: {error!r}")


# --- the ngclient seam ----------------------------------------------------------------------------


class RecordingFetcher(ResumableFetcher):
    """A :class:`ResumableFetcher` that remembers the last URL requested (to name the role a
    python-tuf error is about)."""

    last_url: str | None = None

    def last_role(self) -> str | None:
        """The role (or ``"target"``) of the last URL requested, if any."""
        return None if self.last_url is None else role_of_url(self.last_url)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """As :meth:`ResumableFetcher.download_file`, remembering *url*."""
        self.last_url = url
        with super().download_file(url, max_length) as f:
            yield f


class DurableUpdater(Updater):
    """ngclient's ``Updater`` checking expiry at *reference_time* and writing its metadata cache
    durably (crash point ``update_client.metadata_written``).

    Construction errors (an unreadable or unverifiable trusted root) are python-tuf's own; see
    :func:`open_updater` for ours.
    """

    def __init__(
        self,
        metadata_dir: Path,
        metadata_url: str,
        *,
        bootstrap: bytes | None,
        fetcher: ResumableFetcher,
        config: UpdaterConfig,
        reference_time: datetime,
        target_dir: Path | None = None,
        target_base_url: str | None = None,
    ) -> None:
        super().__init__(
            str(metadata_dir),
            metadata_url,
            None if target_dir is None else str(target_dir),
            target_base_url,
            fetcher,
            config,
            bootstrap=bootstrap,
        )
        # ngclient reads the clock once, when the Updater is made, and checks every expiry
        # against that; replacing it before refresh() makes it check at the trusted time.
        self._trusted_set.reference_time = reference_time

    @property
    def reference_time(self) -> datetime:
        """The time expiry is checked at."""
        when: datetime = self._trusted_set.reference_time
        return when

    def trusted_targets(self) -> Targets:
        """The verified top-level targets metadata (after :meth:`refresh`)."""
        return self._trusted_set.targets

    def _persist_file(self, filename: str, data: bytes) -> None:
        # ngclient renames without fsync: a power cut could lose the cached timestamp and
        # snapshot that rollback protection compares new versions with.
        write_durably(Path(filename), data, written=METADATA_WRITTEN)


def open_updater(
    metadata_dir: Path,
    metadata_url: str,
    *,
    bootstrap: bytes | None,
    fetcher: ResumableFetcher,
    config: UpdaterConfig,
    reference_time: datetime,
    repository: str,
    target_dir: Path | None = None,
    target_base_url: str | None = None,
) -> DurableUpdater:
    """A :class:`DurableUpdater`; errors as ours, naming *repository*."""
    try:
        metadata_dir.mkdir(parents=True, exist_ok=True)
        return DurableUpdater(
            metadata_dir,
            metadata_url,
            bootstrap=bootstrap,
            fetcher=fetcher,
            config=config,
            reference_time=reference_time,
            target_dir=target_dir,
            target_base_url=target_base_url,
        )
    except exceptions.RepositoryError as e:
        raise OtaInputError(
            f"{repository} repository: the trusted root does not verify: {e}"
        ) from e
    except OSError as e:
        raise OtaIOError(
            f"{repository} repository: cannot use metadata directory {metadata_dir}: "
            f"{e.strerror or e}"
        ) from e


@contextlib.contextmanager
def tuf_errors(
    repository: str, fetcher: RecordingFetcher, role: str | None = None
) -> Iterator[None]:
    """Turn python-tuf's errors raised inside the block into ours (:func:`classify_tuf_error`).

    The role is *role*, or else the one the fetcher last requested.
    """
    fetcher.last_url = None
    try:
        yield
    except (exceptions.RepositoryError, exceptions.DownloadError, OSError) as e:
        named = role if role is not None else fetcher.last_role()
        if isinstance(e, exceptions.ExpiredMetadataError):
            # The message names the expired role; the last URL may be the next one's.
            m = re.search(r"(root|timestamp|snapshot|targets)", str(e))
            named = m.group(1) if m else named
        raise classify_tuf_error(e, repository=repository, role=named) from e


# --- the driver -----------------------------------------------------------------------------------


class UpdateClient:
    """One vehicle's update client (see the module doc).

    *installed* gives the installed release counters used when :meth:`check` is called without
    them; *clock* overrides the system clock (tests); *fetcher* the fetcher (tests). One call
    at a time: the methods block (run them in a thread, or use the ``*_async`` wrappers) and
    share one fetcher and one state directory.
    """

    def __init__(
        self,
        config: UpdateClientConfig,
        *,
        installed: InstalledCounters | None = None,
        clock: Callable[[], datetime] | None = None,
        fetcher: RecordingFetcher | None = None,
    ) -> None:
        self.config = config
        self.installed: InstalledCounters = installed if installed is not None else {}
        self.fetcher = fetcher if fetcher is not None else config.new_fetcher()
        time_options: dict[str, Any] = {}
        if clock is not None:
            time_options["clock"] = clock
        self.clock = TrustedClock(
            config.time_floor_file,
            tolerance=config.clock_tolerance,
            not_before=config.not_before,
            **time_options,
        )
        self._roots: dict[Repository, bytes] = {}

    # --- public API -------------------------------------------------------------------------------

    def check(self, installed: InstalledCounters | None = None) -> UpdatePlan:
        """Refresh both repositories and return the verified plan.

        Raises :class:`UpdateRejectedError` (with its code) when anything does not verify,
        :class:`UpdateUnavailableError` when a repository cannot be reached. Nothing is
        downloaded but metadata.
        """
        reference = self.clock.reference_time()
        director = self._refreshed(Repository.DIRECTOR, reference)
        image = self._refreshed(Repository.IMAGE, reference)
        self.clock.record(reference)
        director_targets = director.trusted_targets()
        image_targets: dict[str, TargetFile | None] = {}
        for name in director_targets.targets:
            with tuf_errors("image", self.fetcher):
                # get_targetinfo walks the image repository's delegations, if it has any.
                image_targets[name] = image.get_targetinfo(name)
        targets = verify_assignments(
            director_targets.targets,
            image_targets,
            config=self.config,
            installed=self.installed if installed is None else installed,
        )
        return UpdatePlan(
            self.config.vehicle_id,
            targets,
            director_targets.version,
            image.trusted_targets().version,
            reference,
        )

    def download(
        self, target: PlannedTarget, dest: Path, *, progress: Progress | None = None
    ) -> Path:
        """Download *target* from the image repository to *dest*; the verified path.

        The image repository is refreshed first and must still list the target identically.
        The bytes are checked against the length and hashes before *dest* appears (written
        under a temporary name beside it, fsynced, renamed). A download interrupted — even by
        a power cut — resumes where its journal says on the next call; a *dest* (or its
        temporary file) that already holds the target is not fetched again. *progress* is
        called with ``(bytes received in this call, target length)`` as bytes arrive.
        """
        tuf_target = target.target_file()
        if holds_target(dest, tuf_target):
            return dest
        self._place(tuf_target, dest, lambda partial: self._download_to(target, partial, progress))
        return dest

    def download_listed(
        self,
        name: str,
        dest: Path,
        *,
        max_length: int | None = None,
        progress: Progress | None = None,
    ) -> TargetFile:
        """Download target *name* as the image repository lists it now to *dest*, verified;
        its listing (length and hashes from the signed metadata).

        For targets no director assigns: a delta's patch, named by the ``delta`` custom field
        of a verified target. Written, resumed and reported as by :meth:`download`. Refused
        with :class:`UpdateRejectedError`: a name the repository does not list
        (``invalid_metadata``), a target longer than *max_length* or ``max_target_bytes``
        (``endless_data``, before any byte of it is fetched).
        """
        reference = self.clock.reference_time()
        image = self._refreshed(Repository.IMAGE, reference)
        self.clock.record(reference)
        with tuf_errors("image", self.fetcher):
            listed = image.get_targetinfo(name)
        if listed is None:
            raise UpdateRejectedError(
                RejectionCode.INVALID_METADATA,
                f"target {name}: the image repository does not list it",
                repository="image",
                role=name,
            )
        limit = self.config.max_target_bytes
        if max_length is not None:
            limit = min(limit, max_length)
        if listed.length > limit:
            raise UpdateRejectedError(
                RejectionCode.ENDLESS_DATA,
                f"target {name}: {listed.length:,} bytes is more than the {limit:,} allowed",
                repository="image",
                role=name,
            )
        if not holds_target(dest, listed):
            self._place(listed, dest, lambda partial: self._fetch(image, listed, partial, progress))
        return listed

    async def check_async(self, installed: InstalledCounters | None = None) -> UpdatePlan:
        """:meth:`check` in a worker thread."""
        return await asyncio.to_thread(self.check, installed)

    async def download_async(
        self, target: PlannedTarget, dest: Path, *, progress: Progress | None = None
    ) -> Path:
        """:meth:`download` in a worker thread."""
        return await asyncio.to_thread(lambda: self.download(target, dest, progress=progress))

    # --- plumbing ---------------------------------------------------------------------------------

    def _trusted_root(self, repository: Repository) -> bytes:
        if repository not in self._roots:
            path = (
                self.config.director_root
                if repository is Repository.DIRECTOR
                else self.config.image_root
            )
            try:
                self._roots[repository] = path.read_bytes()
            except FileNotFoundError as e:
                raise OtaUsageError(f"{repository} trusted root {path}: no such file") from e
            except OSError as e:
                raise OtaIOError(
                    f"cannot read {repository} trusted root {path}: {e.strerror or e}"
                ) from e
        return self._roots[repository]

    def _place(self, target: TargetFile, dest: Path, fetch: Callable[[Path], None]) -> None:
        """Have *fetch* write *target* to a temporary file beside *dest* (unless it holds it
        already), then rename it to *dest* durably."""
        partial = dest.with_name(f".{dest.name}.partial")
        try:
            if not holds_target(partial, target):
                fetch(partial)
            _sync_file(partial)
            TARGET_WRITTEN.hit()
            partial.replace(dest)
            fsync_dir(dest.parent)
        except OSError as e:
            raise OtaIOError(
                f"cannot write target {target.path} to {dest}: {e.strerror or e}"
            ) from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    def _fetch(
        self, image: DurableUpdater, target: TargetFile, path: Path, progress: Progress | None
    ) -> None:
        """ngclient's download of verified *target* to *path*, reporting bytes received."""
        path.parent.mkdir(parents=True, exist_ok=True)
        received = 0

        def on_bytes(count: int) -> None:
            nonlocal received
            received += count
            if progress is not None:
                progress(min(received, target.length), target.length)

        self.fetcher.on_bytes = on_bytes
        try:
            with tuf_errors("image", self.fetcher, role="target"):
                # ngclient downloads through our fetcher (resumable) and checks length and
                # hashes before it writes a byte to *path*.
                image.download_target(target, str(path), self.config.image_targets_url)
        finally:
            self.fetcher.on_bytes = None

    def _download_to(self, target: PlannedTarget, path: Path, progress: Progress | None) -> None:
        if target.length > self.config.max_target_bytes:
            raise UpdateRejectedError(
                RejectionCode.ENDLESS_DATA,
                f"target {target.name}: {target.length:,} bytes is more than the "
                f"{self.config.max_target_bytes:,} allowed",
                repository="image",
                role=target.name,
            )
        reference = self.clock.reference_time()
        image = self._refreshed(Repository.IMAGE, reference)
        self.clock.record(reference)
        with tuf_errors("image", self.fetcher):
            vouched = image.get_targetinfo(target.name)
        if vouched is None or (vouched.length, vouched.hashes) != (target.length, target.hashes):
            raise UpdateRejectedError(
                RejectionCode.DIRECTOR_IMAGE_MISMATCH,
                f"target {target.name}: the image repository "
                + ("no longer lists it" if vouched is None else "now lists other length or hashes"),
                repository="image",
                role=target.name,
            )
        self._fetch(image, vouched, path, progress)

    def _refreshed(self, repository: Repository, reference: datetime) -> DurableUpdater:
        # A new Updater per refresh: ngclient refreshes once per instance. Always bootstrapped
        # from the provisioned root; newer roots come from the (durable) local root history,
        # each verified by its predecessor again.
        url = (
            self.config.director_metadata_url
            if repository is Repository.DIRECTOR
            else self.config.image_metadata_url
        )
        updater = open_updater(
            self.config.metadata_dir(repository),
            url,
            bootstrap=self._trusted_root(repository),
            fetcher=self.fetcher,
            config=self.config.updater_config(),
            reference_time=reference,
            repository=repository.value,
        )
        with tuf_errors(repository.value, self.fetcher):
            updater.refresh()
        return updater


def holds_target(path: Path, target: TargetFile) -> bool:
    """Whether the file *path* exists and has *target*'s length and hashes (blocking: reads
    the whole file)."""
    try:
        with path.open("rb") as f:
            target.verify_length_and_hashes(f)
    except (OSError, exceptions.LengthOrHashMismatchError):
        return False
    return True


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
