"""Writing small files so that a power cut leaves either the old or the new content, never a mix.

The pattern of python-tuf's persistence and of every careful updater: write a temporary file in
the same directory, fsync it, ``os.replace`` it over the target, then fsync the directory (a rename
is durable only once the directory entry is on disk).
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.crashpoints import CrashPoint

__all__ = ["fsync_dir", "write_durably"]


def fsync_dir(directory: Path) -> None:
    """Flush *directory*'s entries (a new or renamed file in it) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    written: CrashPoint | None = None,
    renamed: CrashPoint | None = None,
) -> None:
    """Replace *path*'s content with *data* atomically and durably.

    *written* is hit once the temporary file is fsynced, *renamed* once it replaced *path* but
    before the directory is fsynced (crash points, contract C6).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if written is not None:
        written.hit()
    tmp.replace(path)
    if renamed is not None:
        renamed.hit()
    fsync_dir(path.parent)
