"""Diagnostics: what the tolerant DBC loader repaired or found suspicious, and where."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DbcDiagnostic:
    """One warning about a DBC file.

    ``line`` is the 1-based line in the file as it is on disk (``None`` for the file as a whole);
    ``message`` says what was found and what the loader did about it.
    ``str()`` gives ``"path:line: warning: message"``.
    """

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: warning: {self.message}"
