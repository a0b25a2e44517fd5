"""The exception hierarchy of :mod:`can_dbc`.

* :class:`DbcLoadError` — a DBC file cannot be loaded, even after the tolerant loader's repairs;
  it names the file and, when known, the line.
* :class:`DecodeError` — a CAN frame cannot be decoded with a loaded database.

Both derive from :class:`DbcError`, so callers that only care about "something is wrong with the
DBC side" can catch one class.
"""

from __future__ import annotations


class DbcError(Exception):
    """Base class of every error :mod:`can_dbc` raises on purpose."""


class DbcLoadError(DbcError):
    """A DBC file could not be loaded.

    ``path`` is the file as the caller named it, ``line`` the 1-based line in that file (``None``
    when the fault is not tied to one line) and ``reason`` what is wrong, in words a user can act
    on. ``str()`` gives ``"path:line: reason"`` (or ``"path: reason"``), the form compilers use, so
    editors and terminals can jump to the spot.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(path, line, reason)

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.reason}"


class DecodeError(DbcError):
    """A CAN frame could not be decoded with a loaded DBC (wrong length, bad multiplexer value…)."""
