"""Where keys are in a TOML text: lines for error messages that tomllib cannot give.

tomllib reports positions only for syntax errors; a loader that rejects a *value* still wants to
say ``agent.toml:12: mqtt.keepalive_s: …``. This module scans the text once (strings, comments,
arrays and inline tables understood, so nothing inside a string or a value is mistaken for a
key) and maps every key path to where it is defined:

* ``[table]`` and ``[[array]]`` headers, including dotted and quoted names; a header below an
  array of tables extends its last element, as TOML says;
* ``a.b.c = value`` dotted keys (``a`` and ``a.b`` are defined on that line too);
* inline tables ``{ k = v }`` and arrays, also across lines; an array's elements are not keys,
  but their lines are kept (:attr:`KeySite.items`), and an inline table in an array is a table
  at ``(…, index)``.

Key paths are tuples of key names and array indexes: ``("bus", 2, "url")`` is written
``bus[2].url`` (:func:`dotted_key`). Every function here is total: any text, even malformed,
gives an answer (possibly ``None``) and never an exception.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "KeyPath",
    "KeySite",
    "dotted_key",
    "item_line",
    "key_sites",
    "line_in_value",
    "line_of",
    "split_dotted_key",
]

KeyPath = tuple[str | int, ...]

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_\-]+")
_INDEX: Final = re.compile(r"\[(\d+)\]")
_LOOSE_NAME: Final = re.compile(r"[^.\[]+|\[")
# Deeper nesting than this is skipped, not indexed: recursion must stay far from Python's limit.
_MAX_DEPTH: Final = 64


@dataclass(frozen=True, slots=True)
class KeySite:
    """Where one key or table is defined in the text.

    ``line`` is the 1-based line of the key (of the header for a ``[table]``, of the opening
    brace for an inline table in an array). ``start`` and ``end`` are offsets of its value in
    the text: after the ``=`` up to the end of the value, or for a header table its body, from
    the line after the header up to the next header. ``items`` are the lines of the elements
    when the value is an array.
    """

    line: int
    start: int
    end: int
    items: tuple[int, ...] = ()


def key_sites(text: str) -> Mapping[KeyPath, KeySite]:
    """Every key and table path defined in *text*, with where it is (the first definition)."""
    return _Scanner(text).scan()


def line_of(text: str, path: Sequence[str | int], *, min_depth: int = 1) -> int | None:
    """The 1-based line defining the key or table at *path* in TOML *text*, best effort.

    A path not in the text falls back to its longest prefix that is, e.g. a missing
    ``("mqtt", "port")`` to the ``[mqtt]`` header; *min_depth* is the shortest prefix accepted
    (``len(path)``: only the key itself). None when nothing fits.
    """
    sites = key_sites(text)
    wanted = tuple(path)
    for depth in range(len(wanted), max(min_depth, 1) - 1, -1):
        site = sites.get(wanted[:depth])
        if site is not None:
            return site.line
    return None


def item_line(text: str, path: Sequence[str | int], index: int) -> int | None:
    """The line of element *index* of the array at *path*; else as :func:`line_of` *path*."""
    site = key_sites(text).get(tuple(path))
    if site is not None and 0 <= index < len(site.items):
        return site.items[index]
    return line_of(text, path)


def line_in_value(
    text: str, path: Sequence[str | int], pattern: str | re.Pattern[str], nth: int = 1
) -> int | None:
    """The line of the *nth* match of *pattern* in the value of the key at *path*, or None.

    For a value spread over lines, e.g. the line of one name in a long array or of one key in a
    ``[table]``. A string *pattern* matches literally.
    """
    site = key_sites(text).get(tuple(path))
    if site is None:
        return None
    regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
    for seen, match in enumerate(regex.finditer(text, site.start, site.end), start=1):
        if seen >= nth:
            return text.count("\n", 0, match.start()) + 1
    return None


def dotted_key(path: Sequence[str | int]) -> str:
    """*path* as a user reads it: ``("bus", 2, "url")`` → ``bus[2].url``; odd names quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = part if _BARE_KEY.fullmatch(part) else _quoted(part)
        out = f"{out}.{name}" if out else name
    return out


def split_dotted_key(key: str) -> KeyPath:
    """The inverse of :func:`dotted_key`: ``bus[2].url`` → ``("bus", 2, "url")``.

    Lenient: quoted parts keep their dots, anything else up to a ``.`` or ``[`` is a name.
    """
    parts: list[str | int] = []
    pos, n = 0, len(key)
    while pos < n:
        c = key[pos]
        if c == ".":
            pos += 1
        elif c == "[" and (m := _INDEX.match(key, pos)):
            parts.append(int(m.group(1)))
            pos = m.end()
        elif c in "\"'":
            end = _string_end(key, pos)
            parts.append(_decode_key(key[pos:end]))
            pos = end
        else:
            m2 = _LOOSE_NAME.match(key, pos)
            assert m2 is not None  # a non-empty remainder always matches one of the two
            parts.append(m2.group())
            pos = m2.end()
    return tuple(parts)


def _quoted(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'


def _decode_key(raw: str) -> str:
    """A quoted key's name, decoding escapes as TOML does when the quoting is whole."""
    try:
        value = tomllib.loads(f"k = {raw}")["k"]
    except (tomllib.TOMLDecodeError, KeyError):
        return raw.strip("\"'")
    return value if isinstance(value, str) else raw.strip("\"'")


def _string_end(text: str, pos: int) -> int:
    """Offset just past the string starting at *pos* (any of TOML's four kinds), or the line's end
    for an unterminated one."""
    n = len(text)
    quote = text[pos]
    if text.startswith(quote * 3, pos):
        pos += 3
        while pos < n:
            if quote == '"' and text[pos] == "\\":
                pos += 2
            elif text.startswith(quote * 3, pos):
                pos += 3
                # Up to two more quotes belong to the content: """a""""" is 'a""'.
                for _ in range(2):
                    if pos < n and text[pos] == quote:
                        pos += 1
                return pos
            else:
                pos += 1
        return n
    pos += 1
    while pos < n:
        c = text[pos]
        if c == "\\" and quote == '"':
            pos += 2
        elif c == quote:
            return pos + 1
        elif c == "\n":
            return pos
        else:
            pos += 1
    return n


class _Scanner:
    """One pass over the text, recording where each key path is first defined."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.sites: dict[KeyPath, KeySite] = {}
        # Element count of each array of tables, by its concrete path.
        self.arrays: dict[KeyPath, int] = {}
        # Header tables wait for the next header to know where their body ends.
        self.open_table: tuple[KeyPath, int, int] | None = None

    def scan(self) -> dict[KeyPath, KeySite]:
        table: KeyPath = ()
        while self.pos < self.n:
            self.skip_blanks()
            if self.pos >= self.n:
                break
            c = self.text[self.pos]
            if c in "\r\n":
                self.pos += 1
            elif c == "#":
                self.skip_line()
            elif c == "[":
                table = self.header(table)
                self.skip_line()
            else:
                self.keyval(table, 0)
                self.skip_line()
        self.close_table(self.n)
        return self.sites

    # -- positions ----------------------------------------------------------------------------

    def line_at(self, offset: int) -> int:
        return bisect.bisect_right(self.line_starts, offset)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < self.n else ""

    def skip_blanks(self) -> None:
        while self.pos < self.n and self.text[self.pos] in " \t":
            self.pos += 1

    def skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = self.n if end < 0 else end + 1

    def skip_space_in_value(self) -> None:
        """Blanks, newlines and comments, as arrays allow between elements."""
        while self.pos < self.n:
            c = self.text[self.pos]
            if c in " \t\r\n":
                self.pos += 1
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = self.n if end < 0 else end
            else:
                return

    def define(self, path: KeyPath, site: KeySite) -> None:
        self.sites.setdefault(path, site)

    # -- headers and keys ---------------------------------------------------------------------

    def header(self, table: KeyPath) -> KeyPath:
        start = self.pos
        line = self.line_at(start)
        array = self.text.startswith("[[", start)
        self.pos += 2 if array else 1
        names = self.key()
        self.skip_blanks()
        closing = "]]" if array else "]"
        if names is None or not self.text.startswith(closing, self.pos):
            return table  # malformed: keep adding to the table before it
        self.pos += len(closing)
        self.close_table(start)
        body = self.text.find("\n", self.pos)
        body = self.n if body < 0 else body + 1

        concrete: KeyPath = ()
        for name in names[:-1]:
            concrete = self.descend((*concrete, name))
            self.define(concrete, KeySite(line, body, body))
        last: KeyPath = (*concrete, names[-1])
        if array:
            count = self.arrays.get(last, 0)
            self.arrays[last] = count + 1
            self.define(last, KeySite(line, body, body))
            table = (*last, count)
        else:
            table = last
        self.open_table = (table, line, body)
        return table

    def close_table(self, end: int) -> None:
        if self.open_table is not None:
            path, line, body = self.open_table
            self.define(path, KeySite(line, body, max(body, end)))
            self.open_table = None

    def descend(self, path: KeyPath) -> KeyPath:
        """A header name through an array of tables means its last element."""
        count = self.arrays.get(path)
        return path if count is None else (*path, count - 1)

    def key(self) -> list[str] | None:
        """A dotted key at the current position, or None (position then unspecified)."""
        names: list[str] = []
        while True:
            self.skip_blanks()
            c = self.peek()
            if c in ("'", '"'):
                end = _string_end(self.text, self.pos)
                names.append(_decode_key(self.text[self.pos : end]))
                self.pos = end
            else:
                m = _BARE_KEY.match(self.text, self.pos)
                if m is None:
                    return None
                names.append(m.group())
                self.pos = m.end()
            self.skip_blanks()
            if self.peek() != ".":
                return names
            self.pos += 1

    def keyval(self, table: KeyPath, depth: int) -> bool:
        """``key = value`` in *table*; False if there is no such thing here."""
        line = self.line_at(self.pos)
        names = self.key()
        if names is None or self.peek() != "=":
            return False
        self.pos += 1
        self.skip_blanks()
        path: KeyPath = (*table, *names)
        start = self.pos
        items = self.value(path, depth)
        for k in range(len(table) + 1, len(path)):
            self.define(path[:k], KeySite(line, start, self.pos))
        self.define(path, KeySite(line, start, self.pos, items))
        return True

    # -- values -------------------------------------------------------------------------------

    def value(self, path: KeyPath, depth: int) -> tuple[int, ...]:
        """Skip the value here, defining the keys inside it; its elements' lines if an array."""
        c = self.peek()
        if c in ("'", '"'):
            self.pos = _string_end(self.text, self.pos)
        elif c in "[{" and depth >= _MAX_DEPTH:
            self.skip_nested()
        elif c == "[":
            return self.array(path, depth + 1)
        elif c == "{":
            self.inline_table(path, depth + 1)
        else:
            while self.pos < self.n and self.text[self.pos] not in ",]}#\r\n":
                self.pos += 1
        return ()

    def array(self, path: KeyPath, depth: int) -> tuple[int, ...]:
        self.pos += 1
        items: list[int] = []
        while True:
            self.skip_space_in_value()
            if self.peek() in ("]", ""):
                self.pos = min(self.pos + 1, self.n)
                return tuple(items)
            start = self.pos
            line = self.line_at(start)
            items.append(line)
            element: KeyPath = (*path, len(items) - 1)
            is_table = self.peek() == "{"
            self.value(element, depth)
            if is_table:
                self.define(element, KeySite(line, start, self.pos))
            self.skip_space_in_value()
            c = self.peek()
            if c == ",":
                self.pos += 1
            elif c == "]":
                self.pos += 1
                return tuple(items)
            else:
                return tuple(items)  # malformed: stop here

    def inline_table(self, path: KeyPath, depth: int) -> None:
        self.pos += 1
        while True:
            self.skip_space_in_value()
            if self.peek() in ("}", ""):
                self.pos = min(self.pos + 1, self.n)
                return
            if not self.keyval(path, depth):
                return
            self.skip_space_in_value()
            c = self.peek()
            if c == ",":
                self.pos += 1
            else:
                if c == "}":
                    self.pos += 1
                return

    def skip_nested(self) -> None:
        """Skip a too deeply nested array or inline table without recursion."""
        level = 0
        while self.pos < self.n:
            c = self.text[self.pos]
            if c in ("'", '"'):
                self.pos = _string_end(self.text, self.pos)
                continue
            if c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = self.n if end < 0 else end
                continue
            self.pos += 1
            if c in "[{":
                level += 1
            elif c in "]}":
                level -= 1
                if level <= 0:
                    return
