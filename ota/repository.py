"""Decisions on a TUF repository's top-level metadata: pure functions, new metadata out.

Every function takes the current :class:`RepositoryMetadata` (root, targets, snapshot,
timestamp as python-tuf :class:`~tuf.api.metadata.Metadata`), the signers available (key id →
securesystemslib :class:`~securesystemslib.signer.Signer`), the validity period of each role and
the time *now*, and returns new metadata; nothing is read or written here (see
:mod:`ota.repository_files` for that) and the inputs are never modified.

Rules every decision keeps, so that python-tuf's ngclient accepts the result:

* a changed role gets version + 1 and a fresh expiry (*now* + its period);
* new targets → new snapshot (listing the targets version, length and sha256) → new timestamp
  (listing the snapshot's); a new snapshot → new timestamp;
* a new root version is signed by a threshold of the previous root's root keys *and* of its own;
* after a root change, every role whose keys or threshold changed is re-signed (then cascaded);
* metadata is signed with every available key of the role, in the new root and, during a
  rotation, the previous one too: the new timestamp/snapshot/targets then verify under both
  roots, so clients that have not yet fetched the new root are not locked out meanwhile;
* signing fails with :class:`~ota.errors.SigningKeyError` if fewer than the threshold of keys is
  available; nothing half-signed is returned.

Usage::

    root = sign_root(new_root(keys, thresholds, expires=now + periods["root"]), signers)
    repo = create_repository(root, signers, periods, now)
    repo = add_target(repo, target_file, signers, periods, now)
    repo = refresh(repo, signers, periods, now)                 # new snapshot + timestamp
    rotated = sign_root(rotate_keys(repo.root.signed, "timestamp", revoke=[old], add=[new],
                                    expires=now + periods["root"]), signers,
                        previous=repo.root.signed)
    repo = adopt_root(repo, rotated, signers, periods, now)    # re-signs timestamp
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from ota.errors import OtaUsageError, OtaVerificationError, SigningKeyError

__all__ = [
    "ROLES",
    "SERIALIZER",
    "RepositoryMetadata",
    "Signers",
    "add_target",
    "adopt_root",
    "change_threshold",
    "create_repository",
    "expires_at",
    "expiring_roles",
    "metadata_bytes",
    "new_root",
    "refresh",
    "remove_target",
    "replace_targets",
    "resign",
    "resign_root",
    "rotate_keys",
    "sign_role",
    "sign_root",
    "verify_repository",
]

#: TUF's top-level roles, in signing order.
ROLES: Final = ("root", "targets", "snapshot", "timestamp")

#: How metadata is written: indented, sorted keys. The bytes of a written file are never
#: produced again from a parsed copy: snapshot and timestamp hash the bytes signed here.
SERIALIZER: Final = JSONSerializer(compact=False)

#: Private keys available for signing, by key id.
Signers = Mapping[str, Signer]

_Role = TypeVar("_Role", Targets, Snapshot, Timestamp)


def metadata_bytes(md: Metadata[Any]) -> bytes:
    """The bytes *md* is published as."""
    return md.to_bytes(SERIALIZER)


def expires_at(now: datetime, period: timedelta) -> datetime:
    """*now* + *period*, to the second (TUF's date format has no fractions)."""
    return (now + period).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class RepositoryMetadata:
    """The current top-level metadata of one repository."""

    root: Metadata[Root]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]

    def role(self, name: str) -> Metadata[Any]:
        """The metadata of top-level role *name*."""
        if name not in ROLES:
            raise OtaUsageError(f"unknown role {name!r} (roles: {', '.join(ROLES)})")
        md: Metadata[Any] = getattr(self, name)
        return md

    def changed_roles(self, older: RepositoryMetadata) -> list[str]:
        """The roles whose version differs from *older*'s, in :data:`ROLES` order."""
        return [r for r in ROLES if self.role(r).signed.version != older.role(r).signed.version]


# --- signing -----------------------------------------------------------------------------------


def sign_role(
    signed: _Role, role: str, signers: Signers, *, roots: Sequence[Root]
) -> Metadata[_Role]:
    """*signed* signed with every available key of *role* in *roots* (the last one decides).

    :class:`SigningKeyError` if the last root's threshold for *role* is not met.
    """
    md = Metadata(signed)
    for keyid in _keyids(role, roots):
        if keyid in signers:
            md.sign(signers[keyid], append=True)
    result = roots[-1].get_verification_result(role, md.signed_bytes, md.signatures)
    if not result:
        raise SigningKeyError(
            f"{role}: {len(result.signed)} of the {result.threshold} signatures needed; no "
            f"private key for {_short_ids(result.unsigned)}"
        )
    return md


def sign_root(root: Root, signers: Signers, *, previous: Root | None = None) -> Metadata[Root]:
    """*root* signed by its own root keys and those of *previous* (its predecessor).

    :class:`SigningKeyError` unless both thresholds are met.
    """
    roots = [root] if previous is None else [previous, root]
    md = Metadata(root)
    for keyid in _keyids(Root.type, roots):
        if keyid in signers:
            md.sign(signers[keyid], append=True)
    try:
        result = root.get_root_verification_result(previous, md.signed_bytes, md.signatures)
    except ValueError as e:  # versions not consecutive: a bug of the caller, said plainly
        raise OtaUsageError(f"root: {e}") from e
    for which, part in (("previous root's", result.first), ("new root's", result.second)):
        if not part:
            raise SigningKeyError(
                f"root v{root.version}: {len(part.signed)} of the {part.threshold} signatures "
                f"the {which} root keys must give; no private key for {_short_ids(part.unsigned)}"
            )
    return md


def _keyids(role: str, roots: Sequence[Root]) -> list[str]:
    return list(dict.fromkeys(k for r in roots for k in r.roles[role].keyids))


def _short_ids(keys: Mapping[str, Key]) -> str:
    return ", ".join(k[:12] for k in keys) or "no key"


def _bumped(signed: _Role, expires: datetime) -> _Role:
    new = copy.deepcopy(signed)
    new.version += 1
    new.expires = expires
    return new


# --- creating ----------------------------------------------------------------------------------


def new_root(
    keys: Mapping[str, Sequence[Key]],
    thresholds: Mapping[str, int],
    *,
    expires: datetime,
) -> Root:
    """Version 1 of a root (unsigned) with consistent snapshots and *keys* per role.

    Every role needs keys, and a threshold (default 1) between 1 and its number of keys.
    """
    root = Root(expires=expires.replace(microsecond=0), consistent_snapshot=True)
    for role in ROLES:
        role_keys = keys.get(role, ())
        if not role_keys:
            raise OtaUsageError(f"{role}: no keys given")
        for key in role_keys:
            root.add_key(key, role)
        root.roles[role].threshold = _checked_threshold(
            role, thresholds.get(role, 1), len(root.roles[role].keyids)
        )
    return root


def create_repository(
    root: Metadata[Root], signers: Signers, periods: Mapping[str, timedelta], now: datetime
) -> RepositoryMetadata:
    """Version 1 of targets (no targets), snapshot and timestamp under the signed *root*."""
    roots = [root.signed]
    targets = sign_role(
        Targets(expires=expires_at(now, periods["targets"])), "targets", signers, roots=roots
    )
    snapshot = sign_role(
        Snapshot(
            expires=expires_at(now, periods["snapshot"]),
            meta={"targets.json": _meta_file(targets)},
        ),
        "snapshot",
        signers,
        roots=roots,
    )
    timestamp = sign_role(
        Timestamp(
            expires=expires_at(now, periods["timestamp"]), snapshot_meta=_meta_file(snapshot)
        ),
        "timestamp",
        signers,
        roots=roots,
    )
    return RepositoryMetadata(root, targets, snapshot, timestamp)


def _meta_file(md: Metadata[Any]) -> MetaFile:
    # Length and hash bound what a client downloads (endless-data attacks) and pin the bytes.
    return MetaFile.from_data(md.signed.version, metadata_bytes(md), ["sha256"])


# --- targets -----------------------------------------------------------------------------------


def add_target(
    repo: RepositoryMetadata,
    target: TargetFile,
    signers: Signers,
    periods: Mapping[str, timedelta],
    now: datetime,
) -> RepositoryMetadata:
    """*repo* with *target* listed (new targets, snapshot, timestamp).

    Adding a target identical to the listed one of that name changes nothing; a different one of
    the same name is refused (:class:`OtaUsageError`): clients cache by name, so a published
    name must keep meaning the same bytes.
    """
    existing = repo.targets.signed.targets.get(target.path)
    if existing is not None:
        if existing == target:
            return repo
        raise OtaUsageError(
            f"target {target.path!r} already exists with other content or fields; publish the "
            "new image under a new name"
        )
    targets = copy.deepcopy(repo.targets.signed)
    targets.targets[target.path] = copy.deepcopy(target)
    return replace_targets(repo, targets, signers, periods, now)


def remove_target(
    repo: RepositoryMetadata,
    name: str,
    signers: Signers,
    periods: Mapping[str, timedelta],
    now: datetime,
) -> RepositoryMetadata:
    """*repo* without target *name* (:class:`OtaUsageError` if it is not listed)."""
    if name not in repo.targets.signed.targets:
        raise OtaUsageError(f"no target named {name!r}")
    targets = copy.deepcopy(repo.targets.signed)
    del targets.targets[name]
    return replace_targets(repo, targets, signers, periods, now)


def replace_targets(
    repo: RepositoryMetadata,
    targets: Targets,
    signers: Signers,
    periods: Mapping[str, timedelta],
    now: datetime,
) -> RepositoryMetadata:
    """*repo* with *targets*' content as the next targets version (then snapshot, timestamp).

    *targets* is the edited content; its version and expiry are set here.
    """
    content = copy.deepcopy(targets)
    content.version = repo.targets.signed.version
    return _cascade(repo, signers, periods, now, targets=content)


# --- maintenance -------------------------------------------------------------------------------


def refresh(
    repo: RepositoryMetadata,
    signers: Signers,
    periods: Mapping[str, timedelta],
    now: datetime,
    *,
    snapshot: bool = True,
) -> RepositoryMetadata:
    """New snapshot (unless *snapshot* is false) and timestamp versions with fresh expiries."""
    roles = {"snapshot", "timestamp"} if snapshot else {"timestamp"}
    return _cascade(repo, signers, periods, now, resign=roles)


def expiring_roles(repo: RepositoryMetadata, now: datetime, within: timedelta) -> list[str]:
    """The roles whose metadata expires before *now* + *within* (already expired included)."""
    return [r for r in ROLES if repo.role(r).signed.expires <= now + within]


def resign_root(
    root: Metadata[Root], signers: Signers, period: timedelta, now: datetime
) -> Metadata[Root]:
    """The next root version, same keys and thresholds, valid for *period* from *now*."""
    new = _bumped_root(root.signed, expires_at(now, period))
    return sign_root(new, signers, previous=root.signed)


def resign(
    repo: RepositoryMetadata,
    roles: Collection[str],
    signers: Signers,
    periods: Mapping[str, timedelta],
    now: datetime,
) -> RepositoryMetadata:
    """New versions of *roles* with fresh expiries (and of the roles that list them)."""
    for role in roles:
        repo.role(role)  # unknown names raise
    if "root" in roles:
        repo = adopt_root(
            repo, resign_root(repo.root, signers, periods["root"], now), signers, periods, now
        )
    return _cascade(repo, signers, periods, now, resign=set(roles) - {"root"})


def rotate_keys(
    root: Root,
    role: str,
    *,
    revoke: Sequence[str],
    add: Sequence[Key],
    expires: datetime,
) -> Root:
    """The next root version (unsigned) with *revoke* key ids removed from *role*, *add* added.

    The threshold stays; :class:`OtaUsageError` if a revoked key is not *role*'s or if fewer keys
    than the threshold would remain.
    """
    _check_role(role)
    new = _bumped_root(root, expires)
    for keyid in revoke:
        if keyid not in new.roles[role].keyids:
            raise OtaUsageError(f"key {keyid[:12]} is not one of {role}'s keys")
        new.revoke_key(keyid, role)
    for key in add:
        new.add_key(key, role)
    _checked_threshold(role, new.roles[role].threshold, len(new.roles[role].keyids))
    return new


def change_threshold(
    root: Root,
    role: str,
    threshold: int,
    *,
    add: Sequence[Key] = (),
    expires: datetime,
) -> Root:
    """The next root version (unsigned) with *role*'s threshold set and keys *add* added."""
    _check_role(role)
    new = _bumped_root(root, expires)
    for key in add:
        new.add_key(key, role)
    new.roles[role].threshold = _checked_threshold(role, threshold, len(new.roles[role].keyids))
    return new


def adopt_root(
    repo: RepositoryMetadata,
    root: Metadata[Root],
    signers: Signers,
    periods: Mapping[str, timedelta],
    now: datetime,
) -> RepositoryMetadata:
    """*repo* under the next root version *root*, already signed.

    Roles whose keys or threshold differ in *root* get new versions signed with the keys of
    both roots where available (then snapshot and timestamp as usual).
    """
    previous = repo.root.signed
    if root.signed.version != previous.version + 1:
        raise OtaUsageError(
            f"root v{root.signed.version} cannot follow v{previous.version}: versions must be "
            "consecutive"
        )
    changed = {
        r
        for r in ("targets", "snapshot", "timestamp")
        if root.signed.roles[r] != previous.roles[r]
        or any(root.signed.keys[k] != previous.keys.get(k) for k in root.signed.roles[r].keyids)
    }
    moved = RepositoryMetadata(root, repo.targets, repo.snapshot, repo.timestamp)
    if not changed:
        return moved
    return _cascade(moved, signers, periods, now, resign=changed, previous_root=previous)


def _bumped_root(root: Root, expires: datetime) -> Root:
    new = copy.deepcopy(root)
    new.version += 1
    new.expires = expires.replace(microsecond=0)
    return new


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise OtaUsageError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")


def _checked_threshold(role: str, threshold: int, keys: int) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise OtaUsageError(f"{role}: threshold {threshold!r} must be a whole number ≥ 1")
    if threshold > keys:
        raise OtaUsageError(
            f"{role}: threshold {threshold} exceeds its {keys} key{'s' if keys != 1 else ''}; "
            "add keys first"
        )
    return threshold


def _cascade(
    repo: RepositoryMetadata,
    signers: Signers,
    periods: Mapping[str, timedelta],
    now: datetime,
    *,
    targets: Targets | None = None,
    resign: Collection[str] = (),
    previous_root: Root | None = None,
) -> RepositoryMetadata:
    """New versions of targets (with *targets*' content, or re-signed if in *resign*), then of
    snapshot and timestamp as far as something below them changed or *resign* names them."""
    roots = [repo.root.signed] if previous_root is None else [previous_root, repo.root.signed]
    new_targets = repo.targets
    if targets is not None or "targets" in resign:
        content = targets if targets is not None else repo.targets.signed
        new_targets = sign_role(
            _bumped(content, expires_at(now, periods["targets"])),
            "targets",
            signers,
            roots=roots,
        )
    new_snapshot = repo.snapshot
    if new_targets is not repo.targets or "snapshot" in resign:
        content_s = _bumped(repo.snapshot.signed, expires_at(now, periods["snapshot"]))
        if new_targets is not repo.targets:
            content_s.meta["targets.json"] = _meta_file(new_targets)
        new_snapshot = sign_role(content_s, "snapshot", signers, roots=roots)
    new_timestamp = repo.timestamp
    if new_snapshot is not repo.snapshot or "timestamp" in resign:
        content_t = _bumped(repo.timestamp.signed, expires_at(now, periods["timestamp"]))
        if new_snapshot is not repo.snapshot:
            content_t.snapshot_meta = _meta_file(new_snapshot)
        new_timestamp = sign_role(content_t, "timestamp", signers, roots=roots)
    return RepositoryMetadata(repo.root, new_targets, new_snapshot, new_timestamp)


# --- checking ----------------------------------------------------------------------------------


def verify_repository(repo: RepositoryMetadata, raw: Mapping[str, bytes] | None = None) -> None:
    """Raise :class:`OtaVerificationError` unless *repo* is what a client would accept, expiry
    aside: every role signed by its threshold, snapshot listing this targets version and
    timestamp this snapshot version (and, given the published *raw* bytes of targets and
    snapshot, their lengths and hashes).
    """
    root = repo.root.signed
    checks: list[tuple[str, Metadata[Any]]] = [(r, repo.role(r)) for r in ROLES]
    for role, md in checks:
        try:
            root.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            raise OtaVerificationError(f"{role} v{md.signed.version} does not verify: {e}") from e
    listed = repo.snapshot.signed.meta.get("targets.json")
    if listed is None or listed.version != repo.targets.signed.version:
        raise OtaVerificationError(
            f"snapshot v{repo.snapshot.signed.version} lists targets "
            f"{'nothing' if listed is None else f'v{listed.version}'}, the repository has "
            f"v{repo.targets.signed.version}"
        )
    snap = repo.timestamp.signed.snapshot_meta
    if snap.version != repo.snapshot.signed.version:
        raise OtaVerificationError(
            f"timestamp v{repo.timestamp.signed.version} lists snapshot v{snap.version}, the "
            f"repository has v{repo.snapshot.signed.version}"
        )
    if raw is None:
        return
    for role, meta in (("targets", listed), ("snapshot", snap)):
        data = raw.get(role)
        if data is None:
            continue
        try:
            meta.verify_length_and_hashes(data)
        except LengthOrHashMismatchError as e:
            raise OtaVerificationError(
                f"{role} v{meta.version} does not match the length or hash listed for it: {e}"
            ) from e
