"""Reading CAN logs (contract C2).

:func:`read_log` reads every format python-can's ``can.LogReader`` reads (``.log`` candump -L,
``.asc``, ``.blf``, ``.trc``, ``.csv``, ``.mf4``, ``.db``, each optionally ``.gz``) and also the
default screen output of ``candump`` (``  can0  123   [8]  11 22 …``, with or without ``-ta``,
``-td``, ``-tz`` or ``-tA`` timestamps, ``-x``, ``-a``, ``-S``, ``-i`` and ``-e``). ``-`` reads
standard input.

The two candump text formats have their own parsers: they are tolerant (a malformed line is skipped
and counted in :class:`LogReadStats`, never fatal) and about twice as fast as python-can's reader.
The other formats go through python-can; an exception from its reader becomes an
:class:`~agent.errors.InputError` naming the file and position, raised after the frames read before
it were yielded.

The format comes from the suffix for python-can's binary and structured formats; ``.log``,
``.txt``, unknown suffixes and standard input are sniffed by content.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import logging
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import can

from agent.errors import InputError, UsageError

__all__ = ["LogReadStats", "read_log"]

#: How many malformed lines :class:`LogReadStats` describes in ``first_errors``.
MAX_FIRST_ERRORS: Final = 5
#: Non-blank lines looked at to tell the candump text formats apart.
_SNIFF_LINES: Final = 64

_CAN_ERR_FLAG: Final = 0x20000000
_EFF_MASK: Final = 0x1FFFFFFF
_SFF_MASK: Final = 0x7FF
_FD_LENGTHS: Final = frozenset((0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64))
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_ANSI_RE: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Sniffing patterns: only need to be good enough to tell the formats apart; the parsers decide
# what is really a frame.
_LOG_LINE_RE: Final = re.compile(r"\s*\([\d.]+\)\s+\S+\s+[0-9A-Fa-f]{1,8}#")
_SCREEN_LINE_RE: Final = re.compile(
    r"\s*(?:\([^)]*\)\s+)?\S+\s+(?:[RT]X\s+\S\s+\S\s+)?[0-9A-Fa-f]{3,8}\s+"
    r"(?:\[\d{1,2}\]|\{[0-9A-Fa-f]\})"
)
_SCREEN_TS_RE: Final = re.compile(r"\s*\((\d+)\.\d+\)")
# The common candump -L line: a data frame with 0..8 bytes; anything else takes the full parser.
_LOG_FAST_RE: Final = re.compile(
    r"\((\d+\.\d*)\) (\S+) ([0-9A-Fa-f]{3}|[0-9A-Fa-f]{8})#([0-9A-Fa-f]{0,16})\s*$"
)

# python-can readers by suffix (the structured and binary formats; ``.log`` is ours).
_PYTHON_CAN_SUFFIXES: Final = (".asc", ".blf", ".trc", ".csv", ".mf4", ".db")
_PYTHON_CAN_LOGGERS: Final = tuple(
    f"can.io.{m}" for m in ("asc", "blf", "trc", "csv", "mf4", "sqlite", "canutils")
)
_BINARY_MAGIC: Final = ((b"LOGG", ".blf"), (b"MDF     ", ".mf4"), (b"SQLite format 3\x00", ".db"))


def _printable(text: str, limit: int = 120) -> str:
    """*text* safe for a terminal: control and undecodable characters escaped, length capped."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(slots=True)
class LogReadStats:
    """Counters of one :func:`read_log` run, for the caller to report on stderr.

    ``frames`` counts frames yielded; ``malformed`` counts lines skipped as unreadable, the first
    :data:`MAX_FIRST_ERRORS` of them described in ``first_errors`` as ``"file:line: reason"``;
    ``ignored`` counts lines that are not frames by design (``DROPCOUNT`` notices, the indented
    explanation lines of ``candump -e``); ``format`` names the format read.
    """

    frames: int = 0
    malformed: int = 0
    first_errors: list[str] = field(default_factory=list)
    ignored: int = 0
    format: str = ""

    def add_malformed(self, where: str, reason: str) -> None:
        """Count one malformed line; describe it if it is among the first few."""
        self.malformed += 1
        if len(self.first_errors) < MAX_FIRST_ERRORS:
            self.first_errors.append(f"{where}: {_printable(reason)}")

    def summary(self, name: str) -> str:
        """One line for stderr: ``"x.log: 100 frames, 2 malformed lines skipped (first: …)"``."""
        text = f"{name}: {self.frames} frames"
        if self.malformed:
            text += f", {self.malformed} malformed lines skipped"
            if self.first_errors:
                text += f" (first: {self.first_errors[0]})"
        return text


def read_log(path: str | Path, stats: LogReadStats | None = None) -> Iterator[can.Message]:
    """Yield the frames of the CAN log at *path* (``"-"``: standard input), in file order.

    Every frame has ``timestamp`` (float seconds; 0.0 when the log has none; candump's relative
    screen timestamps stay relative), ``channel`` (the bus name, e.g. ``"can0"``; python-can's
    numbered channels become ``"can<N>"``), ``arbitration_id``, ``is_extended_id``, ``dlc``,
    ``data``, ``is_fd``, ``is_remote_frame`` and ``is_error_frame``.

    Malformed lines of the candump formats are skipped and counted in *stats*. Raises
    :class:`UsageError` if the file does not exist, :class:`InputError` if it cannot be read or a
    python-can reader fails on it (after yielding the frames read before the failure).
    """
    if stats is None:
        stats = LogReadStats()
    if str(path) == "-":
        yield from _read_stdin(stats)
        return
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise UsageError(f"log file {name} does not exist")
    if p.is_dir():
        raise UsageError(f"log file {name} is a directory")
    suffixes = [s.lower() for s in p.suffixes]
    suffix = suffixes[-1] if suffixes else ""
    if suffix == ".gz":
        inner = suffixes[-2] if len(suffixes) >= 2 else ""
        if inner == ".db":
            raise InputError(f"cannot read {name}: decompress SQLite logs first")
        if inner in _PYTHON_CAN_SUFFIXES:
            mode = "rt" if inner in (".asc", ".trc", ".csv") else "rb"
            opened = _open_gzip(p, name, mode)
            yield from _read_python_can(name, stats, inner, _reader_factory(inner, opened))
        else:
            opener = lambda: _open_gzip(p, name, "rt")  # noqa: E731
            yield from _read_text(name, stats, opener, compressed=True)
        return
    if suffix in _PYTHON_CAN_SUFFIXES:
        yield from _read_python_can(name, stats, suffix, _reader_factory(suffix, p))
        return
    magic_suffix = _sniff_binary(_peek_file(p, name))
    if magic_suffix:
        yield from _read_python_can(name, stats, magic_suffix, _reader_factory(magic_suffix, p))
        return
    yield from _read_text(name, stats, lambda: _open_text(p, name))


# --- dispatch helpers ------------------------------------------------------------------------


def _open_text(p: Path, name: str) -> IO[str]:
    try:
        # errors="replace": a stray byte makes one malformed line, not an unreadable file.
        return p.open(encoding="utf-8", errors="replace", newline=None)
    except OSError as e:
        raise InputError(f"cannot read log file {name}: {e.strerror or e}") from e


def _open_gzip(p: Path, name: str, mode: str) -> Any:
    try:
        if mode == "rt":
            return gzip.open(p, "rt", encoding="utf-8", errors="replace")
        return gzip.open(p, "rb")
    except OSError as e:
        raise InputError(f"cannot read log file {name}: {e.strerror or e}") from e


def _peek_file(p: Path, name: str) -> bytes:
    try:
        with p.open("rb") as f:
            return f.read(16)
    except OSError as e:
        raise InputError(f"cannot read log file {name}: {e.strerror or e}") from e


def _sniff_binary(head: bytes) -> str:
    for magic, suffix in _BINARY_MAGIC:
        if head.startswith(magic):
            return suffix
    return ""


def _sniff_text_format(lines: list[str]) -> str:
    """Name the format of a text log from its first non-blank lines."""
    first = lines[0].strip().lower() if lines else ""
    if first.startswith(("date ", "base ")):
        return "asc"
    if first.startswith(";$fileversion") or (first.startswith(";") and "trc" in first):
        return "trc"
    if first.startswith("timestamp,arbitration_id"):
        return "csv"
    log_hits = sum(1 for line in lines if _LOG_LINE_RE.match(line))
    screen_hits = sum(1 for line in lines if _SCREEN_LINE_RE.match(line))
    return "candump-screen" if screen_hits > log_hits else "candump-log"


def _reader_factory(suffix: str, source: Any) -> Callable[[], Any]:
    """A constructor of python-can's reader for *suffix* reading *source*."""
    if suffix == ".asc":
        # Absolute times, so that frames keep their wall-clock times as the other formats do.
        return lambda: can.ASCReader(source, relative_timestamp=False)
    classes: dict[str, Any] = {
        ".blf": can.BLFReader,
        ".trc": can.TRCReader,
        ".csv": can.CSVReader,
        ".mf4": can.MF4Reader,
        ".db": can.SqliteReader,
    }
    cls = classes[suffix]
    return lambda: cls(source)


def _read_stdin(stats: LogReadStats) -> Iterator[can.Message]:
    raw = sys.stdin.buffer
    head = raw.peek(16)[:16] if hasattr(raw, "peek") else b""
    magic_suffix = _sniff_binary(head)
    if magic_suffix:
        # Binary readers seek: spool standard input to a temporary file first.
        with tempfile.NamedTemporaryFile(suffix=magic_suffix) as tmp:
            shutil.copyfileobj(raw, tmp)
            tmp.flush()
            tmp_path = Path(tmp.name)
            yield from _read_python_can(
                "<stdin>", stats, magic_suffix, _reader_factory(magic_suffix, tmp_path)
            )
        return
    text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
    try:
        yield from _read_text("<stdin>", stats, lambda: text, close=False)
    finally:
        text.detach()  # leave sys.stdin usable and unclosed


def _read_text(
    name: str,
    stats: LogReadStats,
    opener: Callable[[], IO[str]],
    *,
    close: bool = True,
    compressed: bool = False,
) -> Iterator[can.Message]:
    """Sniff a text log and read it with the matching parser."""
    f = opener()
    try:
        head: list[str] = []  # every line read while sniffing, blank ones included
        nonblank: list[str] = []
        try:
            for line in f:
                head.append(line)
                if line.strip():
                    nonblank.append(line)
                    if len(nonblank) >= _SNIFF_LINES:
                        break
        except (OSError, EOFError) as e:
            raise InputError(f"cannot read log file {name}: {e}") from e
        fmt = _sniff_text_format(nonblank)
        stats.format = fmt
        # A gzip stream can end or break midway; a plain file practically cannot.
        rest: Iterable[str] = _guarded(f, name) if compressed else f
        lines: Iterable[str] = itertools.chain(head, rest)
        if fmt == "candump-log":
            yield from _parse_candump_log(lines, name, stats)
        elif fmt == "candump-screen":
            yield from _ScreenParser(nonblank).parse(lines, name, stats)
        else:
            # A python-can text format with an unusual suffix: hand it the whole text.
            buffer = io.StringIO("".join(lines))
            yield from _read_python_can(name, stats, "." + fmt, _reader_factory("." + fmt, buffer))
    finally:
        if close:
            f.close()


def _guarded(lines: Iterable[str], name: str) -> Iterator[str]:
    """*lines*, with a decompression failure midway turned into an InputError."""
    try:
        yield from lines
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read log file {name}: {e}") from e


# --- python-can's readers --------------------------------------------------------------------


class _Complaints(logging.Filter):
    """Turns python-can readers' warnings into malformed-line counts (and keeps them quiet)."""

    def __init__(self, name: str, stats: LogReadStats, counter: _LineCounter | None) -> None:
        super().__init__()
        self.file = name
        self.stats = stats
        self.counter = counter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        where = f"{self.file}:{self.counter.line}" if self.counter is not None else self.file
        self.stats.add_malformed(where, record.getMessage())
        return False


class _LineCounter:
    """A text file wrapper that counts the lines python-can's text readers consume."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self.line = 0

    def __iter__(self) -> _LineCounter:
        return self

    def __next__(self) -> str:
        line = next(self.file)
        self.line += 1
        return line

    def close(self) -> None:
        self.file.close()

    @property
    def closed(self) -> bool:
        return self.file.closed


def _read_python_can(
    name: str, stats: LogReadStats, suffix: str, factory: Callable[[], Any]
) -> Iterator[can.Message]:
    """Yield from a python-can reader, normalising channels and turning failures into InputError."""
    stats.format = suffix.lstrip(".")
    counter: _LineCounter | None = None
    try:
        reader = factory()
    except (ImportError, NotImplementedError) as e:
        hint = " (pip install asammdf, or tbox-agent[mf4])" if suffix == ".mf4" else ""
        raise InputError(f"cannot read {name}: {e}{hint}") from e
    except OSError as e:
        raise InputError(f"cannot read log file {name}: {e.strerror or e}") from e
    except Exception as e:  # a reader's constructor parses headers and raises what it likes
        raise InputError(f"cannot read {name} as {suffix} file: {type(e).__name__}: {e}") from e
    file = getattr(reader, "file", None)
    if suffix in (".asc", ".trc", ".csv") and file is not None and hasattr(file, "readline"):
        # Count lines for the error position; the reader iterates ``self.file`` line by line.
        counter = _LineCounter(file)
        reader.file = counter
    one_based = suffix == ".trc"
    iterator = iter(reader)
    # python-can's readers log a warning and skip some bad lines (TRC): count those instead of
    # letting them flood stderr.
    complaints = _Complaints(name, stats, counter)
    for logger_name in _PYTHON_CAN_LOGGERS:
        logging.getLogger(logger_name).addFilter(complaints)
    try:
        while True:
            try:
                msg = next(iterator)
            except StopIteration:
                break
            except Exception as e:  # python-can's readers raise ValueError, struct.error, …
                where = f"{name}:{counter.line}" if counter is not None else name
                raise InputError(
                    f"{where}: unreadable {suffix} data after {stats.frames} frames: "
                    f"{type(e).__name__}: {e}"
                ) from e
            channel = msg.channel
            if isinstance(channel, int):
                # TRC numbers buses from 1 (PCAN); python-can's other readers from 0.
                msg.channel = f"can{channel - 1 if one_based and channel > 0 else channel}"
            elif channel is None:
                msg.channel = "can0"
            elif not isinstance(channel, str):
                msg.channel = str(channel)
            if msg.timestamp is None:
                msg.timestamp = 0.0
            stats.frames += 1
            yield msg
    finally:
        for logger_name in _PYTHON_CAN_LOGGERS:
            logging.getLogger(logger_name).removeFilter(complaints)
        # Closing a half-read file must not mask the real error.
        with contextlib.suppress(Exception):
            reader.stop()


# --- candump -L ------------------------------------------------------------------------------


def _parse_candump_log(
    lines: Iterable[str], name: str, stats: LogReadStats
) -> Iterator[can.Message]:
    """Parse ``(1700000000.000000) can0 123#DEADBEEF`` lines (candump -L / -l, canplayer input).

    Also ``123#R`` / ``123#R5`` remote frames, ``123##<flags><data>`` CAN FD frames, ``.``
    separators, the ``_<dlc>`` raw-DLC suffix, error frames (8 digits with ``CAN_ERR_FLAG``) and the
    `` R``/`` T`` direction column of ``candump -x``.
    """
    message = can.Message
    fromhex = bytearray.fromhex
    fast = _LOG_FAST_RE.match
    for lineno, line in enumerate(lines, 1):
        # Fast path: a plain data frame, already validated by the pattern (≈ 25 % faster).
        match = fast(line)
        if match is not None and not len(match[4]) & 1:
            ts_text, channel, id_text, hex_data = match.groups()
            can_id = int(id_text, 16)
            extended = len(id_text) != 3  # candump writes 29-bit ids with 8 digits
            if can_id <= (_EFF_MASK if extended else _SFF_MASK):
                data = fromhex(hex_data)
                stats.frames += 1
                yield message(
                    timestamp=float(ts_text),
                    arbitration_id=can_id,
                    is_extended_id=extended,
                    channel=channel,
                    dlc=len(data),
                    data=data,
                    check=False,
                )
                continue
        if not line or line.isspace():
            continue
        try:
            msg = _parse_log_line(line)
        except (ValueError, IndexError) as e:
            stats.add_malformed(f"{name}:{lineno}", str(e) or "unreadable line")
            continue
        if msg is None:
            stats.ignored += 1
            continue
        stats.frames += 1
        yield msg


def _parse_log_line(line: str) -> can.Message | None:
    """Parse any candump -L line; None for a line that is no frame by design (DROPCOUNT)."""
    parts = line.split()
    n = len(parts)
    is_rx = True
    if n != 3:
        if n == 4 and parts[3] in ("R", "T", "r", "t"):
            is_rx = parts[3] in ("R", "r")
        elif parts[0].startswith("DROPCOUNT"):
            return None
        else:
            raise ValueError("expected '(time) interface frame'")
    ts_text = parts[0]
    if ts_text[0] != "(" or ts_text[-1] != ")":
        raise ValueError(f"timestamp {ts_text!r} is not in parentheses")
    timestamp = float(ts_text[1:-1])
    if not math.isfinite(timestamp):
        raise ValueError(f"timestamp {ts_text!r} is not a number")
    frame = parts[2]
    id_text, sep, rest = frame.partition("#")
    if not sep:
        raise ValueError(f"frame {frame!r} has no '#'")
    id_len = len(id_text)
    if not 1 <= id_len <= 8 or not _HEX.issuperset(id_text):
        raise ValueError(f"CAN id {id_text!r} is not 3 or 8 hex digits")
    can_id = int(id_text, 16)
    is_error = False
    if id_len <= 3:
        is_extended = False
        if can_id > _SFF_MASK:
            raise ValueError(f"11-bit CAN id {id_text} is above 7FF")
    else:
        is_extended = True
        is_error = bool(can_id & _CAN_ERR_FLAG)
        can_id &= _EFF_MASK  # drops the EFF/RTR flag bits some writers leave in
    is_fd = False
    is_remote = False
    brs = esi = False
    if rest and rest[0] == "#":
        is_fd = True
        flags = int(rest[1], 16)
        brs = bool(flags & 1)
        esi = bool(flags & 2)
        data = _hex_bytes(rest[2:])
        dlc = len(data)
        if dlc not in _FD_LENGTHS:
            raise ValueError(f"{dlc} data bytes is not a CAN FD length")
    elif rest and rest[0] in "Rr":
        is_remote = True
        data = bytearray()
        dlc = int(rest[1:], 16) if len(rest) > 1 else 0
        if dlc > 8:
            raise ValueError(f"remote frame DLC {rest[1:]!r} is above 8")
    else:
        if "_" in rest:  # len8_dlc: "…#1122334455667788_E"; the length stays 8
            rest = rest.partition("_")[0]
        data = _hex_bytes(rest)
        dlc = len(data)
        if dlc > 8:
            raise ValueError(f"{dlc} data bytes in a classic frame (CAN FD needs '##')")
    return can.Message(
        timestamp=timestamp,
        arbitration_id=can_id,
        is_extended_id=is_extended,
        is_remote_frame=is_remote,
        is_error_frame=is_error,
        channel=parts[1],
        dlc=dlc,
        data=data,
        is_fd=is_fd,
        is_rx=is_rx,
        bitrate_switch=brs,
        error_state_indicator=esi,
        check=False,
    )


def _hex_bytes(text: str) -> bytearray:
    """Data bytes from hex digits (``.`` separators allowed, as canplayer accepts them)."""
    digits = text.replace(".", "")
    if len(digits) % 2 or not _HEX.issuperset(digits):
        raise ValueError(f"data {text!r} is not whole bytes of hex digits")
    return bytearray.fromhex(digits)


# --- candump screen output -------------------------------------------------------------------


class _ScreenParser:
    """Parser of candump's default output (lib.c ``snprintf_long_canframe`` behind candump.c's
    timestamp and interface columns)::

         (1700000000.123456)  can0  123   [8]  11 22 33 44 55 66 77 88
         (000.005001)  can0  12345678   [2]  11 22
         (2023-11-14 22:13:20.123456)  can0       123   [0]  remote request
          can0  123  [12]  11 22 33 44 55 66 77 88 99 AA BB CC
          can0  RX B -  123  [02]  11 22
          can0  20000004   [8]  00 04 00 00 00 00 00 00   ERRORFRAME

    ``-td`` prints each frame's delta to the previous one; those are summed so that the frames get
    zero-based relative times like ``-tz``. The two look alike: deltas are recognised by going
    backwards somewhere in the lines sniffed.
    """

    def __init__(self, sniffed: list[str]) -> None:
        self.delta = False
        previous = -1.0
        for line in sniffed:
            match = _SCREEN_TS_RE.match(line)
            if match is None or len(match.group(1)) >= 10:
                continue  # no timestamp, or an absolute one
            value = _float_or(line[line.index("(") + 1 : line.index(")")], -1.0)
            if value < previous:
                self.delta = True
                break
            previous = value
        self.clock = 0.0

    def parse(self, lines: Iterable[str], name: str, stats: LogReadStats) -> Iterator[can.Message]:
        for lineno, text in enumerate(lines, 1):
            line = text
            if line[:1] == "\t":
                stats.ignored += 1  # candump -e: explanation of the error frame above
                continue
            if "\x1b" in line:
                line = _ANSI_RE.sub("", line)  # candump -c colours
            tokens = line.split()
            if not tokens:
                continue
            if tokens[0].startswith("DROPCOUNT"):
                stats.ignored += 1
                continue
            try:
                msg = self._parse_tokens(tokens)
            except (ValueError, IndexError, OverflowError) as e:
                stats.add_malformed(f"{name}:{lineno}", str(e) or "unreadable line")
                continue
            stats.frames += 1
            yield msg

    def _timestamp(self, text: str) -> float:
        if "-" in text:  # -tA: "2023-11-14 22:13:20.123456", local time
            whole, _, fraction = text.partition(".")
            seconds = time.mktime(time.strptime(whole, "%Y-%m-%d %H:%M:%S"))
            return seconds + float("0." + fraction) if fraction else seconds
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"timestamp {text!r} is not a number")
        if self.delta:
            self.clock += value
            return self.clock
        return value

    def _parse_tokens(self, tokens: list[str]) -> can.Message:
        i = 0
        timestamp = 0.0
        first = tokens[0]
        if first[0] == "(":
            if first.endswith(")"):
                ts_text = first[1:-1]
                i = 1
            else:  # the -tA form has a space inside the parentheses
                second = tokens[1]
                if not second.endswith(")"):
                    raise ValueError("unterminated timestamp")
                ts_text = first[1:] + " " + second[:-1]
                i = 2
            timestamp = self._timestamp(ts_text)
        channel = tokens[i]
        i += 1
        brs = esi = False
        if tokens[i] in ("RX", "TX"):  # candump -x: direction, then BRS and ESI flags
            brs = tokens[i + 1] == "B"
            esi = tokens[i + 2] == "E"
            i += 3
        id_text = tokens[i]
        i += 1
        id_len = len(id_text)
        if id_len not in (3, 8) or not _HEX.issuperset(id_text):
            raise ValueError(f"CAN id {id_text!r} is not 3 or 8 hex digits")
        can_id = int(id_text, 16)
        is_extended = id_len == 8
        is_error = is_extended and bool(can_id & _CAN_ERR_FLAG)
        can_id &= _EFF_MASK
        if not is_extended and can_id > _SFF_MASK:
            raise ValueError(f"11-bit CAN id {id_text} is above 7FF")
        length_text = tokens[i]
        i += 1
        inner = length_text[1:-1]
        if length_text[0] == "[" and length_text[-1] == "]" and inner.isdigit():
            if len(inner) == 1:
                is_fd = False
            elif len(inner) == 2:
                is_fd = True
            else:
                raise ValueError(f"length {length_text} (CAN XL) is not supported")
            length = int(inner)
        elif length_text[0] == "{" and length_text[-1] == "}" and len(inner) == 1:
            is_fd = False  # raw DLC 9..F of a classic frame: still 8 data bytes
            length = min(int(inner, 16), 8)
        else:
            raise ValueError(f"length {length_text!r} is not [N], [NN] or {{X}}")
        if is_fd and length not in _FD_LENGTHS:
            raise ValueError(f"{length} data bytes is not a CAN FD length")
        if not is_fd and length > 8:
            raise ValueError(f"classic frame with {length} data bytes")
        if not is_fd and tokens[i : i + 2] == ["remote", "request"]:
            return can.Message(
                timestamp=timestamp,
                arbitration_id=can_id,
                is_extended_id=is_extended,
                is_remote_frame=True,
                channel=channel,
                dlc=length,
                data=bytearray(),
                check=False,
            )
        if length == 0:
            pieces: list[str] = []
        elif "`" in tokens[i]:  # candump -S: one token, bytes in reverse order
            pieces = tokens[i].split("`")[::-1]
        else:
            pieces = tokens[i : i + length]
        if len(pieces) != length:
            raise ValueError(f"{len(pieces)} data bytes where the length says {length}")
        if all(len(p) == 2 for p in pieces):
            data = bytearray.fromhex("".join(pieces))
        elif all(len(p) == 8 and not p.strip("01") for p in pieces):  # candump -i
            data = bytearray(int(p, 2) for p in pieces)
        else:
            raise ValueError("data bytes are not two hex digits each")
        return can.Message(
            timestamp=timestamp,
            arbitration_id=can_id,
            is_extended_id=is_extended,
            is_error_frame=is_error,
            channel=channel,
            dlc=length,
            data=data,
            is_fd=is_fd,
            bitrate_switch=brs,
            error_state_indicator=esi,
            check=False,
        )


def _float_or(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default
