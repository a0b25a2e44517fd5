"""The operations of ``tbox ota repo``: load a repository directory, decide, publish.

A thin driver: it reads settings, keys and metadata (:mod:`ota.repository_config`,
:mod:`ota.keys`, :mod:`ota.repository_files`), asks the pure decisions of
:mod:`ota.repository` and :mod:`ota.director` for new metadata and writes what changed, holding
the directory's lock throughout.

Two kinds of directory (Uptane's two repositories, see docs/adr/0007)::

    image/                                    director/
      repository.toml                           repository.toml
      metadata/…  targets/…                     metadata/N.root.json, root.json   (fleet root)
                                                vehicles/<vehicle id>/metadata/…  (one TUF
                                                  repository per vehicle under the fleet root)

Usage::

    image = RepositoryDirectory.init(Path("image"), RepositoryKind.IMAGE)
    image.add_target(Path("fw.bin"), name="bms/fw-12.bin", custom=TargetCustom(...))
    image.add_delta_target(Path("fw13.bin"), base=Path("fw.bin"), name="bms/fw-13.bin",
                           custom=TargetCustom(...))   # + patch target bms/fw-13.bin.from-….bsdiff4
    director = RepositoryDirectory.init(Path("director"), RepositoryKind.DIRECTOR)
    director.assign(image, vehicle_id="VIN1", target_name="bms/fw-12.bin", ecu_id="bms")
    image.refresh(timestamp_only=True)       # the daily job of the online timestamp key
    image.rotate_key("targets")               # new targets key; root v+1 signed by old and new
    image.describe()                          # JSON-ready summary for `show`

Every method that signs uses the keys found in the ``--keys`` directories given to the
constructor, then in the directory named by ``repository.toml``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, Root, TargetFile

from ota import director as director_decisions
from ota import repository as decisions
from ota.errors import (
    OtaInputError,
    OtaIOError,
    OtaUsageError,
    OtaVerificationError,
    SigningKeyError,
)
from ota.keys import KeyStore, new_key
from ota.repository import ROLES, RepositoryMetadata
from ota.repository_config import (
    CONFIG_NAME,
    DEFAULT_EXPIRY_DAYS,
    MAX_EXPIRY_DAYS,
    RepositoryConfig,
    RepositoryKind,
    format_config,
    parse_config,
)
from ota.repository_files import MetadataDir, TargetsDir, locked
from ota.target_info import DeltaDescriptor, TargetCustom, check_target_name, make_target_file

__all__ = ["DEFAULT_RESIGN_WITHIN", "RepositoryDirectory", "default_keys_dir"]

#: ``resign`` without roles re-signs what expires within this time: run it at least daily.
DEFAULT_RESIGN_WITHIN = timedelta(days=1)

_MAX_KEYS_PER_ROLE = 32
_T = TypeVar("_T")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def default_keys_dir(repository: Path) -> Path:
    """``<repository>.keys`` next to the repository, outside the directory a server serves."""
    resolved = repository.resolve()
    return resolved.with_name(resolved.name + ".keys")


class RepositoryDirectory:
    """A repository directory made by :meth:`init`: its settings, keys and operations.

    *keys* are extra key directories searched first (offline media); *clock* gives the time
    expiries are counted from.
    """

    def __init__(
        self,
        path: Path,
        *,
        keys: Sequence[Path] = (),
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.path = path
        config_path = path / CONFIG_NAME
        try:
            text = config_path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise OtaUsageError(
                f"{path} is not an update repository (no {CONFIG_NAME}); create one with "
                "`tbox ota repo init`"
            ) from e
        except (OSError, UnicodeDecodeError) as e:
            raise OtaInputError(f"cannot read {config_path}: {e}") from e
        self.config = parse_config(text, source=str(config_path))
        self._clock = clock
        for d in keys:
            if not d.is_dir():
                raise OtaUsageError(f"--keys {d}: no such directory")
        self.keys = KeyStore([*keys, self.config.keys_dir(path)])

    @property
    def kind(self) -> RepositoryKind:
        """Image or director repository."""
        return self.config.kind

    # --- creating ------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: Path,
        kind: RepositoryKind,
        *,
        keys: Path | None = None,
        thresholds: Mapping[str, int] | None = None,
        expires_days: Mapping[str, int] | None = None,
        vehicle_ids: Sequence[str] = (),
        clock: Callable[[], datetime] = _utc_now,
    ) -> RepositoryDirectory:
        """Create a repository at *path* (absent or empty) with new keys in *keys*.

        Each role gets as many new Ed25519 keys as its threshold (default 1); *keys* defaults
        to :func:`default_keys_dir`. A director starts with its fleet root and an empty
        repository for each of *vehicle_ids*.
        """
        thresholds = dict(thresholds or {})
        days = dict(DEFAULT_EXPIRY_DAYS)
        for role, value in (expires_days or {}).items():
            _check_role(role)
            if not 1 <= value <= MAX_EXPIRY_DAYS:
                raise OtaUsageError(f"--expires {role}: {value} days is not between 1 and 36500")
            days[role] = value
        for role, n in thresholds.items():
            _check_role(role)
            if not 1 <= n <= _MAX_KEYS_PER_ROLE:
                raise OtaUsageError(f"--threshold {role}: {n} is not between 1 and 32")
        if kind is not RepositoryKind.DIRECTOR and vehicle_ids:
            raise OtaUsageError("--vehicle-id applies to a director repository only")
        for vehicle_id in vehicle_ids:
            director_decisions.check_vehicle_id(vehicle_id)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise OtaUsageError(f"{path} exists and is not an empty directory")
        keys_dir = (keys if keys is not None else default_keys_dir(path)).resolve()
        if keys_dir.is_relative_to(path.resolve()):
            raise OtaUsageError(
                f"keys directory {keys_dir} is inside the repository, which is published: "
                "keep private keys outside it"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OtaIOError(f"cannot create {path}: {e.strerror or e}") from e
        config = RepositoryConfig(
            kind=kind,
            keys=Path(os.path.relpath(keys_dir, path.resolve())),
            expires_days=days,
        )
        _write_file(path / CONFIG_NAME, format_config(config).encode())
        repository = cls(path, clock=clock)
        store = repository.keys
        role_keys = {
            role: [
                store.generate(role, online=config.is_online(role)).public_key
                for _ in range(thresholds.get(role, 1))
            ]
            for role in ROLES
        }
        now = clock()
        root = decisions.sign_root(
            decisions.new_root(
                role_keys, thresholds, expires=decisions.expires_at(now, config.period("root"))
            ),
            store.signers(),
        )
        with locked(path):
            if kind is RepositoryKind.IMAGE:
                repo = decisions.create_repository(root, store.signers(), config.periods(), now)
                repository._metadata().save(repo, None)
                try:
                    (path / "targets").mkdir(exist_ok=True)
                except OSError as e:
                    raise OtaIOError(f"cannot create {path / 'targets'}: {e.strerror}") from e
            else:
                repository._metadata().write_root(root)
                for vehicle_id in vehicle_ids:
                    repository._create_vehicle(vehicle_id)
        return repository

    # --- image repository ----------------------------------------------------------------------

    def add_target(
        self, source: Path, *, name: str, custom: TargetCustom, sha512: bool = False
    ) -> tuple[TargetFile, list[str]]:
        """Publish file *source* as target *name*; the target and the files written.

        A ``custom.delta`` must name a patch target already in the repository.
        """
        self._require(RepositoryKind.IMAGE, "add-target")
        check_target_name(name)
        with locked(self.path):
            metadata = self._metadata()
            old = metadata.load()
            if custom.delta is not None and custom.delta.patch not in old.targets.signed.targets:
                raise OtaUsageError(
                    f"delta patch {custom.delta.patch!r} is not a target of this repository; "
                    "add the patch first"
                )
            target = self._targets_dir().import_file(
                source, lambda f: make_target_file(name, f, custom, sha512=sha512)
            )
            new = self._decide(partial(decisions.add_target, old, target))
            return target, self._rel(metadata, metadata.save(new, old))

    def add_delta_target(
        self,
        source: Path,
        *,
        base: Path,
        name: str,
        custom: TargetCustom,
        patch_name: str | None = None,
        sha512: bool = False,
    ) -> tuple[TargetFile, TargetFile, list[str]]:
        """Publish file *source* as target *name* with a bsdiff4 delta from image file *base*;
        the image's target, the patch's target and the files written.

        The patch is computed here (:func:`ota.delta.make_delta`, in memory; slow for large
        images), checked by applying it, and published as target *patch_name* (default
        ``<name>.from-<base sha256, 12 digits>.bsdiff4``, with *custom*'s fields) in the same
        targets version as the image, whose ``custom.delta`` names it. Refused
        (:class:`OtaUsageError`) when the patch is not smaller than the image.
        """
        from ota.delta import apply_delta, make_delta

        self._require(RepositoryKind.IMAGE, "add-target")
        check_target_name(name)
        if custom.delta is not None:
            raise OtaUsageError("give either a delta descriptor or a base image, not both")
        old_image = _read_image(base, "delta base")
        new_image = _read_image(source, "image")
        base_sha256 = hashlib.sha256(old_image).hexdigest()
        image_sha256 = hashlib.sha256(new_image).hexdigest()
        if patch_name is None:
            patch_name = f"{name}.from-{base_sha256[:12]}.bsdiff4"
        check_target_name(patch_name)
        if patch_name == name:
            raise OtaUsageError(f"the delta patch cannot be named like the image ({name!r})")
        patch = make_delta(old_image, new_image)
        if len(patch) >= len(new_image):
            raise OtaUsageError(
                f"the delta from {base} is {len(patch):,} bytes, not smaller than the image "
                f"({len(new_image):,} bytes): publish the image without a delta"
            )
        # The vehicle's own check, here: a patch that does not rebuild the image is never signed.
        apply_delta(
            old_image,
            patch,
            target_sha256=image_sha256,
            target_length=len(new_image),
            base_sha256=base_sha256,
        )
        del old_image, new_image
        image_custom = dataclasses.replace(
            custom, delta=DeltaDescriptor(from_sha256=base_sha256, patch=patch_name)
        )
        with locked(self.path):
            metadata = self._metadata()
            old = metadata.load()
            patch_target = self._import_bytes(
                patch, lambda f: make_target_file(patch_name, f, custom, sha512=sha512)
            )
            target = self._targets_dir().import_file(
                source, lambda f: make_target_file(name, f, image_custom, sha512=sha512)
            )
            if target.hashes["sha256"] != image_sha256:
                raise OtaInputError(f"{source} changed while it was being published")
            new = self._decide(partial(_add_targets, old, (patch_target, target)))
            return target, patch_target, self._rel(metadata, metadata.save(new, old))

    def remove_target(self, name: str) -> list[str]:
        """Stop listing target *name* (its file stays for clients mid-download)."""
        self._require(RepositoryKind.IMAGE, "remove-target")
        with locked(self.path):
            metadata = self._metadata()
            old = metadata.load()
            new = self._decide(partial(decisions.remove_target, old, name))
            return self._rel(metadata, metadata.save(new, old))

    def verified_target(self, name: str) -> TargetFile:
        """Target *name* of this image repository, after checking that the repository verifies
        (signatures, thresholds, versions, hashes) and that its file is published."""
        self._require(RepositoryKind.IMAGE, "image-repo")
        metadata = self._metadata()
        repo = metadata.load()
        try:
            decisions.verify_repository(repo, metadata.published_bytes(repo))
        except OtaVerificationError as e:
            raise OtaVerificationError(f"image repository {self.path}: {e}") from e
        target = repo.targets.signed.targets.get(name)
        if target is None:
            raise OtaUsageError(f"image repository {self.path} has no target {name!r}")
        if not self._targets_dir().has(target):
            raise OtaInputError(
                f"image repository {self.path} lists {name!r} but its file "
                f"{self._targets_dir().paths_of(target)[0]} is missing or of the wrong length"
            )
        return target

    # --- director repository -------------------------------------------------------------------

    def vehicle_ids(self) -> list[str]:
        """The vehicles this director has a repository for, sorted."""
        self._require(RepositoryKind.DIRECTOR, "vehicles")
        vehicles = self.path / "vehicles"
        try:
            return sorted(p.name for p in vehicles.iterdir() if (p / "metadata").is_dir())
        except FileNotFoundError:
            return []
        except OSError as e:
            raise OtaIOError(f"cannot list {vehicles}: {e.strerror or e}") from e

    def add_vehicle(self, vehicle_id: str) -> list[str]:
        """Create *vehicle_id*'s repository (no assignments); the files written."""
        self._require(RepositoryKind.DIRECTOR, "add-vehicle")
        director_decisions.check_vehicle_id(vehicle_id)
        with locked(self.path):
            if vehicle_id in self.vehicle_ids():
                raise OtaUsageError(f"vehicle {vehicle_id} exists already")
            return self._create_vehicle(vehicle_id)

    def assign(
        self,
        image: RepositoryDirectory,
        *,
        vehicle_id: str,
        target_name: str,
        ecu_id: str | None = None,
    ) -> tuple[TargetFile, list[str]]:
        """Assign *image*'s target *target_name* to *vehicle_id* (and ECU *ecu_id*).

        The vehicle's repository is created on first use; the entry replaces whatever occupied
        the same slot (:func:`ota.director.assign`). Returns the entry and the files written.
        """
        self._require(RepositoryKind.DIRECTOR, "assign")
        image_target = image.verified_target(target_name)
        entry = director_decisions.assignment_for(
            image_target, vehicle_id=vehicle_id, ecu_id=ecu_id
        )
        with locked(self.path):
            written: list[str] = []
            if vehicle_id not in self.vehicle_ids():
                written += self._create_vehicle(vehicle_id)
            metadata, old = self._vehicle(vehicle_id, written)
            new = self._decide(partial(director_decisions.assign, old, entry))
            return entry, written + self._rel(metadata, metadata.save(new, old))

    def unassign(self, *, vehicle_id: str, target_name: str) -> list[str]:
        """Withdraw the assignment of *target_name* from *vehicle_id*; the files written."""
        self._require(RepositoryKind.DIRECTOR, "unassign")
        with locked(self.path):
            self._check_vehicle_exists(vehicle_id)
            written: list[str] = []
            metadata, old = self._vehicle(vehicle_id, written)
            new = self._decide(partial(director_decisions.unassign, old, target_name))
            return written + self._rel(metadata, metadata.save(new, old))

    # --- maintenance ---------------------------------------------------------------------------

    def refresh(
        self, *, timestamp_only: bool = False, vehicle_ids: Sequence[str] | None = None
    ) -> list[str]:
        """New snapshot (unless *timestamp_only*) and timestamp versions; the files written.

        A director refreshes every vehicle, or those in *vehicle_ids*.
        """
        with locked(self.path):
            written: list[str] = []
            for metadata, old in self._scopes(vehicle_ids, written):
                new = self._decide(partial(decisions.refresh, old, snapshot=not timestamp_only))
                written += self._rel(metadata, metadata.save(new, old))
            return written

    def resign(
        self,
        roles: Sequence[str] = (),
        *,
        within: timedelta = DEFAULT_RESIGN_WITHIN,
        vehicle_ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Re-sign *roles*, or without roles every role expiring within *within*.

        Each gets a new version with a fresh expiry, and the roles listing it follow.
        """
        for role in roles:
            _check_role(role)
        with locked(self.path):
            written: list[str] = []
            now = self._clock()
            root = self._root()
            if "root" in roles or (not roles and root.signed.expires <= now + within):
                written += self._publish_root(
                    self._decide(
                        lambda signers, periods, now: decisions.resign_root(
                            root, signers, periods["root"], now
                        )
                    )
                )
            for metadata, old in self._scopes(vehicle_ids, written):
                due = [r for r in roles if r != "root"] or [
                    r for r in decisions.expiring_roles(old, now, within) if r != "root"
                ]
                if not due:
                    continue
                new = self._decide(partial(decisions.resign, old, due))
                written += self._rel(metadata, metadata.save(new, old))
            return written

    def rotate_key(self, role: str, *, revoke: Sequence[str] = ()) -> tuple[list[str], list[str]]:
        """Replace *role*'s keys *revoke* (default all) with as many new ones.

        The new root version is signed by the old and the new root keys; roles signed by the
        rotated keys get new versions, signed during the transition by old and new keys where
        the old ones are at hand. The old key files move to ``revoked/``. Returns the new key
        ids and the files written.
        """
        _check_role(role)
        with locked(self.path):
            root = self._root()
            current = root.signed.roles[role].keyids
            chosen = [_full_keyid(k, current, role) for k in revoke] or list(current)
            fresh = [new_key() for _ in chosen]
            now = self._clock()
            new_root = decisions.rotate_keys(
                root.signed,
                role,
                revoke=chosen,
                add=[s.public_key for s in fresh],
                expires=decisions.expires_at(now, self.config.period("root")),
            )
            written = self._publish_new_keys(root, new_root, role, fresh)
            for keyid in chosen:
                if not any(keyid in r.keyids for r in new_root.roles.values()):
                    self.keys.retire(keyid)  # still trusted for another role: keep it
            return [s.public_key.keyid for s in fresh], written

    def set_threshold(
        self, role: str, threshold: int, *, add_keys: int = 0
    ) -> tuple[list[str], list[str]]:
        """Set *role*'s threshold, after adding *add_keys* new keys to it.

        Returns the new key ids and the files written.
        """
        _check_role(role)
        if not 0 <= add_keys <= _MAX_KEYS_PER_ROLE:
            raise OtaUsageError(f"--add-keys {add_keys} is not between 0 and 32")
        with locked(self.path):
            root = self._root()
            if threshold == root.signed.roles[role].threshold and not add_keys:
                raise OtaUsageError(f"{role}'s threshold is {threshold} already")
            fresh = [new_key() for _ in range(add_keys)]
            now = self._clock()
            new_root = decisions.change_threshold(
                root.signed,
                role,
                threshold,
                add=[s.public_key for s in fresh],
                expires=decisions.expires_at(now, self.config.period("root")),
            )
            written = self._publish_new_keys(root, new_root, role, fresh)
            return [s.public_key.keyid for s in fresh], written

    # --- reading -------------------------------------------------------------------------------

    def load(self, vehicle_id: str | None = None) -> RepositoryMetadata:
        """The current metadata (of *vehicle_id*'s repository for a director)."""
        if self.kind is RepositoryKind.IMAGE:
            if vehicle_id is not None:
                raise OtaUsageError("--vehicle-id applies to a director repository only")
            return self._metadata().load()
        if vehicle_id is None:
            raise OtaUsageError("a director repository has one repository per vehicle: name one")
        self._check_vehicle_exists(vehicle_id)
        return self._vehicle_metadata(vehicle_id).load(self._root())

    def metadata_path(self, vehicle_id: str | None = None) -> Path:
        """The ``metadata/`` directory clients fetch from (a director's: per vehicle)."""
        if vehicle_id is None:
            return self.path / "metadata"
        return self._vehicle_metadata(vehicle_id).path

    def describe(self, vehicle_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Everything `show` prints, as JSON-ready data.

        ``{"path", "kind", "keys", "root": role, "vehicles": {id: {"roles": {…}, "targets":
        {…}, "problems": […]}}}`` for a director; an image repository has ``roles``,
        ``targets`` and ``problems`` at the top. A role is ``{"version", "expires", "expired",
        "threshold", "signatures", "keys": [{"keyid", "scheme", "private_key"}]}``; a target
        ``{"length", "hashes", "custom"}``.
        """
        now = self._clock()
        root = self._root()
        data: dict[str, Any] = {
            "path": str(self.path),
            "kind": self.kind.value,
            "keys": [str(d) for d in self.keys.dirs],
        }
        if self.kind is RepositoryKind.IMAGE:
            data.update(self._describe_repo(self._metadata(), root, now))
            return data
        data["root"] = self._describe_role(root.signed, "root", root, now)
        chosen = self.vehicle_ids() if vehicle_ids is None else list(vehicle_ids)
        vehicles: dict[str, Any] = {}
        for vehicle_id in chosen:
            self._check_vehicle_exists(vehicle_id)
            vehicles[vehicle_id] = self._describe_repo(
                self._vehicle_metadata(vehicle_id), root, now
            )
        data["vehicles"] = vehicles
        return data

    # --- plumbing ------------------------------------------------------------------------------

    def _metadata(self) -> MetadataDir:
        return MetadataDir(self.path / "metadata")

    def _import_bytes(self, data: bytes, describe: Callable[[BinaryIO], TargetFile]) -> TargetFile:
        """Publish *data* (made here, e.g. a patch) as :meth:`TargetsDir.import_file` does."""
        try:
            fd, name = tempfile.mkstemp(prefix=".delta-", dir=self.path)  # hidden: never served
        except OSError as e:
            raise OtaIOError(f"cannot write in {self.path}: {e.strerror or e}") from e
        staged = Path(name)
        try:
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError as e:
                raise OtaIOError(f"cannot write {staged}: {e.strerror or e}") from e
            return self._targets_dir().import_file(staged, describe)
        finally:
            staged.unlink(missing_ok=True)

    def _targets_dir(self) -> TargetsDir:
        return TargetsDir(self.path / "targets")

    def _vehicle_metadata(self, vehicle_id: str) -> MetadataDir:
        director_decisions.check_vehicle_id(vehicle_id)
        return MetadataDir(self.path / "vehicles" / vehicle_id / "metadata")

    def _root(self) -> Metadata[Root]:
        return self._metadata().latest_root()

    def _require(self, kind: RepositoryKind, what: str) -> None:
        if self.kind is not kind:
            raise OtaUsageError(f"{what}: {self.path} is a {self.kind} repository, not {kind}")

    def _check_vehicle_exists(self, vehicle_id: str) -> None:
        if vehicle_id not in self.vehicle_ids():
            director_decisions.check_vehicle_id(vehicle_id)
            raise OtaUsageError(f"director {self.path} has no vehicle {vehicle_id!r}")

    def _signers(self) -> dict[str, Signer]:
        return self.keys.signers()

    def _decide(
        self, decision: Callable[[Mapping[str, Signer], Mapping[str, timedelta], datetime], _T]
    ) -> _T:
        """Run a signing decision with the keys at hand, the validity periods and the time."""
        try:
            return decision(self._signers(), self.config.periods(), self._clock())
        except SigningKeyError as e:
            raise SigningKeyError(f"{e} (keys looked for in {self.keys.describe()})") from e

    def _rel(self, metadata: MetadataDir, names: Sequence[str]) -> list[str]:
        return [str((metadata.path / n).relative_to(self.path)) for n in names]

    def _create_vehicle(self, vehicle_id: str) -> list[str]:
        fleet = self._metadata()
        metadata = self._vehicle_metadata(vehicle_id)
        written = self._rel(metadata, metadata.copy_root_history(fleet))
        repo = self._decide_create(fleet.latest_root())
        return written + self._rel(metadata, metadata.save(repo, None))

    def _decide_create(self, root: Metadata[Root]) -> RepositoryMetadata:
        return self._decide(partial(decisions.create_repository, root))

    def _vehicle(
        self, vehicle_id: str, written: list[str]
    ) -> tuple[MetadataDir, RepositoryMetadata]:
        """A vehicle's metadata, first brought up to the fleet root (after a crash or a rotation
        published to the fleet first), appending to *written* what that wrote."""
        fleet = self._metadata()
        metadata = self._vehicle_metadata(vehicle_id)
        current = metadata.load(metadata.latest_root())
        for version in [v for v in fleet.root_versions() if v > current.root.signed.version]:
            root = fleet.read_root(version)
            new = self._decide(partial(decisions.adopt_root, current, root))
            written += self._rel(metadata, metadata.save(new, current))
            current = new
        return metadata, current

    def _scopes(
        self, vehicle_ids: Sequence[str] | None, written: list[str]
    ) -> Iterator[tuple[MetadataDir, RepositoryMetadata]]:
        if self.kind is RepositoryKind.IMAGE:
            if vehicle_ids:
                raise OtaUsageError("--vehicle-id applies to a director repository only")
            metadata = self._metadata()
            yield metadata, metadata.load()
            return
        chosen = self.vehicle_ids() if vehicle_ids is None else list(vehicle_ids)
        for vehicle_id in chosen:
            self._check_vehicle_exists(vehicle_id)
        for vehicle_id in chosen:
            yield self._vehicle(vehicle_id, written)

    def _publish_root(self, root: Metadata[Root]) -> list[str]:
        """Publish the signed next root version and move every scope under it."""
        if self.kind is RepositoryKind.IMAGE:
            metadata = self._metadata()
            old = metadata.load()
            new = self._decide(partial(decisions.adopt_root, old, root))
            return self._rel(metadata, metadata.save(new, old))
        # Director: the fleet root first, so that a crash part-way leaves every vehicle to be
        # brought up to it by the next command (see _vehicle); then every vehicle now.
        written = self._rel(self._metadata(), self._metadata().write_root(root))
        for vehicle_id in self.vehicle_ids():
            self._vehicle(vehicle_id, written)
        return written

    def _publish_new_keys(
        self, root: Metadata[Root], new_root: Root, role: str, fresh: Sequence[CryptoSigner]
    ) -> list[str]:
        """Sign *new_root* (old and new keys), check that everything can be re-signed, store the
        new keys and publish. Nothing is written if any signature is missing."""
        written: list[str] = []
        scopes = list(self._scopes(None, written))  # a director's vehicles brought up to date
        signers = {**self._signers(), **{s.public_key.keyid: s for s in fresh}}
        try:
            signed_root = decisions.sign_root(new_root, signers, previous=root.signed)
            now = self._clock()
            for _, current in scopes:  # a dry run: fail before anything is written
                decisions.adopt_root(current, signed_root, signers, self.config.periods(), now)
        except SigningKeyError as e:
            raise SigningKeyError(f"{e} (keys looked for in {self.keys.describe()})") from e
        for signer in fresh:
            self.keys.store(signer, role, online=self.config.is_online(role))
        # The decisions above cannot see the new keys through self._signers() until stored.
        return written + self._publish_root(signed_root)

    def _describe_repo(
        self, metadata: MetadataDir, root: Metadata[Root], now: datetime
    ) -> dict[str, Any]:
        problems: list[str] = []
        try:
            repo = metadata.load(root)
        except OtaInputError as e:
            return {"roles": {}, "targets": {}, "problems": [str(e)]}
        try:
            decisions.verify_repository(repo, metadata.published_bytes(repo))
        except (OtaVerificationError, OtaInputError) as e:
            problems.append(str(e))
        for role in ROLES:
            if repo.role(role).signed.is_expired(now):
                problems.append(f"{role} expired at {_iso(repo.role(role).signed.expires)}")
        return {
            "roles": {r: self._describe_role(root.signed, r, repo.role(r), now) for r in ROLES},
            "targets": {
                name: {"length": t.length, "hashes": dict(t.hashes), "custom": t.custom}
                for name, t in sorted(repo.targets.signed.targets.items())
            },
            "problems": problems,
        }

    def _describe_role(
        self, root: Root, role: str, md: Metadata[Any], now: datetime
    ) -> dict[str, Any]:
        result = root.get_verification_result(role, md.signed_bytes, md.signatures)
        keys = []
        for keyid in root.roles[role].keyids:
            key = root.keys[keyid]
            path = self.keys.path_of(keyid) if _loadable(self.keys) else None
            keys.append(
                {
                    "keyid": keyid,
                    "scheme": key.scheme,
                    "private_key": None if path is None else str(path),
                }
            )
        return {
            "version": md.signed.version,
            "expires": _iso(md.signed.expires),
            "expired": md.signed.is_expired(now),
            "threshold": root.roles[role].threshold,
            "signatures": len(result.signed),
            "keys": keys,
        }


def _loadable(store: KeyStore) -> bool:
    # `show` works without usable keys (an unreadable key must not hide the repository).
    try:
        store.signers()
    except SigningKeyError:
        return False
    return True


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise OtaUsageError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")


def _full_keyid(prefix: str, keyids: Sequence[str], role: str) -> str:
    matches = [k for k in keyids if k.startswith(prefix.lower())]
    if len(prefix) < 8 or len(matches) != 1:
        shown = ", ".join(k[:12] for k in keyids)
        raise OtaUsageError(
            f"{prefix!r} names no single key of {role} (its keys: {shown}; give at least 8 "
            "hex digits)"
        )
    return matches[0]


def _add_targets(
    repo: RepositoryMetadata,
    targets: Sequence[TargetFile],
    signers: Mapping[str, Signer],
    periods: Mapping[str, timedelta],
    now: datetime,
) -> RepositoryMetadata:
    """*repo* with every one of *targets* listed, in one new targets version (as
    :func:`ota.repository.add_target` does for one: identical ones change nothing, a different
    one of a listed name is refused)."""
    listed = copy.deepcopy(repo.targets.signed)
    changed = False
    for target in targets:
        existing = listed.targets.get(target.path)
        if existing == target:
            continue
        if existing is not None:
            raise OtaUsageError(
                f"target {target.path!r} already exists with other content or fields; publish "
                "the new image under a new name"
            )
        listed.targets[target.path] = copy.deepcopy(target)
        changed = True
    if not changed:
        return repo
    return decisions.replace_targets(repo, listed, signers, periods, now)


def _read_image(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise OtaUsageError(f"{what} {path}: no such file") from e
    except IsADirectoryError as e:
        raise OtaUsageError(f"{what} {path}: is a directory, not a file") from e
    except OSError as e:
        raise OtaIOError(f"cannot read {what} {path}: {e.strerror or e}") from e


def _write_file(path: Path, data: bytes) -> None:
    from agent.durable_file import write_durably

    try:
        write_durably(path, data)
    except OSError as e:
        raise OtaIOError(f"cannot write {path}: {e.strerror or e}") from e
