"""HTTP byte ranges (RFC 9110 §14): the ``Range`` request header and ``Content-Range``.

Only single ranges are served; what a server may ignore it ignores (the answer is then the whole
representation, status 200)::

    parse_range("bytes=100-199", size=1000)   # ByteRange(start=100, stop=200)
    parse_range("bytes=900-", size=1000)      # ByteRange(start=900, stop=1000)
    parse_range("bytes=-100", size=1000)      # ByteRange(start=900, stop=1000): the last 100
    parse_range("bytes=1000-", size=1000)     # NOT_SATISFIABLE: answer 416
    parse_range("bytes=0-1,5-9", size=1000)   # None: several ranges, serve it whole
    parse_range("items=0-1", size=1000)       # None: unknown unit, serve it whole

    parse_content_range("bytes 100-199/1000") # ContentRange(start=100, stop=200, size=1000)

Both parsers take any text from the network and never raise; numbers are ASCII digits only
(``int()`` would accept ``"1_000"`` and non-ASCII digits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

__all__ = [
    "NOT_SATISFIABLE",
    "ByteRange",
    "ContentRange",
    "NotSatisfiable",
    "parse_content_range",
    "parse_range",
]

_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)")
_MAX_DIGITS = 19  # beyond 2^63 a byte position means nothing; refuse instead of computing


class NotSatisfiable(Enum):
    """The single value :data:`NOT_SATISFIABLE`."""

    NOT_SATISFIABLE = "not satisfiable"


#: :func:`parse_range`'s answer when no requested byte exists: respond 416.
NOT_SATISFIABLE: Final = NotSatisfiable.NOT_SATISFIABLE


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``start`` up to (not including) ``stop`` of a representation; never empty."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        """How many bytes the range holds."""
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` value for this range of a *size*-byte representation."""
        return f"bytes {self.start}-{self.stop - 1}/{size}"


@dataclass(frozen=True, slots=True)
class ContentRange:
    """A parsed ``Content-Range``: bytes ``start`` to ``stop`` (exclusive) of ``size`` (None:
    unknown)."""

    start: int
    stop: int
    size: int | None


def parse_range(
    header: str | None, size: int
) -> ByteRange | Literal[NotSatisfiable.NOT_SATISFIABLE] | None:
    """What to serve for ``Range: header`` of a *size*-byte representation.

    A :class:`ByteRange` to serve with 206, :data:`NOT_SATISFIABLE` for 416, or None for the
    whole representation with 200 (no header, a malformed one, another unit, several ranges).
    """
    if header is None or size < 0:
        return None
    unit, sep, ranges = header.partition("=")
    if not sep or not unit.isascii() or unit.lower() != "bytes":
        return None
    specs = [s.strip(" \t") for s in ranges.split(",")]
    specs = [s for s in specs if s]
    if len(specs) != 1:
        return None
    m = _SPEC.fullmatch(specs[0])
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if len(first) > _MAX_DIGITS or len(last) > _MAX_DIGITS:
        return None
    if not first:
        if not last:
            return None  # "-" alone is malformed
        suffix = int(last)
        if suffix == 0 or size == 0:
            return NOT_SATISFIABLE
        return ByteRange(max(0, size - suffix), size)
    start = int(first)
    if last and int(last) < start:
        return None  # "bytes=5-2" is malformed, not unsatisfiable (RFC 9110 §14.1.1)
    if start >= size:
        return NOT_SATISFIABLE
    stop = size if not last else min(int(last) + 1, size)
    return ByteRange(start, stop)


def parse_content_range(value: str | None) -> ContentRange | None:
    """A ``Content-Range: bytes a-b/n`` value, or None if absent or malformed.

    Malformed includes ``b < a``, ``b >= n`` and the unsatisfied form ``bytes */n``.
    """
    if value is None:
        return None
    m = _CONTENT_RANGE.fullmatch(value.strip(" \t"))
    if m is None or any(len(g) > _MAX_DIGITS for g in m.groups()):
        return None
    start, last = int(m.group(1)), int(m.group(2))
    size = None if m.group(3) == "*" else int(m.group(3))
    if last < start or (size is not None and last >= size):
        return None
    return ContentRange(start, last + 1, size)
