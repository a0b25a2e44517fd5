"""The pure repository decisions: versions, expiries, cascades, signing, rotation, thresholds."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Root, TargetFile, Targets

from ota.errors import OtaUsageError, OtaVerificationError, SigningKeyError
from ota.keys import new_key
from ota.repository import (
    ROLES,
    RepositoryMetadata,
    add_target,
    adopt_root,
    change_threshold,
    expiring_roles,
    metadata_bytes,
    refresh,
    remove_target,
    resign,
    rotate_keys,
    sign_root,
    verify_repository,
)
from ota.target_info import ImageKind, TargetCustom, make_target_file
from tests.ota.repository_builders import NOW, PERIODS, Built, build

LATER = NOW + timedelta(hours=5)


def _target(name: str = "fw.bin", data: bytes = b"image") -> TargetFile:
    custom = TargetCustom(hardware_id="hw", release_counter=1, image_kind=ImageKind.TBOX)
    return make_target_file(name, io.BytesIO(data), custom)


def _versions(repo: RepositoryMetadata) -> dict[str, int]:
    return {r: repo.role(r).signed.version for r in ROLES}


def _raw(repo: RepositoryMetadata) -> dict[str, bytes]:
    return {"targets": metadata_bytes(repo.targets), "snapshot": metadata_bytes(repo.snapshot)}


def _verifies_under(root: Root, repo: RepositoryMetadata, role: str) -> bool:
    md = repo.role(role)
    return bool(root.get_verification_result(role, md.signed_bytes, md.signatures))


def test_a_new_repository_is_version_1_everywhere_and_verifies() -> None:
    built = build()
    repo = built.repo
    assert _versions(repo) == dict.fromkeys(ROLES, 1)
    assert repo.root.signed.consistent_snapshot is True
    for role in ROLES:
        assert repo.role(role).signed.expires == NOW + PERIODS[role]
    snapshot_meta = repo.snapshot.signed.meta["targets.json"]
    assert snapshot_meta.version == 1
    assert snapshot_meta.length == len(metadata_bytes(repo.targets))
    assert repo.timestamp.signed.snapshot_meta.length == len(metadata_bytes(repo.snapshot))
    verify_repository(repo, _raw(repo))


def test_adding_a_target_cascades_and_leaves_the_input_alone() -> None:
    built = build()
    before = built.repo
    after = add_target(before, _target(), built.signers, PERIODS, LATER)
    assert _versions(before) == dict.fromkeys(ROLES, 1)  # not modified
    assert _versions(after) == {"root": 1, "targets": 2, "snapshot": 2, "timestamp": 2}
    assert after.changed_roles(before) == ["targets", "snapshot", "timestamp"]
    assert after.targets.signed.targets["fw.bin"] == _target()
    assert after.snapshot.signed.meta["targets.json"] == MetaFile.from_data(
        2, metadata_bytes(after.targets), ["sha256"]
    )
    for role in ("targets", "snapshot", "timestamp"):
        assert after.role(role).signed.expires == (LATER + PERIODS[role]).replace(microsecond=0)
    verify_repository(after, _raw(after))


def test_adding_the_same_target_again_changes_nothing_but_other_content_is_refused() -> None:
    built = build()
    repo = add_target(built.repo, _target(), built.signers, PERIODS, NOW)
    assert add_target(repo, _target(), built.signers, PERIODS, LATER) is repo
    with pytest.raises(OtaUsageError, match="already exists"):
        add_target(repo, _target(data=b"other"), built.signers, PERIODS, LATER)


def test_removing_a_target() -> None:
    built = build()
    repo = add_target(built.repo, _target(), built.signers, PERIODS, NOW)
    repo = remove_target(repo, "fw.bin", built.signers, PERIODS, NOW)
    assert repo.targets.signed.targets == {}
    assert _versions(repo)["targets"] == 3
    with pytest.raises(OtaUsageError, match="no target"):
        remove_target(repo, "fw.bin", built.signers, PERIODS, NOW)


def test_refresh_bumps_snapshot_and_timestamp_only() -> None:
    built = build()
    repo = refresh(built.repo, built.signers, PERIODS, LATER)
    assert _versions(repo) == {"root": 1, "targets": 1, "snapshot": 2, "timestamp": 2}
    assert repo.snapshot.signed.meta == built.repo.snapshot.signed.meta
    only = refresh(repo, built.signers, PERIODS, LATER, snapshot=False)
    assert _versions(only) == {"root": 1, "targets": 1, "snapshot": 2, "timestamp": 3}
    assert only.timestamp.signed.snapshot_meta == repo.timestamp.signed.snapshot_meta
    verify_repository(only)


def test_timestamp_refresh_needs_only_the_timestamp_key() -> None:
    built = build()
    online = {k: s for k, s in built.signers.items() if s in built.keys["timestamp"]}
    refresh(built.repo, online, PERIODS, LATER, snapshot=False)
    with pytest.raises(SigningKeyError, match="snapshot: 0 of the 1 signatures needed"):
        refresh(built.repo, online, PERIODS, LATER)


def test_expiring_roles_and_resigning_them() -> None:
    built = build()
    soon = NOW + timedelta(days=6, hours=12)
    assert expiring_roles(built.repo, soon, timedelta(days=1)) == ["snapshot", "timestamp"]
    assert expiring_roles(built.repo, NOW, timedelta(0)) == []
    repo = resign(built.repo, ["snapshot", "timestamp"], built.signers, PERIODS, soon)
    assert _versions(repo) == {"root": 1, "targets": 1, "snapshot": 2, "timestamp": 2}
    assert expiring_roles(repo, soon, timedelta(days=1)) == ["timestamp"]


def test_resigning_targets_and_root() -> None:
    built = build()
    repo = resign(built.repo, ["targets"], built.signers, PERIODS, LATER)
    assert _versions(repo) == {"root": 1, "targets": 2, "snapshot": 2, "timestamp": 2}
    repo = resign(repo, ["root"], built.signers, PERIODS, LATER)
    assert _versions(repo) == {"root": 2, "targets": 2, "snapshot": 2, "timestamp": 2}
    assert repo.root.signed.keys == built.repo.root.signed.keys
    with pytest.raises(OtaUsageError, match="unknown role"):
        resign(repo, ["mirror"], built.signers, PERIODS, LATER)


def test_signing_refuses_when_the_threshold_cannot_be_met() -> None:
    built = build({"targets": 2})
    one_short = dict(built.signers)
    del one_short[built.keys["targets"][1].public_key.keyid]
    with pytest.raises(SigningKeyError, match="targets: 1 of the 2 signatures needed"):
        add_target(built.repo, _target(), one_short, PERIODS, NOW)


def _rotated(built: Built, role: str) -> tuple[Metadata[Root], dict[str, Signer]]:
    fresh = new_key()
    old = [s.public_key.keyid for s in built.keys[role]]
    root = rotate_keys(
        built.repo.root.signed,
        role,
        revoke=old,
        add=[fresh.public_key],
        expires=NOW + PERIODS["root"],
    )
    signers: dict[str, Signer] = {**built.signers, fresh.public_key.keyid: fresh}
    return sign_root(root, signers, previous=built.repo.root.signed), signers


@pytest.mark.parametrize("role", ["targets", "snapshot", "timestamp"])
def test_rotating_a_role_key_resigns_that_role_under_both_roots(role: str) -> None:
    built = build()
    new_root, signers = _rotated(built, role)
    repo = adopt_root(built.repo, new_root, signers, PERIODS, LATER)
    cascade = ROLES[ROLES.index(role) :]
    assert repo.changed_roles(built.repo) == ["root", *[r for r in cascade if r != "root"]]
    verify_repository(repo, _raw(repo))
    # Signed by the old key too: a client that has not fetched root v2 yet still accepts it.
    old_root = built.repo.root.signed
    assert all(_verifies_under(old_root, repo, r) for r in ("targets", "snapshot", "timestamp"))


def test_rotating_without_the_old_key_signs_with_the_new_one_only() -> None:
    built = build()
    new_root, signers = _rotated(built, "timestamp")
    old_key = built.keys["timestamp"][0].public_key.keyid
    del signers[old_key]
    repo = adopt_root(built.repo, new_root, signers, PERIODS, LATER)
    verify_repository(repo)
    assert not _verifies_under(built.repo.root.signed, repo, "timestamp")


def test_root_rotation_is_signed_by_old_and_new_root_keys() -> None:
    built = build()
    new_root, signers = _rotated(built, "root")
    old_id = built.keys["root"][0].public_key.keyid
    assert old_id in new_root.signatures
    assert old_id not in new_root.signed.roles["root"].keyids
    result = new_root.signed.get_root_verification_result(
        built.repo.root.signed, new_root.signed_bytes, new_root.signatures
    )
    assert result.verified
    repo = adopt_root(built.repo, new_root, signers, PERIODS, LATER)
    assert repo.changed_roles(built.repo) == ["root"]  # nothing else is signed by root keys


def test_a_root_rotation_without_the_old_root_key_is_refused() -> None:
    built = build()
    fresh = new_key()
    root = rotate_keys(
        built.repo.root.signed,
        "root",
        revoke=[built.keys["root"][0].public_key.keyid],
        add=[fresh.public_key],
        expires=NOW + PERIODS["root"],
    )
    with pytest.raises(SigningKeyError, match="previous root's root keys"):
        sign_root(root, {fresh.public_key.keyid: fresh}, previous=built.repo.root.signed)


def test_rotate_keys_checks_its_arguments() -> None:
    built = build({"targets": 2})
    root = built.repo.root.signed
    with pytest.raises(OtaUsageError, match="not one of targets's keys"):
        rotate_keys(root, "targets", revoke=["ab" * 32], add=[], expires=NOW)
    keyids = root.roles["targets"].keyids
    with pytest.raises(OtaUsageError, match="threshold 2 exceeds its 1 key"):
        rotate_keys(root, "targets", revoke=[keyids[0]], add=[], expires=NOW)
    with pytest.raises(OtaUsageError, match="unknown role"):
        rotate_keys(root, "mirror", revoke=[], add=[], expires=NOW)


def test_raising_a_threshold_resigns_the_role_to_meet_it() -> None:
    built = build()
    extra = new_key()
    signers = {**built.signers, extra.public_key.keyid: extra}
    root = change_threshold(
        built.repo.root.signed, "targets", 2, add=[extra.public_key], expires=NOW + PERIODS["root"]
    )
    assert root.version == 2
    signed_root = sign_root(root, signers, previous=built.repo.root.signed)
    repo = adopt_root(built.repo, signed_root, signers, PERIODS, LATER)
    assert repo.changed_roles(built.repo) == ["root", "targets", "snapshot", "timestamp"]
    assert len(repo.targets.signatures) == 2
    verify_repository(repo)


def test_raising_the_root_threshold_needs_the_new_keys_too() -> None:
    built = build()
    extra = new_key()
    root = change_threshold(
        built.repo.root.signed, "root", 2, add=[extra.public_key], expires=NOW + PERIODS["root"]
    )
    with pytest.raises(SigningKeyError, match="new root's root keys"):
        sign_root(root, built.signers, previous=built.repo.root.signed)
    signed = sign_root(
        root, {**built.signers, extra.public_key.keyid: extra}, previous=built.repo.root.signed
    )
    assert len(signed.signatures) == 2


def test_a_threshold_must_fit_the_keys() -> None:
    root = build().repo.root.signed
    for bad in (0, 2, -1):
        with pytest.raises(OtaUsageError, match="threshold"):
            change_threshold(root, "snapshot", bad, expires=NOW)


def test_adopting_a_root_out_of_sequence_is_refused() -> None:
    built = build()
    new_root, signers = _rotated(built, "timestamp")
    repo = adopt_root(built.repo, new_root, signers, PERIODS, LATER)
    with pytest.raises(OtaUsageError, match="consecutive"):
        adopt_root(repo, new_root, signers, PERIODS, LATER)


def test_verify_repository_catches_tampering_and_stale_listings() -> None:
    built = build()
    repo = built.repo
    tampered_targets: Metadata[Targets] = Metadata.from_bytes(metadata_bytes(repo.targets))
    tampered_targets.signed.targets["evil.bin"] = _target("evil.bin")
    with pytest.raises(OtaVerificationError, match="targets v1 does not verify"):
        verify_repository(
            RepositoryMetadata(repo.root, tampered_targets, repo.snapshot, repo.timestamp)
        )
    newer = add_target(repo, _target(), built.signers, PERIODS, NOW)
    with pytest.raises(OtaVerificationError, match="snapshot v1 lists targets v1"):
        verify_repository(
            RepositoryMetadata(repo.root, newer.targets, repo.snapshot, repo.timestamp)
        )
    with pytest.raises(OtaVerificationError, match="timestamp v1 lists snapshot v1"):
        verify_repository(
            RepositoryMetadata(repo.root, newer.targets, newer.snapshot, repo.timestamp)
        )
    with pytest.raises(OtaVerificationError, match="does not match the length or hash"):
        verify_repository(newer, {"targets": metadata_bytes(newer.targets) + b" "})
