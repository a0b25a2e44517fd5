"""A repository's files: TUF metadata and target files laid out for any static web server.

With consistent snapshots (as python-tuf's ngclient fetches them)::

    metadata/1.root.json … N.root.json   every root version (clients walk the chain)
    metadata/root.json                    a copy of the newest root (to provision clients with)
    metadata/timestamp.json               the only file fetched by a fixed name
    metadata/V.snapshot.json              every published snapshot version
    metadata/V.targets.json               every published targets version
    targets/<sha256>.<name>               each target under its hash-prefixed name (and
    targets/<sha512>.<name>               <sha512>.<name> when it has that hash too); a name
                                          with '/' puts the prefix on its last part

Old snapshot and targets versions stay: a client that read an older timestamp a moment ago must
still find what it lists. Every file is written atomically and durably
(:func:`agent.durable_file.write_durably`); the current state is what ``timestamp.json`` and
the highest ``N.root.json`` say, so files written before a crash but never listed are ignored
and overwritten by the next change.

Usage::

    files = MetadataDir(repo / "metadata")
    current = files.load()                   # RepositoryMetadata
    files.save(new, current)                 # writes what changed, in a safe order
    target = TargetsDir(repo / "targets").import_file(Path("fw.bin"), make_target)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization import DeserializationError

from agent.durable_file import fsync_dir, write_durably
from ota.errors import OtaInputError, OtaIOError, OtaUsageError
from ota.repository import RepositoryMetadata, metadata_bytes

__all__ = ["MetadataDir", "TargetsDir", "locked"]

_ROOT_FILE = re.compile(r"([1-9][0-9]{0,18})\.root\.json")
_T = TypeVar("_T", Root, Targets, Snapshot, Timestamp)


class MetadataDir:
    """One ``metadata/`` directory of a repository."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # --- reading -------------------------------------------------------------------------------

    def root_versions(self) -> list[int]:
        """The versions of every ``N.root.json`` present, ascending."""
        try:
            names = [p.name for p in self.path.iterdir()]
        except FileNotFoundError:
            return []
        except OSError as e:
            raise OtaIOError(f"cannot list {self.path}: {e.strerror or e}") from e
        return sorted(int(m.group(1)) for n in names if (m := _ROOT_FILE.fullmatch(n)))

    def read_root(self, version: int) -> Metadata[Root]:
        """Root version *version*."""
        return self._read(f"{version}.root.json", Root)

    def latest_root(self) -> Metadata[Root]:
        """The newest root version present."""
        versions = self.root_versions()
        if not versions:
            raise OtaInputError(f"{self.path}: no N.root.json metadata")
        return self.read_root(versions[-1])

    def raw(self, name: str) -> bytes:
        """The bytes of metadata file *name* (e.g. ``3.targets.json``)."""
        path = self.path / name
        try:
            return path.read_bytes()
        except FileNotFoundError as e:
            raise OtaInputError(f"{path}: missing") from e
        except OSError as e:
            raise OtaIOError(f"cannot read {path}: {e.strerror or e}") from e

    def load(self, root: Metadata[Root] | None = None) -> RepositoryMetadata:
        """The current metadata: *root* (default the newest here), then what timestamp lists."""
        if root is None:
            root = self.latest_root()
        timestamp = self._read("timestamp.json", Timestamp)
        snapshot = self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
        listed = snapshot.signed.meta.get("targets.json")
        if listed is None:
            raise OtaInputError(f"{self.path}: snapshot lists no targets.json")
        targets = self._read(f"{listed.version}.targets.json", Targets)
        return RepositoryMetadata(root, targets, snapshot, timestamp)

    def published_bytes(self, repo: RepositoryMetadata) -> dict[str, bytes]:
        """The bytes of *repo*'s targets and snapshot files as published here."""
        return {
            "targets": self.raw(f"{repo.targets.signed.version}.targets.json"),
            "snapshot": self.raw(f"{repo.snapshot.signed.version}.snapshot.json"),
        }

    def _read(self, name: str, kind: type[_T]) -> Metadata[_T]:
        data = self.raw(name)
        try:
            md: Metadata[Any] = Metadata.from_bytes(data)
        except DeserializationError as e:
            raise OtaInputError(f"{self.path / name}: not TUF metadata: {e}") from e
        if not isinstance(md.signed, kind):
            raise OtaInputError(
                f"{self.path / name}: holds {md.signed.type} metadata, not {kind.type}"
            )
        return md

    # --- writing -------------------------------------------------------------------------------

    def save(self, new: RepositoryMetadata, old: RepositoryMetadata | None) -> list[str]:
        """Write what changed from *old* (everything if None); the names written, in order
        (a file that holds the same bytes already is left alone).

        Order: new targets and snapshot versions (listed by nothing yet), then ``timestamp.json``
        and the new root — timestamp first when the new metadata verifies under the old root
        too (clients on either root always find a valid set), root first otherwise (a key that
        could not sign the transition: the repository is valid again once timestamp is written,
        and ``refresh`` repairs it after a crash in between).
        """
        changed = new.changed_roles(old) if old is not None else ["root", *_NON_ROOT]
        writes: list[tuple[str, bytes]] = []
        if "targets" in changed:
            writes.append(
                (f"{new.targets.signed.version}.targets.json", metadata_bytes(new.targets))
            )
        if "snapshot" in changed:
            writes.append(
                (f"{new.snapshot.signed.version}.snapshot.json", metadata_bytes(new.snapshot))
            )
        stamp = (
            [("timestamp.json", metadata_bytes(new.timestamp))] if "timestamp" in changed else []
        )
        root = self._root_writes(new.root) if "root" in changed else []
        if old is not None and root and not _verifies_under(old.root.signed, new, changed):
            writes += root + stamp
        else:
            writes += stamp + root
        self._ensure_dir()
        return [name for name, data in writes if self._write(name, data)]

    def write_root(self, root: Metadata[Root]) -> list[str]:
        """Publish root version *root* (and make it ``root.json``); the names written."""
        self._ensure_dir()
        return [name for name, data in self._root_writes(root) if self._write(name, data)]

    def copy_root_history(self, source: MetadataDir) -> list[str]:
        """Copy every ``N.root.json`` of *source* missing here and its newest as ``root.json``;
        the names written."""
        mine = set(self.root_versions())
        written: list[str] = []
        self._ensure_dir()
        theirs = source.root_versions()
        for version in theirs:
            if version not in mine:
                name = f"{version}.root.json"
                if self._write(name, source.raw(name)):
                    written.append(name)
        if theirs and self._write("root.json", source.raw(f"{theirs[-1]}.root.json")):
            written.append("root.json")
        return written

    def _root_writes(self, root: Metadata[Root]) -> list[tuple[str, bytes]]:
        data = metadata_bytes(root)
        return [(f"{root.signed.version}.root.json", data), ("root.json", data)]

    def _ensure_dir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OtaIOError(f"cannot create {self.path}: {e.strerror or e}") from e

    def _write(self, name: str, data: bytes) -> bool:
        """Write *name* unless it holds *data* already; whether it was written."""
        path = self.path / name
        try:
            if path.read_bytes() == data:
                return False
        except OSError:
            pass  # absent or unreadable: write it
        try:
            write_durably(path, data)
        except OSError as e:
            raise OtaIOError(f"cannot write {path}: {e.strerror or e}") from e
        return True


_NON_ROOT = ("targets", "snapshot", "timestamp")


def _verifies_under(root: Root, new: RepositoryMetadata, changed: list[str]) -> bool:
    for role in _NON_ROOT:
        if role in changed:
            md = new.role(role)
            try:
                root.verify_delegate(role, md.signed_bytes, md.signatures)
            except UnsignedMetadataError:
                return False
    return True


class TargetsDir:
    """One ``targets/`` directory of an image repository."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def paths_of(self, target: TargetFile) -> list[Path]:
        """Where *target* is published: one hash-prefixed file per hash."""
        return [self.path / p for p in target.get_prefixed_paths()]

    def has(self, target: TargetFile) -> bool:
        """True when every published file of *target* exists with its length."""
        try:
            return all(p.stat().st_size == target.length for p in self.paths_of(target))
        except OSError:
            return False

    def import_file(self, source: Path, describe: Callable[[BinaryIO], TargetFile]) -> TargetFile:
        """Copy *source* in and publish it under the names of ``describe(copy)``.

        The hashes are taken from the copy, so the published bytes are the hashed bytes even if
        *source* changes meanwhile. An identical file already published is kept.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OtaIOError(f"cannot create {self.path}: {e.strerror or e}") from e
        staged = self.path / f".import-{os.getpid()}.partial"  # hidden: never served
        try:
            try:
                with source.open("rb") as src, staged.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    dst.flush()
                    os.fsync(dst.fileno())
            except FileNotFoundError as e:
                raise OtaUsageError(f"{source}: no such file") from e
            except IsADirectoryError as e:
                raise OtaUsageError(f"{source}: is a directory, not a file") from e
            except OSError as e:
                raise OtaIOError(f"cannot copy {source} into {self.path}: {e.strerror or e}") from e
            with staged.open("rb") as f:
                target = describe(f)
            for dest in self.paths_of(target):
                if dest.exists() and dest.stat().st_size == target.length:
                    continue  # content-addressed: same name, same bytes
                tmp = dest.with_name(f".{dest.name}.tmp")
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp.unlink(missing_ok=True)  # left by a crash
                    os.link(staged, tmp)
                    tmp.replace(dest)
                    fsync_dir(dest.parent)
                except OSError as e:
                    raise OtaIOError(f"cannot publish {dest}: {e.strerror or e}") from e
            return target
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on repository *directory* (``.lock``) while changing it.

    Two tools at once (a cron ``refresh`` and a release) would otherwise both sign the same next
    version with different content.
    """
    path = directory / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OtaIOError(f"cannot lock {directory}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
