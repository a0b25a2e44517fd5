"""The agent's exception hierarchy, split by who is at fault.

* :class:`UsageError` — the user asked for something malformed (a bad bus URL, a missing file);
  the command line maps it to exit status 2.
* :class:`InputError` — data handed to us is broken (a log line, a config value); exit status 1.
* :class:`BusError` — the environment failed us (a bus that cannot be opened); exit status 1.

Every message names *what* and *where* so the user can act on it without a traceback.
"""

from __future__ import annotations


class TboxError(Exception):
    """Base class of every error the agent raises on purpose."""


class UsageError(TboxError):
    """The user's request is malformed (bad URL, option or argument)."""


class InputError(TboxError):
    """Input data is malformed (a log file, a configuration value)."""


class BusError(TboxError):
    """A CAN bus could not be opened or failed while in use."""


class LocatedInputError(InputError):
    """Malformed input whose place is known: a source, a dotted key path and maybe a line.

    ``source`` is the file (or a name the caller gave a payload), ``key`` the dotted key path of
    the offending value (``None`` for document-level problems such as syntax errors), ``line``
    the 1-based line when known, and ``problem`` what is wrong in words a user can act on.
    ``str()`` gives ``"source:line: key: problem"`` with the unknown parts left out.
    """

    def __init__(
        self, source: str, key: str | None, problem: str, *, line: int | None = None
    ) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        self.line = line
        super().__init__(source, key, problem, line)

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        what = self.problem if self.key is None else f"{self.key}: {self.problem}"
        return f"{where}: {what}"


def kind_of_value(value: object) -> str:
    """A TOML-flavoured name for a Python value's type, for error messages ("a number")."""
    import datetime as dt
    from collections.abc import Mapping

    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return "a date-time"
    return type(value).__name__


def describe_toml_error(error: Exception, text: str) -> tuple[str, int | None]:
    """A tomllib syntax error as ``(problem, line)`` for a located error message.

    Python 3.11's ``TOMLDecodeError`` has no line attribute; its message ends
    ``(at line N, column M)`` or ``(at end of document)``.
    """
    import re

    message = str(error)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if m is not None:
        return message[: m.start()], int(m.group(1))
    if message.endswith(" (at end of document)"):
        problem = message[: -len(" (at end of document)")] + " at the end of the document"
        return problem, max(1, len(text.splitlines()))
    return message, None
