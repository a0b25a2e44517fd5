"""Repository files: what is written, in which order, what is read back, and target files."""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
from tuf.api.metadata import Metadata, Root, TargetFile

from ota.errors import OtaInputError, OtaUsageError
from ota.keys import new_key
from ota.repository import (
    RepositoryMetadata,
    add_target,
    adopt_root,
    metadata_bytes,
    refresh,
    rotate_keys,
    sign_root,
)
from ota.repository_files import MetadataDir, TargetsDir, locked
from ota.target_info import ImageKind, TargetCustom, make_target_file
from tests.ota.repository_builders import NOW, PERIODS, Built, build

CUSTOM = TargetCustom(hardware_id="hw", release_counter=1, image_kind=ImageKind.TBOX)


def _saved(tmp_path: Path) -> tuple[Built, MetadataDir]:
    built = build()
    files = MetadataDir(tmp_path / "metadata")
    files.save(built.repo, None)
    return built, files


def test_a_new_repository_is_written_with_consistent_snapshot_names(tmp_path: Path) -> None:
    built, files = _saved(tmp_path)
    assert sorted(p.name for p in files.path.iterdir()) == [
        "1.root.json",
        "1.snapshot.json",
        "1.targets.json",
        "root.json",
        "timestamp.json",
    ]
    assert (files.path / "1.targets.json").read_bytes() == metadata_bytes(built.repo.targets)
    assert files.load() == built.repo
    assert files.root_versions() == [1]


def test_only_what_changed_is_written_and_the_timestamp_last(tmp_path: Path) -> None:
    built, files = _saved(tmp_path)
    target = make_target_file("fw.bin", io.BytesIO(b"x"), CUSTOM)
    new = add_target(built.repo, target, built.signers, PERIODS, NOW)
    assert files.save(new, built.repo) == ["2.targets.json", "2.snapshot.json", "timestamp.json"]
    assert files.load() == new
    assert (files.path / "1.targets.json").exists()  # old versions stay for clients mid-refresh
    assert files.save(new, built.repo) == []  # the same bytes again: nothing written


def test_files_written_before_a_crash_but_never_listed_are_ignored(tmp_path: Path) -> None:
    built, files = _saved(tmp_path)
    (files.path / "2.targets.json").write_bytes(b"half written")
    (files.path / "2.snapshot.json").write_bytes(b"{}")
    assert files.load() == built.repo
    new = refresh(built.repo, built.signers, PERIODS, NOW)
    files.save(new, built.repo)  # overwrites the orphan snapshot
    assert files.load() == new


def _rotation(built: Built, *, keep_old_key: bool) -> tuple[RepositoryMetadata, Metadata[Root]]:
    fresh = new_key()
    root = rotate_keys(
        built.repo.root.signed,
        "timestamp",
        revoke=[built.keys["timestamp"][0].public_key.keyid],
        add=[fresh.public_key],
        expires=NOW + PERIODS["root"],
    )
    signers = {**built.signers, fresh.public_key.keyid: fresh}
    if not keep_old_key:
        del signers[built.keys["timestamp"][0].public_key.keyid]
    signed = sign_root(root, signers, previous=built.repo.root.signed)
    return adopt_root(built.repo, signed, signers, PERIODS, NOW), signed


def test_a_rotation_signed_by_old_and_new_keys_publishes_timestamp_first(tmp_path: Path) -> None:
    built, files = _saved(tmp_path)
    new, _ = _rotation(built, keep_old_key=True)
    assert files.save(new, built.repo) == ["timestamp.json", "2.root.json", "root.json"]


def test_a_rotation_without_the_old_key_publishes_root_first(tmp_path: Path) -> None:
    built, files = _saved(tmp_path)
    new, _ = _rotation(built, keep_old_key=False)
    assert files.save(new, built.repo) == ["2.root.json", "root.json", "timestamp.json"]
    assert files.root_versions() == [1, 2]
    assert files.latest_root().signed.version == 2


def test_root_history_is_copied(tmp_path: Path) -> None:
    built, files = _saved(tmp_path)
    new, _ = _rotation(built, keep_old_key=True)
    files.save(new, built.repo)
    other = MetadataDir(tmp_path / "vehicle" / "metadata")
    assert other.copy_root_history(files) == ["1.root.json", "2.root.json", "root.json"]
    assert other.copy_root_history(files) == []
    assert (other.path / "root.json").read_bytes() == (files.path / "2.root.json").read_bytes()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "timestamp.json").unlink(), "timestamp.json: missing"),
        (lambda p: (p / "1.snapshot.json").write_bytes(b"{"), "1.snapshot.json: not TUF metadata"),
        (
            lambda p: (p / "1.targets.json").write_bytes((p / "1.snapshot.json").read_bytes()),
            "holds snapshot metadata, not targets",
        ),
    ],
)
def test_damaged_metadata_is_named(
    tmp_path: Path, damage: Callable[[Path], object], message: str
) -> None:
    _, files = _saved(tmp_path)
    damage(files.path)
    with pytest.raises(OtaInputError, match=message):
        files.load()


def test_no_root_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(OtaInputError, match=r"no N\.root\.json"):
        MetadataDir(tmp_path).latest_root()


def _describe(name: str, sha512: bool = False) -> Callable[[BinaryIO], TargetFile]:
    return lambda f: make_target_file(name, f, CUSTOM, sha512=sha512)


def test_importing_a_file_publishes_it_under_its_hash_names(tmp_path: Path) -> None:
    source = tmp_path / "fw.bin"
    data = os.urandom(3000)
    source.write_bytes(data)
    targets = TargetsDir(tmp_path / "targets")
    target = targets.import_file(source, _describe("tbox/fw.bin", sha512=True))
    sha256, sha512 = hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest()
    assert (tmp_path / "targets" / "tbox" / f"{sha256}.fw.bin").read_bytes() == data
    assert (tmp_path / "targets" / "tbox" / f"{sha512}.fw.bin").read_bytes() == data
    assert targets.has(target)
    assert sorted(p.name for p in (tmp_path / "targets").iterdir()) == ["tbox"]  # no leftovers
    again = targets.import_file(source, _describe("tbox/fw.bin", sha512=True))
    assert again == target


def test_a_missing_source_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(OtaUsageError, match="no such file"):
        TargetsDir(tmp_path / "targets").import_file(tmp_path / "absent", _describe("x"))
    with pytest.raises(OtaUsageError, match="is a directory"):
        TargetsDir(tmp_path / "targets").import_file(tmp_path, _describe("x"))


def test_the_lock_is_exclusive(tmp_path: Path) -> None:
    with locked(tmp_path):
        fd = os.open(tmp_path / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
