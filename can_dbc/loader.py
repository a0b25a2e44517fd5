"""Load DBC files as real vehicles have them: repair known quirks, then parse with cantools.

cantools (even with ``strict=False``) refuses many DBC files found in the field. This module puts
a *repair pass* in front of it: :func:`repair_dbc_text` reads the text with its own lenient
tokenizer, checks every statement against the DBC grammar cantools understands, and rewrites
what it can with a :class:`~can_dbc.diagnostics.DbcDiagnostic` for every change. The repaired
text keeps every line where it was, so line numbers in warnings and errors are those of the
original file. What cannot be repaired safely raises :class:`~can_dbc.errors.DbcLoadError` naming
file and line.

Repairs (each one a warning; with ``strict=True`` the first one is raised as an error instead):

* **Frame ids above 0x7FF without the extended flag** (bit 31): the message is taken as a 29-bit
  extended frame, and every statement that refers to the id (``CM_``, ``BA_``, ``VAL_``,
  ``SIG_VALTYPE_``, ``SG_MUL_VAL_``, ``BO_TX_BU_``, ``SIG_GROUP_``, ``BA_REL_``) follows.
* **Frame ids that do not fit in 29 bits** even without bit 31 (``0x40140639``): the message is
  *dropped*, with everything that refers to it. No CAN frame can carry such an id, so the message
  could never be decoded; masking it to 29 bits instead would invent an id that may belong to a
  real message (``0x40000682`` would become ``0x682``) and decode foreign frames with the wrong
  layout. ``VECTOR__INDEPENDENT_SIG_MSG`` (CANdb++'s holder for unassigned signals, which
  cantools ignores) is left alone.
* **Names that are not identifiers** — starting with a digit (``2017_5``, ``0_COUNTER``) or
  containing non-ASCII letters: renamed everywhere in the file (``_2017_5``, ``Gro_e``), one
  warning per name giving old → new.
* **Numbers without a digit before the point** (``.25``, ``-.5``): read as ``0.25``, ``-0.5``;
  whole numbers written as ``8.0`` or ``0x1F`` where an integer is required: read as integers.
* **Comments that name no object kind** (``CM_ 145 "…";``) and **signal comments without a
  signal name** (``CM_ SG_ 145 "…";``): turned into the message comment of that id, unless the
  message already has one, in which case they are dropped.
* **Tables and types for signals that do not exist** (``VAL_``, ``SIG_VALTYPE_``): dropped.
* **Attributes cantools cannot take**: ``BA_`` of an attribute no ``BA_DEF_`` defines, values
  that are not numbers where the type needs one, enum values out of range, enum labels where an
  index is expected (converted), definitions with one bound or defined twice (the earlier one
  is dropped), the attributes cantools interprets (``GenMsgSendType``, ``GenSigStartValue``,
  ``SPN``, ``DBName``, ``VFrameFormat``) defined with a type it cannot use, an INT
  ``VFrameFormat`` without a default (0 is added).
* **Syntax slips**: a missing ``;`` before the next statement or at the end of the file, missing
  ``:`` after ``NS_``/``BS_``/``BU_``/in ``SIG_VALTYPE_``, a missing ``BS_:`` after the ``NS_``
  section, bit timing after ``BS_:``, commas in the ``BU_`` list, receivers or enum values
  separated by spaces, a missing unit string or receiver or message sender, a ``;`` after a
  signal, zero-length signals (dropped), stray ``;``, statements cantools does not support
  (``SGTYPE_``, ``CAT_``, ``FILTER`` …: dropped), odd whitespace (no-break spaces, form feeds),
  and garbage after the last statement (dropped).
* Any other malformed statement that carries no decoding information (comments, attributes,
  value tables, node lists, environment variables) is dropped. A malformed message, signal,
  ``SIG_VALTYPE_`` or ``SG_MUL_VAL_``, or unrecognised text between statements, is an error.

Bytes are read as UTF-8 (a BOM is skipped); a file that is not valid UTF-8 is read as cp1252,
the code page CANdb++ writes, with a warning. CR LF and lone CR line ends are accepted.

Most files need no repair, so the drivers hand the text to cantools first and run the repair
pass only when cantools refuses it; the repair pass leaves any text cantools accepts as it is
(the tests hold it to that on every opendbc file), so both ways give the same database.

After parsing, the loader warns about what cantools accepts silently with ``strict=False``:
several messages with one frame id or one name, several signals with one name in a message, and
signals that overlap or do not fit in their message. These stay warnings in strict mode, which
only forbids *repairs*. Should cantools still reject the repaired text for a semantic reason
(its attribute handling has corners the repair pass does not model), the file is loaded once
more without attributes, with a warning; only if that fails too is it an error.
"""

from __future__ import annotations

import codecs
import logging
import re
import threading
import unicodedata
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from os import PathLike, fspath
from pathlib import Path
from typing import Final, NamedTuple

from cantools.database.can import Database, Message, Signal

from can_dbc.diagnostics import DbcDiagnostic
from can_dbc.errors import DbcLoadError

__all__ = ["LoadedDbc", "load_dbc", "load_dbc_string", "repair_dbc_text"]

_EXTENDED_FLAG: Final = 0x80000000
_MAX_STANDARD_ID: Final = 0x7FF
_MAX_EXTENDED_ID: Final = 0x1FFFFFFF
_VECTOR_INDEPENDENT: Final = "VECTOR__INDEPENDENT_SIG_MSG"
_NO_NODE: Final = "Vector__XXX"
# cantools expands SG_MUL_VAL_ ranges into lists; a hostile range would exhaust memory.
_MAX_MUX_VALUES: Final = 1_000_000
# Beyond this a "message" is not a CAN frame; checking signal layout bit by bit would be wasteful.
_MAX_CHECKED_LENGTH: Final = 4096
_MAX_REPORTED_OVERLAPS: Final = 1000
# Longer digit strings are not frame ids or bit positions, and Python refuses to convert
# decimal strings of more than 4300 digits.
_MAX_DIGITS: Final = 30

# The keywords cantools' tokenizer knows; any of them outside its grammar makes cantools fail.
_KEYWORDS: Final = frozenset(
    {
        "BA_", "BA_DEF_", "BA_DEF_DEF_", "BA_DEF_DEF_REL_", "BA_DEF_REL_", "BA_DEF_SGTYPE_",
        "BA_REL_", "BA_SGTYPE_", "BO_", "BO_TX_BU_", "BS_", "BU_", "BU_BO_REL_", "BU_EV_REL_",
        "BU_SG_REL_", "CAT_", "CAT_DEF_", "CM_", "ENVVAR_DATA_", "EV_", "EV_DATA_", "FILTER",
        "NS_", "NS_DESC_", "SG_", "SG_MUL_VAL_", "SGTYPE_", "SGTYPE_VAL_", "SIG_GROUP_",
        "SIG_TYPE_REF_", "SIG_VALTYPE_", "SIGTYPE_VALTYPE_", "VAL_", "VAL_TABLE_", "VERSION",
    }
)  # fmt: skip
# Statements cantools' grammar accepts at the top level.
_TOP_LEVEL: Final = frozenset(
    {
        "VERSION", "NS_", "BS_", "BU_", "BO_", "EV_", "ENVVAR_DATA_", "CM_", "BA_DEF_",
        "BA_DEF_DEF_", "BA_", "BA_DEF_REL_", "BA_DEF_DEF_REL_", "BA_REL_", "VAL_", "VAL_TABLE_",
        "SIG_VALTYPE_", "SG_MUL_VAL_", "BO_TX_BU_", "SIG_GROUP_",
    }
)  # fmt: skip
# The kind of token that follows each statement keyword, and the object kinds some take first.
_FIRST_TOKEN: Final = {
    "VERSION": ("str",),
    "NS_": (":",),
    "BS_": (":",),
    "BU_": (":",),
    "BO_": ("num",),
    "EV_": ("word",),
    "ENVVAR_DATA_": ("word",),
    "CM_": ("str", "num"),
    "BA_DEF_": ("str",),
    "BA_DEF_DEF_": ("str",),
    "BA_": ("str",),
    "BA_DEF_REL_": ("str",),
    "BA_DEF_DEF_REL_": ("str",),
    "BA_REL_": ("str",),
    "VAL_": ("num", "word"),
    "VAL_TABLE_": ("word",),
    "SIG_VALTYPE_": ("num",),
    "SG_MUL_VAL_": ("num",),
    "BO_TX_BU_": ("num",),
    "SIG_GROUP_": ("num",),
}
_QUALIFIERS: Final = {
    "CM_": frozenset({"BO_", "SG_", "BU_", "EV_"}),
    "BA_DEF_": frozenset({"BO_", "SG_", "BU_", "EV_"}),
    "BA_DEF_REL_": frozenset({"BU_SG_REL_", "BU_BO_REL_", "BU_EV_REL_"}),
}
_ATTRIBUTE_STATEMENTS: Final = frozenset(
    {"BA_DEF_", "BA_DEF_DEF_", "BA_", "BA_DEF_REL_", "BA_DEF_DEF_REL_", "BA_REL_"}
)
# Statements whose loss would change how frames decode: these are never dropped.
_ESSENTIAL: Final = frozenset({"BO_", "SIG_VALTYPE_", "SG_MUL_VAL_"})
_NUMERIC_ATTRIBUTE_TYPES: Final = frozenset({"INT", "HEX", "FLOAT"})
# Attributes cantools interprets, and the types it can interpret them as (it asserts the type of
# the converted value, so e.g. a STRING "GenSigStartValue" makes it refuse the whole file).
_ATTRIBUTE_TYPES: Final = {
    "GenMsgSendType": frozenset({"ENUM", "STRING"}),
    "GenSigStartValue": frozenset({"INT", "HEX", "FLOAT", "ENUM"}),
    "SPN": frozenset({"INT", "HEX", "ENUM"}),
    "DBName": frozenset({"STRING"}),
    "VFrameFormat": frozenset({"ENUM", "INT"}),
}
# cantools reads an INT VFrameFormat as an index into its own 16 frame formats.
_VFRAMEFORMAT_CHOICES: Final = 16

# One match per token, with the whitespace and // comments before it: half the matches of a
# tokenizer that yields whitespace separately, which is what the time goes into. The token is
# optional so that trailing whitespace ends in one empty-token match instead of a rescan per
# character. STRING and NUMBER accept what cantools' tokenizer accepts, and ".5"; WORD takes
# any Unicode letters so that names needing a rename are one token.
_TOKEN_RE: Final = re.compile(
    r"(?:[ \t\n]+|//[^\n]*)*"
    r'(?:(?P<str>"(?:\\"|[^"])*?")'
    r"|(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?!\w))"
    r"|(?P<word>\w+)"
    r"|(?P<punct>[()\[\],|@;:+-])"
    r"|(?P<oddws>[^\S \t\n]|[\ufeff\u200b])"
    r"|(?P<bad>.))?",
    re.DOTALL,
)
_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT_RE: Final = re.compile(r"[-+]?\d+\Z")
_HEX_RE: Final = re.compile(r"0[xX][0-9A-Fa-f]+\Z")
_MUX_RE: Final = re.compile(r"M|m\d+M?\Z")
_UNKNOWN_KEYWORD_RE: Final = re.compile(r"[A-Z][A-Z0-9_]*_\Z")
_COMMENT_RE: Final = re.compile(r"//[^\n]*")
# Numbers that make cantools take minutes or gigabytes: ints from "1e999999999", message
# lengths, bit positions and multiplexer ranges in the millions (it builds lists that long).
# The repair pass refuses them; the limits below are the ones this pattern checks.
_SLOW_FOR_CANTOOLS_RE: Final = re.compile(
    r"\d\.?\d*[eE]\+?0*\d{4}"
    r"|^[ \t]*BO_[ \t]+\d+[ \t]+\w+[ \t]*:[ \t]*\d{6}"
    r"|^[ \t]*SG_[^\n:]*:[ \t]*(?:\d{7}|\d+[ \t]*\|[ \t]*\d{7})"
    r"|SG_MUL_VAL_[ \t]+\d+[ \t]+\w+[ \t]+\w+[^;]*?\d{6}",
    re.MULTILINE,
)
_MAX_MESSAGE_LENGTH: Final = 99_999
_MAX_BIT: Final = 999_999


@dataclass(frozen=True, slots=True)
class LoadedDbc:
    """A DBC file loaded by the tolerant loader.

    ``database`` is the cantools database; ``warnings`` lists every repair and suspicious finding,
    in file order, with lines of the original file.
    """

    path: str
    database: Database
    warnings: tuple[DbcDiagnostic, ...]


# --------------------------------------------------------------------------------------------
# Tokens and statements


class _Tok(NamedTuple):
    kind: str  # "str", "num", "word", "kw", "bad", or the punctuation character itself
    text: str
    start: int
    end: int
    bol: bool  # first token on its line


@dataclass(slots=True)
class _Stmt:
    kw: str
    toks: list[_Tok]  # keyword first; the terminating ";" is kept apart
    semi: _Tok | None = None
    needs_semi: bool = True
    signals: list[list[_Tok]] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.toks[0].start

    @property
    def end(self) -> int:
        if self.semi is not None:
            return self.semi.end
        if self.signals:
            return self.signals[-1][-1].end
        return self.toks[-1].end


@dataclass(slots=True)
class _Msg:
    raw_id: int
    name: str
    signals: dict[str, int]  # signal name as written → line
    final_id: int | None = None  # None: dropped
    vector: bool = False
    refs_dropped: int = 0
    drop_note: int | None = None  # index of the warning that announced the drop


@dataclass(frozen=True, slots=True)
class _MessageInfo:
    """Where a message the text gives cantools is, for the checks after parsing."""

    name: str
    line: int
    signal_lines: dict[str, int]


@dataclass(frozen=True, slots=True)
class _AttrDef:
    type_name: str
    choices: tuple[str, ...]
    index_range: int | None = None  # values are indices into this many choices


class _Reject(Exception):  # noqa: N818 - internal control flow, not an error users see
    def __init__(self, reason: str, tok: _Tok | None = None, tally: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tok = tok
        self.tally = tally  # rejects with one tally key share one warning


class _Fatal(Exception):  # noqa: N818 - carries a DbcLoadError out of deep helpers
    def __init__(self, error: DbcLoadError) -> None:
        super().__init__(str(error))
        self.error = error


def _describe(tok: _Tok | None) -> str:
    if tok is None:
        return "the end of the statement"
    text = tok.text if len(tok.text) <= 40 else tok.text[:37] + "..."
    return repr(text)


def _number_value(text: str) -> Decimal | None:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


class _Cursor:
    """Walks one statement's tokens, collecting the edits and notes its repairs need."""

    __slots__ = ("edits", "i", "names", "notes", "toks")

    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.i = 1  # the keyword is toks[0]
        self.edits: list[tuple[int, int, str]] = []
        self.notes: list[tuple[int, str]] = []
        self.names: list[tuple[_Tok, str]] = []

    def peek(self, ahead: int = 0) -> _Tok | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def at(self, kind: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok is not None and tok.kind == kind

    def at_end(self) -> bool:
        return self.i >= len(self.toks)

    def take(self, what: str) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise _Reject(f"expected {what}, found the end of the statement", self.last())
        self.i += 1
        return tok

    def last(self) -> _Tok:
        return self.toks[min(self.i, len(self.toks)) - 1]

    def expect(self, kind: str, what: str) -> _Tok:
        tok = self.peek()
        if tok is None or tok.kind != kind:
            if tok is None:
                raise _Reject(f"expected {what}, found the end of the statement", self.last())
            raise _Reject(f"expected {what}, found {_describe(tok)}", tok)
        self.i += 1
        return tok

    def punct(self, char: str, what: str | None = None) -> _Tok:
        return self.expect(char, what or f"'{char}'")

    def string(self, what: str) -> _Tok:
        return self.expect("str", what)

    def keyword(self, *words: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok.kind == "kw" and tok.text in words:
            self.i += 1
            return tok.text
        return None

    def name(self, role: str) -> _Tok:
        tok = self.expect("word", f"a {role} name")
        self.names.append((tok, role))
        return tok

    def plain_word(self, what: str) -> _Tok:
        """A word that is not a name (so never renamed): it must be one cantools can read."""
        tok = self.expect("word", what)
        if not _IDENT_RE.match(tok.text):
            raise _Reject(f"expected {what}, found {_describe(tok)}", tok)
        return tok

    def end(self, what: str = "the end of the statement") -> None:
        tok = self.peek()
        if tok is not None:
            raise _Reject(f"expected {what}, found {_describe(tok)}", tok)

    def note(self, tok: _Tok, message: str) -> None:
        self.notes.append((tok.start, message))

    def replace(self, tok: _Tok, text: str) -> None:
        # A later repair of the same token (a hex id that also needs the extended flag) wins.
        self.edits = [e for e in self.edits if (e[0], e[1]) != (tok.start, tok.end)]
        self.edits.append((tok.start, tok.end, text))

    def insert(self, offset: int, text: str) -> None:
        self.edits.append((offset, offset, text))

    def number(self, what: str = "a number") -> str:
        tok = self.take(what)
        if tok.kind != "num":
            raise _Reject(f"expected {what}, found {_describe(tok)}", tok)
        return self._fix_leading_dot(tok)

    def _fix_leading_dot(self, tok: _Tok) -> str:
        text = tok.text
        body = text.lstrip("+-")
        if body.startswith("."):
            fixed = text[: len(text) - len(body)] + "0" + body
            self.replace(tok, fixed)
            self.note(tok, f"number {text!r} has no digit before the point; read it as {fixed}")
            return fixed
        return text

    def integer(self, what: str = "a whole number") -> tuple[int, _Tok]:
        tok = self.take(what)
        if len(tok.text) > _MAX_DIGITS:
            raise _Reject(f"expected {what}, found the overlong number {_describe(tok)}", tok)
        if tok.kind == "num":
            if _INT_RE.match(tok.text):
                return int(tok.text), tok
            value = _number_value(self._fix_leading_dot(tok))
            if value is not None and value.adjusted() < _MAX_DIGITS and value % 1 == 0:
                whole = int(value)
                self.notes = [n for n in self.notes if n[0] != tok.start]
                self.replace(tok, str(whole))
                self.note(tok, f"{what} written as {tok.text!r}; read it as {whole}")
                return whole, tok
        elif tok.kind == "word" and _HEX_RE.match(tok.text):
            whole = int(tok.text, 16)
            self.replace(tok, str(whole))
            self.note(tok, f"{what} written in hex as {tok.text!r}; read it as {whole}")
            return whole, tok
        raise _Reject(f"expected {what}, found {_describe(tok)}", tok)

    def comma_list(self, item: Callable[[], object], what: str) -> None:
        """Read ``item (',' item)*``, inserting commas where only spaces separate items."""
        item()
        noted = False
        while not self.at_end():
            if self.at(","):
                self.i += 1
                item()
            elif self.at("word") or self.at("str"):
                prev = self.toks[self.i - 1]
                self.insert(prev.end, ",")
                if not noted:
                    self.note(prev, f"{what} separated by spaces; inserted commas")
                    noted = True
                item()
            else:
                return


# --------------------------------------------------------------------------------------------
# The repair pass


class _Repairer:
    """One repair pass over one text; see :func:`repair_dbc_text`."""

    def __init__(self, text: str, path: str, *, drop_attributes: bool = False) -> None:
        self.text = text
        self.path = path
        self.drop_attributes = drop_attributes
        self.diags: list[DbcDiagnostic] = []
        self.edits: list[tuple[int, int, str]] = []
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.toks: list[_Tok] = []
        self.stmts: list[_Stmt] = []
        self.messages: list[_Msg] = []
        self.by_raw: dict[int, _Msg] = {}
        self.by_final: dict[int, _Msg] = {}
        self.signals_by_final: dict[int, set[str]] = {}
        self.attr_defs: dict[str, _AttrDef] = {}
        self.rel_defs: dict[str, _AttrDef] = {}
        self.commented_ids: set[int] = set()
        self.defaults: dict[str, str] = {}  # attribute → default as written (the last wins)
        self.rejected_defs: set[str] = set()
        self.tallies: dict[str, list[int]] = {}  # key → [index of its warning, count]
        self.words: set[str] = set()
        self.renames: dict[str, str] = {}
        self.new_names: set[str] = set()

    # -- small helpers ------------------------------------------------------------------------

    def line_of(self, offset: int) -> int:
        return bisect_left(self.newlines, offset) + 1

    def warn(self, offset: int, message: str) -> int:
        self.diags.append(DbcDiagnostic(self.path, self.line_of(offset), message))
        return len(self.diags) - 1

    def fatal(self, offset: int, reason: str) -> _Fatal:
        return _Fatal(DbcLoadError(self.path, self.line_of(offset), reason))

    def drop_span(self, start: int, end: int) -> None:
        # Keep the newlines so every later line stays where it was in the original file.
        self.edits.append((start, end, _newlines(self.text, start, end)))

    def commit(self, cur: _Cursor) -> None:
        self.edits.extend(cur.edits)
        for offset, message in cur.notes:
            self.warn(offset, message)
        for tok, role in cur.names:
            if not _IDENT_RE.match(tok.text):
                self.edits.append((tok.start, tok.end, self.rename(tok, role)))

    def rename(self, tok: _Tok, role: str) -> str:
        old = tok.text
        new = self.renames.get(old)
        if new is not None:
            return new
        chars = []
        for ch in unicodedata.normalize("NFKD", old):
            if ch.isascii() and (ch.isalnum() or ch == "_"):
                chars.append(ch)
            elif not unicodedata.combining(ch):
                chars.append("_")
        base = "".join(chars)
        if not base or base[0].isdigit():
            base = "_" + base
        new, k = base, 1
        while new in self.words or new in self.new_names:
            k += 1
            new = f"{base}_{k}"
        self.renames[old] = new
        self.new_names.add(new)
        why = "names must not start with a digit" if old[0].isdigit() else "names must be ASCII"
        self.warn(tok.start, f"renamed {role} {old!r} to {new!r} everywhere in the file ({why})")
        return new

    # -- tokenizing ---------------------------------------------------------------------------

    def tokenize(self) -> None:
        toks = self.toks
        append = toks.append
        words = self.words
        find = self.text.find
        make = tuple.__new__  # what NamedTuple._make does, without a Python-level call
        bol = True
        odd_first: int | None = None
        odd_count = 0
        for m in _TOKEN_RE.finditer(self.text):
            kind = m.lastgroup
            if kind is None:
                continue  # whitespace at the end of the text
            start, end = m.span(kind)
            if find("\n", m.start(), start) >= 0:
                bol = True
            if kind == "oddws":
                self.edits.append((start, end, " "))
                odd_count += 1
                if odd_first is None:
                    odd_first = start
                continue
            text = m[kind]
            if kind == "word":
                words.add(text)
                if text in _KEYWORDS:
                    kind = "kw"
            elif kind == "punct":
                kind = text
            append(make(_Tok, (kind, text, start, end, bol)))
            bol = False
        if odd_first is not None:
            self.warn(
                odd_first,
                f"replaced {odd_count} unusual whitespace character(s) (no-break space, form "
                "feed …) with spaces",
            )

    # -- splitting the token stream into statements ------------------------------------------

    def split(self) -> None:
        toks = self.toks
        n = len(toks)
        i = 0
        while i < n:
            t = toks[i]
            if t.kind == "kw":
                kw = t.text
                if kw == "BO_":
                    i = self.split_message(i)
                elif kw == "NS_":
                    i = self.split_ns(i)
                elif kw in ("BS_", "VERSION"):
                    i = self.split_line(i)
                elif kw == "BU_":
                    i = self.split_nodes(i)
                elif kw in _TOP_LEVEL:
                    i = self.split_semi(i)
                elif kw == "SG_":
                    raise self.fatal(
                        t.start, "signal (SG_) outside a message: no BO_ line before it"
                    )
                else:
                    i = self.skip_unsupported(i)
            elif t.kind == ";":
                self.drop_span(t.start, t.end)
                self.warn(t.start, "dropped a stray ';'")
                i += 1
            elif t.kind == "word" and _UNKNOWN_KEYWORD_RE.match(t.text) and t.bol:
                i = self.skip_unsupported(i)
            else:
                i = self.skip_garbage(i)

    def next_statement(self, i: int) -> int:
        """Index of the first token from ``i`` on that starts a line with a top-level keyword."""
        toks = self.toks
        n = len(toks)
        while i < n and not (toks[i].bol and toks[i].kind == "kw" and toks[i].text in _TOP_LEVEL):
            i += 1
        return i

    def skip_garbage(self, i: int) -> int:
        j = self.next_statement(i + 1)
        first = self.toks[i]
        if j < len(self.toks):
            raise self.fatal(
                first.start,
                f"unrecognised text starting with {_describe(first)}; expected a DBC keyword "
                "such as BO_, CM_, BA_ or VAL_",
            )
        self.drop_span(first.start, self.toks[j - 1].end)
        self.warn(
            first.start,
            f"dropped unrecognised text after the last statement ({_describe(first)} …)",
        )
        return j

    def skip_unsupported(self, i: int) -> int:
        end, semi = self.scan_semi(i)
        first = self.toks[i]
        stop = self.toks[end].end if semi else self.toks[end - 1].end
        self.drop_span(first.start, stop)
        self.warn(first.start, f"dropped a {first.text} statement (cantools does not support it)")
        return end + 1 if semi else end

    def scan_semi(self, i: int) -> tuple[int, bool]:
        """Find where the ``;``-terminated statement at ``i`` ends: (index of ';', True), or
        (index of the next statement, False) when the ';' is missing."""
        toks = self.toks
        n = len(toks)
        kw = toks[i].text
        j = i + 1
        while j < n:
            u = toks[j]
            if u.kind == ";":
                return j, True
            if u.bol and u.kind == "kw" and u.text in _TOP_LEVEL:
                # "CM_\nBO_ 1 …" or "BA_ "x"\nBO_ 1 …" continue their statement; anything
                # else on a new line that starts with a statement keyword is a new statement.
                continuation = (
                    u.text in ("BO_", "BU_", "EV_")
                    and kw in ("CM_", "BA_DEF_", "BA_")
                    and j <= i + (2 if kw == "BA_" else 1)
                )
                if not continuation:
                    return j, False
            j += 1
        return n, False

    def split_semi(self, i: int) -> int:
        end, semi = self.scan_semi(i)
        self.stmts.append(
            _Stmt(self.toks[i].text, self.toks[i:end], self.toks[end] if semi else None)
        )
        return end + 1 if semi else end

    def split_line(self, i: int) -> int:
        toks = self.toks
        j = i + 1
        while j < len(toks) and toks[j].kind != "kw" and not toks[j].bol:
            j += 1
        self.stmts.append(_Stmt(toks[i].text, toks[i:j], needs_semi=False))
        return j

    def split_nodes(self, i: int) -> int:
        toks = self.toks
        j = i + 1
        if j < len(toks) and toks[j].kind == ":":
            j += 1
        while j < len(toks) and toks[j].kind in ("word", ","):
            j += 1
        self.stmts.append(_Stmt("BU_", toks[i:j], needs_semi=False))
        return j

    def split_ns(self, i: int) -> int:
        toks = self.toks
        n = len(toks)
        j = i + 1
        if j < n and toks[j].kind == ":":
            j += 1
        else:
            self.edits.append((toks[i].end, toks[i].end, " :"))
            self.warn(toks[i].start, "missing ':' after NS_; inserted it")
        while j < n:
            u = toks[j]
            nxt = toks[j + 1] if j + 1 < n else None
            if nxt is not None and nxt.kind == ":":
                break  # "BS_ :" or "BU_ :" — where cantools ends the section too
            if u.kind not in ("kw", "word"):
                break
            if u.kind == "kw" and u.text in _TOP_LEVEL and self.starts_statement(j):
                break
            if not u.text.isascii():
                # cantools skips the list's words but cannot tokenize non-ASCII ones.
                self.drop_span(u.start, u.end)
                self.warn(u.start, f"dropped {u.text!r} from the NS_ list (not ASCII)")
            j += 1
        self.stmts.append(_Stmt("NS_", toks[i:j], needs_semi=False))
        if j < n and not (toks[j].kind == "kw" and toks[j].text in ("BS_", "BU_")):
            # cantools ends the NS_ section at the first "<token> :", which would be deep inside
            # the next statement (or in one the repairs drop); BS_: gives it the end it needs.
            self.edits.append((toks[j].start, toks[j].start, " BS_: "))
            self.warn(toks[j].start, "missing 'BS_:' after the NS_ section; inserted it")
        return j

    def starts_statement(self, j: int) -> bool:
        """Whether the keyword at ``j`` (inside an NS_ list) begins a real statement.

        An NS_ list is keywords, and statements start with a keyword too; what follows tells
        them apart: ``BA_ "Name" …`` is a statement, ``BA_`` then ``BO_ 1 Foo: …`` is not.
        """
        toks = self.toks
        kw = toks[j].text
        nxt = toks[j + 1] if j + 1 < len(toks) else None
        if nxt is None:
            return False
        after = toks[j + 2] if j + 2 < len(toks) else None
        if nxt.kind == "kw":
            qualifiers = _QUALIFIERS.get(kw)
            if qualifiers is None or nxt.text not in qualifiers or after is None:
                return False
            return after.kind in (("str",) if kw.startswith("BA_DEF") else ("num", "word"))
        if nxt.kind == "word" and _UNKNOWN_KEYWORD_RE.match(nxt.text):
            return False  # a vendor keyword in the list
        return nxt.kind in _FIRST_TOKEN.get(kw, ())

    def split_message(self, i: int) -> int:
        toks = self.toks
        n = len(toks)
        j = i + 1
        while j < n and toks[j].kind != "kw" and not toks[j].bol:
            j += 1
        stmt = _Stmt("BO_", toks[i:j], needs_semi=False)
        while j < n and toks[j].kind == "kw" and toks[j].text == "SG_":
            k = j + 1
            while k < n and toks[k].kind != "kw" and not toks[k].bol:
                k += 1
            stmt.signals.append(toks[j:k])
            j = k
        self.stmts.append(stmt)
        return j

    # -- messages -----------------------------------------------------------------------------

    def check_messages(self) -> None:
        for st in self.stmts:
            if st.kw == "BO_":
                self.check_message(st)
        for msg in self.messages:
            if msg.final_id is not None:
                self.by_final.setdefault(msg.final_id, msg)
                self.signals_by_final.setdefault(msg.final_id, set()).update(msg.signals)

    def check_message(self, st: _Stmt) -> None:
        cur = _Cursor(st.toks)
        try:
            raw_id, id_tok = cur.integer("a frame id")
            if raw_id < 0:
                raise _Reject(f"frame id {raw_id} is negative", id_tok)
            name_tok = cur.name("message")
            if not cur.at(":"):
                raise _Reject(
                    f"expected ':' after the message name, found {_describe(cur.peek())}",
                    cur.peek() or name_tok,
                )
            cur.i += 1
            length, length_tok = cur.integer("a message length")
            if not 0 <= length <= _MAX_MESSAGE_LENGTH:
                raise _Reject(f"message length {length} is impossible", length_tok)
            if re.match(r"[-+]?0\d", length_tok.text):
                # cantools reads the length with int(text, 0), which refuses "08".
                cur.replace(length_tok, str(length))
                cur.note(
                    length_tok,
                    f"message length written as {length_tok.text!r}; read it as {length}",
                )
            if cur.at_end():
                cur.insert(length_tok.end, f" {_NO_NODE}")
                cur.note(length_tok, f"message {name_tok.text!r} names no sender; used {_NO_NODE}")
            else:
                cur.name("node")
                if cur.at(";") and cur.i == len(cur.toks) - 1:
                    cur.note(cur.toks[-1], "dropped a ';' after the message header")
                    cur.replace(cur.toks[-1], "")
                    cur.i += 1
                cur.end("the end of the message header")
        except _Reject as r:
            line_tok = r.tok or st.toks[0]
            if st.toks[1:2] and st.toks[2:3] and st.toks[2].text == _VECTOR_INDEPENDENT:
                self.drop_vector_message(st, r.reason)
                return
            raise self.fatal(line_tok.start, f"malformed message (BO_): {r.reason}") from None

        msg = _Msg(raw_id, name_tok.text, {})
        msg.vector = name_tok.text == _VECTOR_INDEPENDENT
        if msg.vector:
            msg.final_id = raw_id  # cantools discards this message; its id does not matter
        elif raw_id & _EXTENDED_FLAG:
            if raw_id & ~_EXTENDED_FLAG > _MAX_EXTENDED_ID:
                msg.final_id = None
            else:
                msg.final_id = raw_id
        elif raw_id > _MAX_EXTENDED_ID:
            msg.final_id = None
        elif raw_id > _MAX_STANDARD_ID:
            msg.final_id = raw_id | _EXTENDED_FLAG
        else:
            msg.final_id = raw_id
        self.messages.append(msg)
        self.by_raw.setdefault(raw_id, msg)

        if msg.final_id is None:
            self.drop_span(st.start, st.end)
            msg.drop_note = self.warn(
                st.start,
                f"dropped message {msg.name!r}: frame id 0x{raw_id & ~_EXTENDED_FLAG:X} does not "
                "fit in 29 bits, so no CAN frame can carry it",
            )
            return
        if msg.final_id != raw_id:
            cur.replace(id_tok, str(msg.final_id))
            cur.note(
                id_tok,
                f"frame id 0x{raw_id:X} of message {msg.name!r} is above 0x7FF but lacks the "
                "extended flag (bit 31); treated it as a 29-bit extended id",
            )

        # cantools takes the one signal whose indicator ends in M as the multiplexer and then
        # parses every other indicator as m<number>; with no or several M it ignores them.
        indicators = [
            s[2].text for s in st.signals if len(s) > 3 and s[2].kind == "word" and s[3].kind == ":"
        ]
        strict_mux = sum(1 for text in indicators if text.endswith("M")) == 1
        signal_curs: list[_Cursor] = []
        for sig in st.signals:
            scur = _Cursor(sig)
            try:
                keep = self.check_signal(scur, msg, strict_mux)
            except _Reject as r:
                if msg.vector:
                    self.drop_vector_message(st, r.reason)
                    self.messages.pop()
                    return
                where = r.tok or sig[0]
                raise self.fatal(where.start, f"malformed signal (SG_): {r.reason}") from None
            if keep:
                signal_curs.append(scur)
            else:
                self.warn_commit(scur)
                self.drop_span(sig[0].start, sig[-1].end)
        self.commit(cur)
        for scur in signal_curs:
            self.commit(scur)

    def warn_commit(self, cur: _Cursor) -> None:
        for offset, message in cur.notes:
            self.warn(offset, message)

    def drop_vector_message(self, st: _Stmt, reason: str) -> None:
        self.drop_span(st.start, st.end)
        self.warn(st.start, f"dropped {_VECTOR_INDEPENDENT} (cantools ignores it anyway): {reason}")

    def check_signal(self, cur: _Cursor, msg: _Msg, strict_mux: bool) -> bool:
        name_tok = cur.name("signal")
        if cur.at("word"):
            mux = cur.take("a multiplexer indicator")
            fatal = not _IDENT_RE.match(mux.text) or (
                strict_mux and not mux.text.endswith("M") and not _MUX_RE.match(mux.text)
            )
            if fatal:
                # cantools would fail on it; without a multiplexer value the signal can only be
                # read as a plain one. (Where cantools ignores such an indicator, it stays, and
                # the loader reports it after parsing.)
                cur.edits.append(
                    (name_tok.end, mux.end, _newlines(self.text, name_tok.end, mux.end))
                )
                cur.note(
                    mux,
                    f"signal {name_tok.text!r} has the multiplexer indicator {mux.text!r}, which "
                    "is neither M, m<n> nor m<n>M; removed it, so the signal is read as a plain "
                    "signal",
                )
        cur.punct(":", "':' after the signal name")
        start, start_tok = cur.integer("a start bit")
        cur.punct("|")
        length, length_tok = cur.integer("a signal length")
        cur.punct("@")
        order_tok = cur.take("a byte order (0 or 1)")
        if order_tok.text not in ("0", "1"):
            raise _Reject(
                f"expected a byte order (0 or 1), found {_describe(order_tok)}", order_tok
            )
        sign = cur.take("'+' or '-'")
        if sign.kind not in ("+", "-"):
            raise _Reject(f"expected '+' or '-', found {_describe(sign)}", sign)
        cur.punct("(")
        cur.number("a scale")
        cur.punct(",")
        cur.number("an offset")
        cur.punct(")")
        cur.punct("[")
        cur.number("a minimum")
        cur.punct("|")
        cur.number("a maximum")
        close = cur.punct("]")
        if not 0 <= start <= _MAX_BIT:
            raise _Reject(f"start bit {start} is impossible", start_tok)
        if length > _MAX_BIT:
            raise _Reject(f"signal length {length} is impossible", length_tok)
        if cur.at("str"):
            cur.i += 1
        elif cur.at_end() or cur.at("word"):
            cur.insert(close.end, ' ""')
            cur.note(close, f'signal {name_tok.text!r} has no unit string; used ""')
        else:
            raise _Reject(f"expected a unit string, found {_describe(cur.peek())}", cur.peek())
        if cur.at_end():
            cur.insert(cur.toks[-1].end, f" {_NO_NODE}")
            cur.note(cur.toks[-1], f"signal {name_tok.text!r} names no receiver; used {_NO_NODE}")
        else:
            cur.comma_list(lambda: cur.name("node"), "receivers")
        if cur.at(";") and cur.i == len(cur.toks) - 1:
            cur.replace(cur.toks[-1], "")
            cur.note(cur.toks[-1], "dropped a ';' after the signal")
            cur.i += 1
        cur.end("the end of the signal")
        if length <= 0:
            cur.note(
                name_tok,
                f"dropped signal {name_tok.text!r} of message {msg.name!r}: its length is {length}",
            )
            return False
        # A second signal of the same name is reported after parsing.
        msg.signals.setdefault(name_tok.text, self.line_of(name_tok.start))
        return True

    # -- references to messages ---------------------------------------------------------------

    def lookup(self, raw: int) -> _Msg | None:
        msg = self.by_raw.get(raw)
        if msg is None:
            msg = self.by_final.get(raw)
        if msg is None and raw > _MAX_STANDARD_ID and not raw & _EXTENDED_FLAG:
            msg = self.by_final.get(raw | _EXTENDED_FLAG)
        return msg

    def ref(self, cur: _Cursor, what: str = "a frame id") -> tuple[_Msg | None, int, _Tok]:
        """Read a frame id that refers to a message; point it at the message's final id.

        Raises :class:`_Drop` when the message was dropped (the statement goes with it).
        """
        raw, tok = cur.integer(what)
        msg = self.lookup(raw)
        if msg is not None:
            if msg.final_id is None:
                msg.refs_dropped += 1
                raise _Drop
            if msg.final_id != raw:
                cur.replace(tok, str(msg.final_id))
        return msg, raw, tok

    # -- the other statements -----------------------------------------------------------------

    def check_statements(self) -> None:
        # Attribute definitions first: BA_ and BA_DEF_DEF_ are checked against them.
        for st in self.stmts:
            if st.kw == "BA_DEF_DEF_" and len(st.toks) > 2 and st.toks[1].kind == "str":
                value = st.toks[2].text.strip('"') if st.toks[2].kind in ("num", "str") else ""
                self.defaults[st.toks[1].text[1:-1]] = value
        last_definition: dict[tuple[str, str], _Stmt] = {}
        for st in self.stmts:
            if st.kw in ("BA_DEF_", "BA_DEF_REL_"):
                names = [t.text for t in st.toks[1:3] if t.kind == "str"][:1]
                for name in names:
                    last_definition[st.kw, name] = st
        for st in self.stmts:
            if st.kw in ("BA_DEF_", "BA_DEF_REL_"):
                names = [t.text for t in st.toks[1:3] if t.kind == "str"][:1]
                if names and last_definition[st.kw, names[0]] is not st:
                    # cantools keeps the last definition of a name but converts the default
                    # for every one, and fails where the types differ.
                    self.drop_span(st.start, st.end)
                    self.warn(st.start, f"dropped {st.kw} {names[0]}: it is defined again later")
                    continue
                if not self.check_statement(st) and st.kw == "BA_DEF_":
                    names = [t.text[1:-1] for t in st.toks if t.kind == "str"][:1]
                    self.rejected_defs.update(names)
            elif (
                st.kw == "CM_"
                and len(st.toks) > 2
                and st.toks[1].text == "BO_"
                and st.toks[2].kind == "num"
            ):
                text = st.toks[2].text
                whole = _INT_RE.match(text) and len(text) <= _MAX_DIGITS
                msg = self.lookup(int(text)) if whole else None
                if msg is not None and msg.final_id is not None:
                    self.commented_ids.add(msg.final_id)
        for st in self.stmts:
            if st.kw not in ("BO_", "BA_DEF_", "BA_DEF_REL_"):
                self.check_statement(st)

    def check_statement(self, st: _Stmt) -> bool:
        """Check, repair or drop one statement; return whether it is kept."""
        if self.drop_attributes and st.kw in _ATTRIBUTE_STATEMENTS:
            self.drop_span(st.start, st.end)
            return False
        check = self.CHECKS[st.kw]
        cur = _Cursor(st.toks)
        try:
            keep = check(self, st, cur)
        except _Drop:
            keep = False
        except _Reject as r:
            where = r.tok or st.toks[0]
            if st.kw in _ESSENTIAL:
                raise self.fatal(where.start, f"malformed {st.kw} statement: {r.reason}") from None
            self.drop_span(st.start, st.end)
            if r.tally is None:
                self.warn(where.start, f"dropped a malformed {st.kw} statement: {r.reason}")
            elif r.tally in self.tallies:
                self.tallies[r.tally][1] += 1
            else:
                index = self.warn(where.start, f"dropped a {st.kw} statement: {r.reason}")
                self.tallies[r.tally] = [index, 1]
            return False
        if not keep:
            self.drop_span(st.start, st.end)
            self.warn_commit(cur)
            return False
        if st.needs_semi and st.semi is None:
            last = st.toks[-1]
            cur.insert(last.end, ";")
            cur.note(last, f"missing ';' at the end of the {st.kw} statement; inserted it")
        self.commit(cur)
        return True

    def check_version(self, st: _Stmt, cur: _Cursor) -> bool:
        cur.string("a version string")
        cur.end()
        return True

    def check_ns(self, st: _Stmt, cur: _Cursor) -> bool:
        return True  # split_ns already made it acceptable

    def check_bs(self, st: _Stmt, cur: _Cursor) -> bool:
        if cur.at(":"):
            cur.i += 1
        else:
            cur.insert(st.toks[0].end, ":")
            cur.note(st.toks[0], "missing ':' after BS_; inserted it")
        if not cur.at_end():
            first, last = cur.toks[cur.i], cur.toks[-1]
            # An unclosed quote may make the timing span lines: they stay (line numbers).
            cur.edits.append((first.start, last.end, _newlines(self.text, first.start, last.end)))
            cur.note(first, "dropped the bit timing after BS_: (cantools does not read it)")
        return True

    def check_nodes(self, st: _Stmt, cur: _Cursor) -> bool:
        if cur.at(":"):
            cur.i += 1
        else:
            cur.insert(st.toks[0].end, ":")
            cur.note(st.toks[0], "missing ':' after BU_; inserted it")
        noted = False
        while not cur.at_end():
            tok = cur.take("a node name")
            if tok.kind == ",":
                cur.replace(tok, " ")
                if not noted:
                    cur.note(tok, "node list (BU_) separated by commas; removed them")
                    noted = True
            else:
                cur.names.append((tok, "node"))
        return True

    def check_comment(self, st: _Stmt, cur: _Cursor) -> bool:
        if cur.at("str"):
            self.comment_text(cur)
            return True
        kind_tok = cur.peek()
        kind = cur.keyword("BO_", "SG_", "BU_", "EV_")
        if kind in ("BU_", "EV_"):
            cur.name("node" if kind == "BU_" else "environment variable")
            self.comment_text(cur)
            return True
        if kind == "BO_":
            self.ref(cur)
            self.comment_text(cur)
            return True
        if kind == "SG_" and not cur.at("str", 1):
            self.ref(cur)
            cur.name("signal")
            self.comment_text(cur)
            return True
        if kind is None and not (cur.at("num") and cur.at("str", 1)):
            raise _Reject(
                f"expected a string, BO_, SG_, BU_ or EV_, found {_describe(kind_tok)}", kind_tok
            )
        # "CM_ 145 "…";" or "CM_ SG_ 145 "…";": a comment on message 145 that lost its kind
        # (or its signal name). Keep it as the message comment unless one exists already.
        msg, raw, id_tok = self.ref(cur)
        self.comment_text(cur)
        written = f"CM_ {'SG_ ' if kind else ''}{raw}"
        label = f"message {raw}" + (f" ({msg.name})" if msg is not None else "")
        final = raw if msg is None or msg.final_id is None else msg.final_id
        if final in self.commented_ids:
            cur.note(
                id_tok,
                f"dropped comment '{written} \"…\"' (no signal name or object kind): {label} "
                "has a comment already",
            )
            return False
        self.commented_ids.add(final)
        assert kind_tok is not None
        if kind == "SG_":
            cur.replace(kind_tok, "BO_")
        else:
            cur.insert(id_tok.start, "BO_ ")
        cur.note(
            id_tok,
            f"comment '{written} \"…\"' names no signal or object kind; made it the comment "
            f"of {label}",
        )
        return True

    def comment_text(self, cur: _Cursor) -> None:
        """Read the comment string, which ends the statement; escape quotes left bare in it."""
        first = cur.string("a comment string")
        last = cur.toks[-1]
        if cur.at_end() or last.kind != "str" or any(t.kind == "kw" for t in cur.toks[cur.i :]):
            cur.end()
            return
        # "said "hi" twice" splits into strings and words; the quotes pair up inside the
        # statement, so the text between the outer ones is the comment.
        inner = self.text[first.start + 1 : last.end - 1].replace('\\"', '"')
        cur.edits.append((first.start, last.end, '"' + inner.replace('"', '\\"') + '"'))
        cur.note(first, "comment has unescaped '\"' inside; escaped them")
        cur.i = len(cur.toks)

    def read_definition(self, cur: _Cursor, kinds: tuple[str, ...]) -> tuple[str, _AttrDef]:
        cur.keyword(*kinds)
        name = cur.string("an attribute name").text[1:-1]
        type_tok = cur.plain_word("an attribute type (INT, HEX, FLOAT, STRING or ENUM)")
        choices: list[str] = []
        if cur.at("str"):

            def item() -> None:
                choices.append(cur.string("an enum value").text[1:-1])

            first = cur.peek()
            cur.comma_list(item, "enum values")
            if type_tok.text in _NUMERIC_ATTRIBUTE_TYPES:
                raise _Reject(f"attribute {name!r} is {type_tok.text} but lists strings", first)
        else:
            numbers: list[_Tok] = []
            while cur.at("num"):
                number = cur.toks[cur.i]
                value = _number_value(number.text)
                if type_tok.text != "FLOAT" and (value is None or value.adjusted() >= _MAX_DIGITS):
                    raise _Reject(
                        f"attribute {name!r} has the overlong bound {number.text}", number
                    )
                numbers.append(number)
                choices.append(cur.number())
            if len(numbers) == 1 and type_tok.text in _NUMERIC_ATTRIBUTE_TYPES:
                raise _Reject(f"attribute {name!r} gives a minimum but no maximum", numbers[0])
        cur.end()
        return name, _AttrDef(type_tok.text, tuple(choices))

    def check_attr_def(self, st: _Stmt, cur: _Cursor) -> bool:
        name, definition = self.read_definition(cur, ("BO_", "SG_", "BU_", "EV_"))
        kind = definition.type_name
        allowed = _ATTRIBUTE_TYPES.get(name)
        if allowed is not None and kind not in allowed:
            raise _Reject(
                f"cantools reads attribute {name!r} only as {' or '.join(sorted(allowed))}, "
                f"not {kind}",
                st.toks[0],
            )
        if kind == "ENUM":
            definition = _AttrDef(kind, definition.choices, len(definition.choices))
        elif name == "VFrameFormat":
            definition = _AttrDef(kind, (), _VFRAMEFORMAT_CHOICES)
            default = _number_value(self.defaults.get(name, ""))
            if default is None or not 0 <= default < _VFRAMEFORMAT_CHOICES:
                # cantools refuses an INT VFrameFormat without a default (a bad one is dropped).
                cur.insert(st.start, 'BA_DEF_DEF_ "VFrameFormat" 0; ')
                cur.note(st.toks[0], "INT attribute 'VFrameFormat' has no default; used 0")
        self.attr_defs[name] = definition
        return True

    def check_rel_def(self, st: _Stmt, cur: _Cursor) -> bool:
        name, definition = self.read_definition(cur, ("BU_SG_REL_", "BU_BO_REL_", "BU_EV_REL_"))
        self.rel_defs[name] = definition
        return True

    def attr_value(self, cur: _Cursor, name: str, definition: _AttrDef | None) -> None:
        """Read an attribute value and make it one cantools can convert to the attribute's type."""
        tok = cur.take("an attribute value")
        if tok.kind == "num":
            text = cur._fix_leading_dot(tok)
        elif tok.kind == "str":
            text = tok.text[1:-1]
        else:
            raise _Reject(f"expected an attribute value, found {_describe(tok)}", tok)
        if definition is None:
            return
        kind = definition.type_name
        if kind in _NUMERIC_ATTRIBUTE_TYPES or kind == "ENUM":
            value = _number_value(text)
            if value is None and kind == "ENUM" and text in definition.choices:
                index = definition.choices.index(text)
                cur.replace(tok, str(index))
                cur.note(
                    tok, f"attribute {name!r} gives the enum label {text!r}; used its index {index}"
                )
                return
            if value is None:
                raise _Reject(
                    f"attribute {name!r} is {kind} but its value is {_describe(tok)}", tok
                )
            if (kind != "FLOAT" or name == "Baudrate") and value.adjusted() >= _MAX_DIGITS:
                raise _Reject(f"attribute {name!r} has the overlong value {_describe(tok)}", tok)
            limit = definition.index_range
            if limit is not None and not (
                value.adjusted() < _MAX_DIGITS and 0 <= int(value) < limit
            ):
                raise _Reject(
                    f"attribute {name!r} has value {text}, outside its {limit} choices", tok
                )
        elif name == "Baudrate":
            value = _number_value(text)
            if value is None or value.adjusted() >= _MAX_DIGITS:
                raise _Reject(f"attribute 'Baudrate' is not a usable number: {_describe(tok)}", tok)

    def check_attr_default(self, st: _Stmt, cur: _Cursor) -> bool:
        name = cur.string("an attribute name").text[1:-1]
        defs = self.rel_defs if st.kw == "BA_DEF_DEF_REL_" else self.attr_defs
        definition = defs.get(name)
        if definition is not None and definition.type_name == "ENUM":
            definition = None  # cantools keeps enum defaults as written
        elif definition is None and name in self.rejected_defs:
            raise _Reject(f"attribute {name!r} has no usable definition", tally=f"def:{name}")
        self.attr_value(cur, name, definition)
        cur.end()
        return True

    def check_attr(self, st: _Stmt, cur: _Cursor) -> bool:
        name_tok = cur.string("an attribute name")
        name = name_tok.text[1:-1]
        definition = self.attr_defs.get(name)
        if definition is None:
            why = "has no usable definition" if name in self.rejected_defs else "is not defined"
            raise _Reject(f"attribute {name!r} {why}", name_tok, tally=f"def:{name}")
        kind = cur.keyword("BO_", "SG_", "BU_", "EV_")
        if kind in ("BO_", "SG_"):
            self.ref(cur)
            if kind == "SG_":
                cur.name("signal")
        elif kind is not None:
            cur.name("node" if kind == "BU_" else "environment variable")
        self.attr_value(cur, name, definition)
        cur.end()
        return True

    def check_rel_attr(self, st: _Stmt, cur: _Cursor) -> bool:
        name_tok = cur.string("an attribute name")
        name = name_tok.text[1:-1]
        definition = self.rel_defs.get(name)
        if definition is None:
            raise _Reject(f"attribute {name!r} is not defined", name_tok, tally=f"rel:{name}")
        kind = cur.keyword("BU_SG_REL_", "BU_BO_REL_")
        if kind is None:
            raise _Reject(
                f"expected BU_SG_REL_ or BU_BO_REL_, found {_describe(cur.peek())}", cur.peek()
            )
        cur.name("node")
        if kind == "BU_SG_REL_":
            if cur.keyword("SG_") is None:
                raise _Reject(f"expected SG_, found {_describe(cur.peek())}", cur.peek())
            self.ref(cur)
            cur.name("signal")
        else:
            self.ref(cur)
        self.attr_value(cur, name, definition)
        cur.end()
        return True

    def value_pairs(self, cur: _Cursor) -> None:
        while not cur.at_end():
            cur.integer("a value")
            cur.string("a value description")

    def check_choices(self, st: _Stmt, cur: _Cursor) -> bool:
        msg: _Msg | None = None
        raw: int | None = None
        if cur.at("num") or (cur.at("word") and _HEX_RE.match(cur.toks[cur.i].text)):
            msg, raw, _ = self.ref(cur)
        sig_tok = cur.name("signal")
        self.value_pairs(cur)
        cur.end()
        if raw is None:
            return True  # a table for an environment variable; cantools ignores it
        return self.signal_exists(cur, "VAL_ table", msg, raw, sig_tok)

    def signal_exists(
        self, cur: _Cursor, what: str, msg: _Msg | None, raw: int, sig_tok: _Tok
    ) -> bool:
        """Whether ``sig_tok`` names a signal of the message; note the drop if not.

        cantools refuses tables and types it cannot attach to a signal.
        """
        if msg is None:
            cur.note(
                sig_tok,
                f"dropped the {what} for signal {sig_tok.text!r}: no message has frame id {raw}",
            )
            return False
        if msg.vector:
            return False  # cantools ignores that message's signals; drop their tables quietly
        assert msg.final_id is not None
        if sig_tok.text not in self.signals_by_final.get(msg.final_id, ()):
            cur.note(
                sig_tok,
                f"dropped the {what} for signal {sig_tok.text!r}: message {msg.name!r} "
                f"({raw}) has no such signal",
            )
            return False
        return True

    def check_value_table(self, st: _Stmt, cur: _Cursor) -> bool:
        cur.name("value table")
        self.value_pairs(cur)
        cur.end()
        return True

    def check_signal_type(self, st: _Stmt, cur: _Cursor) -> bool:
        msg, raw, _ = self.ref(cur)
        sig_tok = cur.name("signal")
        if cur.at(":"):
            cur.i += 1
        else:
            cur.insert(sig_tok.end, " :")
            cur.note(sig_tok, "missing ':' in SIG_VALTYPE_; inserted it")
        cur.integer("a value type (0, 1 or 2)")
        cur.end()
        return self.signal_exists(cur, "SIG_VALTYPE_", msg, raw, sig_tok)

    def check_mux_values(self, st: _Stmt, cur: _Cursor) -> bool:
        self.ref(cur)
        cur.name("signal")
        cur.name("multiplexer signal")
        total = 0
        while True:
            low, low_tok = cur.integer("the start of a multiplexer range")
            high_tok = cur.take("the end of a multiplexer range, as in 0-3")
            if high_tok.kind == "-" and cur.at("num"):
                num_tok = cur.take("a number")
                cur.edits.append((high_tok.start, num_tok.end, "-" + num_tok.text))
                cur.note(high_tok, "multiplexer range written with spaces around '-'; joined it")
                high_text = num_tok.text
            elif high_tok.kind == "num" and high_tok.text.startswith("-"):
                high_text = high_tok.text[1:]
            else:
                raise _Reject(
                    f"expected a range such as 0-3, found {_describe(high_tok)}", high_tok
                )
            if not high_text.isdigit() or len(high_text) > _MAX_DIGITS or low < 0:
                raise _Reject(f"bad multiplexer range near {_describe(high_tok)}", high_tok)
            total += max(0, int(high_text) - low + 1)
            if total > _MAX_MUX_VALUES:
                raise _Reject(
                    f"multiplexer ranges cover more than {_MAX_MUX_VALUES} values", low_tok
                )
            if cur.at_end():
                return True
            cur.punct(",", "',' between multiplexer ranges")

    def check_senders(self, st: _Stmt, cur: _Cursor) -> bool:
        self.ref(cur)
        cur.punct(":", "':' after the frame id")
        cur.comma_list(lambda: cur.name("node"), "senders")
        cur.end()
        return True

    def check_signal_group(self, st: _Stmt, cur: _Cursor) -> bool:
        self.ref(cur)
        cur.name("signal group")
        cur.integer("a repetition count")
        cur.punct(":", "':' after the repetition count")
        noted = False
        while not cur.at_end():
            if cur.at(","):
                tok = cur.take(",")
                cur.replace(tok, " ")
                if not noted:
                    cur.note(tok, "signal group members separated by commas; removed them")
                    noted = True
            else:
                cur.name("signal")
        return True

    def check_env_var(self, st: _Stmt, cur: _Cursor) -> bool:
        cur.name("environment variable")
        cur.punct(":")
        cur.integer("a variable type")
        cur.punct("[")
        cur.number("a minimum")
        cur.punct("|")
        cur.number("a maximum")
        cur.punct("]")
        cur.string("a unit string")
        cur.number("an initial value")
        cur.integer("an id")
        cur.plain_word("an access type")
        cur.comma_list(lambda: cur.name("node"), "access nodes")
        cur.end()
        return True

    def check_env_data(self, st: _Stmt, cur: _Cursor) -> bool:
        cur.name("environment variable")
        cur.punct(":")
        cur.integer("a data size")
        cur.end()
        return True

    CHECKS: Final[dict[str, Callable[[_Repairer, _Stmt, _Cursor], bool]]] = {
        "VERSION": check_version,
        "NS_": check_ns,
        "BS_": check_bs,
        "BU_": check_nodes,
        "CM_": check_comment,
        "BA_DEF_": check_attr_def,
        "BA_DEF_REL_": check_rel_def,
        "BA_DEF_DEF_": check_attr_default,
        "BA_DEF_DEF_REL_": check_attr_default,
        "BA_": check_attr,
        "BA_REL_": check_rel_attr,
        "VAL_": check_choices,
        "VAL_TABLE_": check_value_table,
        "SIG_VALTYPE_": check_signal_type,
        "SG_MUL_VAL_": check_mux_values,
        "BO_TX_BU_": check_senders,
        "SIG_GROUP_": check_signal_group,
        "EV_": check_env_var,
        "ENVVAR_DATA_": check_env_data,
    }

    # -- putting it together ------------------------------------------------------------------

    def run(self) -> tuple[str, list[DbcDiagnostic]]:
        self.tokenize()
        if not self.toks:
            raise _Fatal(DbcLoadError(self.path, None, "the file contains no DBC statements"))
        self.split()
        self.check_messages()
        self.check_statements()
        for msg in self.messages:
            if msg.drop_note is not None and msg.refs_dropped:
                d = self.diags[msg.drop_note]
                self.diags[msg.drop_note] = DbcDiagnostic(
                    d.path,
                    d.line,
                    f"{d.message}; also dropped {msg.refs_dropped} statement(s) referring to it",
                )
        for index, count in self.tallies.values():
            if count > 1:
                d = self.diags[index]
                self.diags[index] = DbcDiagnostic(
                    d.path, d.line, f"{d.message} (and {count - 1} more such statements)"
                )
        text = self.apply()
        self.diags.sort(key=_line_key)
        return text, self.diags

    def apply(self) -> str:
        edits = sorted(self.edits, key=lambda e: (e[0], e[1]))
        text = self.text
        out: list[str] = []
        pos = 0
        for start, end, replacement in edits:
            if start < pos:
                continue  # inside a span already replaced (a dropped statement)
            new = replacement
            if start == end and new:
                # An insertion must not glue onto a neighbouring token ('""NS_' + " Vector__XXX").
                if start < len(text) and _glues(text[start]) and _glues(new[-1]):
                    new += " "
                if start > 0 and _glues(text[start - 1]) and _glues(new[0]):
                    new = " " + new
            out.append(text[pos:start])
            out.append(new)
            pos = end
        out.append(text[pos:])
        result = "".join(out)
        # cantools ends a // comment at a newline; one at the very end would be a syntax error.
        return result if result.endswith("\n") else result + "\n"


def _glues(char: str) -> bool:
    return char.isalnum() or char in '_"'


class _Drop(Exception):  # noqa: N818 - control flow: the statement refers to a dropped message
    pass


def _normalise_newlines(text: str) -> str:
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _line_key(diag: DbcDiagnostic) -> int:
    return diag.line or 0


def _repair(
    text: str, path: str, *, drop_attributes: bool = False
) -> tuple[str, list[DbcDiagnostic]]:
    try:
        return _Repairer(text, path, drop_attributes=drop_attributes).run()
    except _Fatal as f:
        raise f.error from None


def _newlines(text: str, start: int, end: int) -> str:
    """What dropping ``text[start:end]`` leaves: its newlines, so later lines keep their numbers."""
    return "\n" * text.count("\n", start, end)


def repair_dbc_text(text: str, path: str) -> tuple[str, list[DbcDiagnostic]]:
    """Repair the real-world quirks of DBC ``text`` so that cantools can parse it.

    Pure: no I/O. ``path`` only names the file in diagnostics. Returns the repaired text (with
    ``\\n`` line ends, every line where it was in ``text``) and one diagnostic per repair, in line
    order; text without quirks comes back unchanged but for line ends, a leading BOM and a final
    newline. Raises :class:`DbcLoadError` for what cannot be repaired safely. The module
    docstring lists the repairs.
    """
    return _repair(_normalise_newlines(text), path)


# --------------------------------------------------------------------------------------------
# Drivers


# textparser accepts a text whose last statement is cut short (it checks that the parser *looked
# at* the end, not that it got there) and cantools then silently loses that statement, as in a
# truncated file. A statement cantools reads and ignores, after the text, turns that into a
# syntax error the repair pass then deals with.
_SENTINEL: Final = "\nBS_:\n"


class _QuietDuplicates(logging.Filter):
    """Hides cantools' log lines about duplicate messages while this module loads a file.

    The loader reports duplicates itself as warnings with line numbers; the same news on stderr
    without them would only be noise. Other users of cantools in the process are not affected.
    """

    def __init__(self) -> None:
        super().__init__()
        self.active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self.active, "on", False):
            return not str(record.msg).startswith("Overwriting message")
        return True


_QUIET = _QuietDuplicates()
logging.getLogger("cantools.database.can.database").addFilter(_QUIET)


def _parse(text: str) -> Database:
    db = Database(strict=False)
    _QUIET.active.on = True
    try:
        db.add_dbc_string(text + _SENTINEL)
    finally:
        _QUIET.active.on = False
    return db


def _error_line(error: Exception, text: str) -> int | None:
    # textparser's errors carry an offset into the repaired text, whose lines are the original's.
    offset = getattr(error, "offset", None)
    if isinstance(offset, int):
        # An error in the sentinel means the text ended inside a statement: its last line.
        return text.count("\n", 0, min(offset, len(text.rstrip()))) + 1
    return None


def _cantools_reason(error: Exception) -> str:
    message = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError):
        message = f"missing key {message}"
    return f"cantools cannot load the repaired file: {message}"


def _load_text(text: str, path: str, strict: bool, extra: list[DbcDiagnostic]) -> LoadedDbc:
    text = _normalise_newlines(text)
    diags: list[DbcDiagnostic] = []
    try:
        # Most files need no repair, and cantools accepting a text means the repair pass would
        # leave it as it is (the tests hold it to that): parse first, repair only on failure.
        # Only numbers so large that cantools would take forever send the text straight to
        # the repair pass, which refuses them.
        if _SLOW_FOR_CANTOOLS_RE.search(text):
            raise ValueError("numbers too large for cantools")
        db = _parse(text)
        parsed = text
    except Exception:  # cantools and textparser raise many kinds; none may escape
        parsed, diags = _repair(text, path)
        if strict and diags:
            first = diags[0]
            more = f" (and {len(diags) - 1} more)" if len(diags) > 1 else ""
            raise DbcLoadError(
                path, first.line, f"needs repair (strict mode): {first.message}{more}"
            ) from None
        try:
            db = _parse(parsed)
        except Exception as error:
            line = _error_line(error, parsed)
            if line is not None or strict:
                raise DbcLoadError(path, line, _cantools_reason(error)) from error
            # A semantic failure: most come from attributes cantools cannot interpret. Without
            # them the file still says how to decode every frame.
            parsed, diags = _repair(text, path, drop_attributes=True)
            try:
                db = _parse(parsed)
            except Exception as second:
                raise DbcLoadError(
                    path, _error_line(second, parsed), _cantools_reason(second)
                ) from second
            diags.append(
                DbcDiagnostic(
                    path,
                    None,
                    f"ignored all attributes (BA_…): cantools could not interpret them ({error})",
                )
            )
    if not db.messages and not _COMMENT_RE.sub("", parsed).strip():
        raise DbcLoadError(path, None, "the file contains no DBC statements")
    infos, findings = _scan_layout(parsed, path)
    warnings = [*extra, *diags, *findings, *_check_database(db, path, infos)]
    warnings.sort(key=_line_key)
    return LoadedDbc(path=path, database=db, warnings=tuple(warnings))


def load_dbc_string(text: str, path: str = "<string>", *, strict: bool = False) -> LoadedDbc:
    """Load DBC ``text`` (already decoded), repairing real-world quirks; see :func:`load_dbc`.

    ``path`` names the text in diagnostics and errors.
    """
    return _load_text(text, path, strict, [])


def load_dbc(path: str | PathLike[str], *, strict: bool = False) -> LoadedDbc:
    """Load the DBC file at ``path``, repairing real-world quirks with a warning each.

    With ``strict=True`` any needed repair raises :class:`DbcLoadError` instead (warnings about
    what cantools accepts as it is — duplicates, overlapping signals, the encoding — stay
    warnings). Every failure — unreadable file, unrepairable syntax, anything cantools refuses —
    is a :class:`DbcLoadError` naming the file and, when known, the line.
    """
    name = fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as e:
        raise DbcLoadError(name, None, f"cannot read the file: {e.strerror or e}") from e
    text, extra = _decode(data, name)
    return _load_text(text, name, strict, extra)


def _decode(data: bytes, path: str) -> tuple[str, list[DbcDiagnostic]]:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), []
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
    try:
        text, encoding = data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        # cp1252 leaves five bytes undefined; Latin-1 maps every byte.
        text, encoding = data.decode("latin-1"), "latin-1"
    return text, [
        DbcDiagnostic(
            path,
            line,
            f"the file is not valid UTF-8 (first bad byte on this line); read it as {encoding}",
        )
    ]


# --------------------------------------------------------------------------------------------
# Checks on the parsed database


def _signal_bits(start: int, length: int, big_endian: bool) -> list[int] | range:
    if not big_endian:
        return range(start, start + length)
    bits = []
    pos = start
    for _ in range(length):
        bits.append(pos)
        # Motorola order runs from the MSB down to bit 0 of a byte, then on at bit 7 of the next.
        pos = pos + 15 if pos % 8 == 0 else pos - 1
    return bits


_LAYOUT_RE: Final = re.compile(
    r"^[ \t]*(?:BO_[ \t]+\d+[ \t]+(\w+)|SG_[ \t]+(\w+)(?:[ \t]+(\w+))?[ \t]*:)", re.MULTILINE
)


def _scan_layout(text: str, path: str) -> tuple[list[_MessageInfo], list[DbcDiagnostic]]:
    """Find the line of every message and signal in ``text`` (the text cantools parsed).

    Also reports multiplexer indicators cantools ignores. A regex over lines suffices: it only
    has to find lines for warnings, and costs far less than a second tokenizing.
    """
    infos: list[_MessageInfo] = []
    findings: list[DbcDiagnostic] = []
    signals: dict[str, int] = {}
    line, pos = 1, 0
    for m in _LAYOUT_RE.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        message, signal, indicator = m.groups()
        if message is not None:
            signals = {}
            if message != _VECTOR_INDEPENDENT:  # cantools drops it
                infos.append(_MessageInfo(message, line, signals))
            continue
        signals.setdefault(signal, line)
        if indicator is not None and not _MUX_RE.match(indicator):
            findings.append(
                DbcDiagnostic(
                    path,
                    line,
                    f"signal {signal!r} has the multiplexer indicator {indicator!r}, which is "
                    "neither M, m<n> nor m<n>M; cantools ignores it and so reads the message "
                    "without multiplexing",
                )
            )
    return infos, findings


def _check_database(db: Database, path: str, infos: list[_MessageInfo]) -> list[DbcDiagnostic]:
    out: list[DbcDiagnostic] = []
    messages = list(db.messages)
    if len(messages) != len(infos):
        # A "BO_" at the start of a line inside a multi-line comment can fool the scan; fall
        # back to names (which long-name attributes can change, costing only line numbers).
        by_message_name = {info.name: info for info in reversed(infos)}
        infos = [by_message_name.get(m.name) or _MessageInfo(m.name, 0, {}) for m in messages]
    lines = [info.line or None for info in infos]
    by_id: dict[tuple[int, bool], int] = {}
    by_name: dict[str, int] = {}
    for k, message in enumerate(messages):
        key = (message.frame_id, message.is_extended_frame)
        if key in by_id:
            first = by_id[key]
            out.append(
                DbcDiagnostic(
                    path,
                    lines[k],
                    f"messages {messages[first].name!r} (line {lines[first]}) and {message.name!r} "
                    f"share frame id 0x{message.frame_id:X}; lookups by id find {message.name!r}",
                )
            )
        by_id[key] = k
        if message.name in by_name:
            first = by_name[message.name]
            out.append(
                DbcDiagnostic(
                    path,
                    lines[k],
                    f"two messages are named {message.name!r} (line {lines[first]} and this one); "
                    "lookups by name find this one",
                )
            )
        by_name[message.name] = k
        out.extend(_check_signals(message, path, lines[k], infos[k]))
    return out


def _check_signals(
    message: Message, path: str, line: int | None, info: _MessageInfo
) -> list[DbcDiagnostic]:
    out: list[DbcDiagnostic] = []
    seen: set[str] = set()
    for signal in message.signals:
        if signal.name in seen:
            out.append(
                DbcDiagnostic(
                    path,
                    info.signal_lines.get(signal.name, line),
                    f"message {message.name!r} has two signals named {signal.name!r}; decoded "
                    "values will hold only one of them",
                )
            )
        seen.add(signal.name)
    size = 8 * int(message.length)
    if size > 8 * _MAX_CHECKED_LENGTH:
        return out
    # Who occupies each bit: overlaps are found per bit, so a message costs its bits plus the
    # overlaps it has, not the square of its signals.
    owners: list[list[Signal]] = [[] for _ in range(size)]
    misfits: list[str] = []
    overlaps: dict[tuple[str, str], None] = {}  # ordered set
    for signal in message.signals:
        length = int(signal.length)
        bits = (
            _signal_bits(int(signal.start), length, signal.byte_order == "big_endian")
            if length <= size
            else [-1]
        )
        if not all(0 <= b < size for b in bits):
            misfits.append(signal.name)
            continue
        for b in bits:
            for other in owners[b]:
                if len(overlaps) < _MAX_REPORTED_OVERLAPS and _can_coexist(signal, other):
                    overlaps[other.name, signal.name] = None
            owners[b].append(signal)
    if misfits:
        out.append(
            DbcDiagnostic(
                path,
                line,
                f"{_listing(misfits, 'signal')} of message {message.name!r} "
                f"{'does' if len(misfits) == 1 else 'do'} not fit in its {message.length} bytes",
            )
        )
    if overlaps:
        pairs = [f"{a!r} and {b!r}" for a, b in overlaps]
        shown = "; ".join(pairs[:4]) + (f"; … ({len(pairs)} pairs)" if len(pairs) > 4 else "")
        out.append(
            DbcDiagnostic(path, line, f"signals overlap in message {message.name!r}: {shown}")
        )
    return out


def _listing(items: list[str], noun: str, shown: int = 4) -> str:
    head = ", ".join(repr(item) for item in items[:shown])
    if len(items) <= shown:
        return f"{noun} {head}" if len(items) == 1 else f"{noun}s {head}"
    return f"{len(items)} {noun}s ({head} …)"


def _can_coexist(a: Signal, b: Signal) -> bool:
    """Whether two signals can be in the same frame (multiplexed signals with disjoint
    multiplexer values under one multiplexer never are)."""
    if a.multiplexer_signal is None or b.multiplexer_signal is None:
        return True
    if a.multiplexer_signal != b.multiplexer_signal:
        return True
    ids_a = set(a.multiplexer_ids or ())
    ids_b = set(b.multiplexer_ids or ())
    return bool(ids_a & ids_b)
