"""Telemetry on the wire (contract C5): records as queue bytes, batches, and sequence numbers.

Three steps, each pure apart from :class:`SequenceCounter`'s file:

1. :func:`encode_record` turns one collected record into the bytes the upload queue stores: a
   serialized ``tbox.v1.Record`` (``agent/proto/tbox/v1/telemetry.proto``). Samples are grouped
   per signal into packed columns with delta-encoded microsecond times, so a record is compact
   before any compression and self-contained (it needs no batch context).
2. :class:`BatchBuilder` packs stored payloads into one ``TelemetryBatch`` (or
   ``SecurityEventBatch``) **without re-encoding them**: a repeated message field is, on the wire,
   just its tag, its length and the message's bytes, so the batch is the serialized header
   followed by ``0x2A <varint length> <payload>`` per record. Each payload is parsed once by the C
   parser to check it is well formed (one broken row must not make a whole batch undecodable);
   nothing is decoded into Python objects. The batch is then zstd-compressed.
3. :func:`decode_batch` / :func:`decode_event_batch` undo it (for tests and Python backends);
   :func:`samples_of` turns a decoded record back into ``(signal, t, value)`` samples.

**Payload framing.** The payload of ``telemetry`` and ``events`` is always exactly one zstd frame
(content size in its header, no dictionary) containing the serialized batch; the topic says which
message it is. Nothing depends on MQTT 5 properties, so a 3.1.1 connection carries the same bytes
and a backend needs only the ``.proto`` files and any zstd library. (An uplink may still set the
MQTT 5 content type ``application/x-protobuf+zstd`` for tools that show it.)

**Byte cap.** ``max_bytes`` bounds the compressed payload, which is what the broker and the cellular
link see. The compressed size of a prefix of records is only known by compressing it, so
:meth:`BatchBuilder.build` guesses the prefix from the compression ratio of its previous batch,
compresses, and corrects the guess from the size it got (a secant step; :data:`MAX_TRIALS`
guesses at most, usually one); a batch is returned only after its actual compressed size was
checked. A prefix whose uncompressed size is within zstd's worst-case bound needs no trial at all
(small backlogs, live traffic). ``max_raw_bytes`` (16 MiB) also bounds a batch before
compression, for memory on both ends. Records that cannot be batched — one that alone exceeds a
limit, or one that does not parse — are never silently skipped: the batch stops before them and
the next call, which starts with them, raises :class:`UnbatchableRecordError` so that the caller
can drop them through its drop ledger.

**Sequence numbers.** :class:`SequenceCounter` hands out the per-vehicle sequence numbers (C5) and
never hands out a number twice, even across crashes: it persists a *reservation* (the highest
number it may hand out) before handing out any number beyond the previous one, and a restarted
counter continues after the persisted reservation. Reserving blocks of ``block`` numbers costs one
fsync per block instead of one per batch; a crash wastes the rest of the block (gaps are allowed,
only order and uniqueness matter). Without a readable file (a new vehicle, a lost file) it starts
from the clock in microseconds, which is beyond any earlier number unless the clock went back
(:func:`first_sequence`). The write has two crash points (C6): ``sequence.reserve_written`` and
``sequence.reserve_renamed``. A batch re-sent after a reconnect must be re-sent as the same bytes
(same sequence) so the backend can drop the duplicate.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Protocol, cast

import zstandard
from google.protobuf.message import DecodeError

from agent import crashpoints
from agent.durable_file import write_durably
from agent.errors import InputError
from agent.proto.tbox.v1 import (
    SCHEMA_VERSION,
    DoubleValues,
    IntValues,
    Record,
    SecurityEvent,
    SecurityEventBatch,
    Series,
    StringValues,
    TelemetryBatch,
    UintValues,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DECOMPRESSED",
    "DEFAULT_MAX_RAW_BYTES",
    "MAX_TRIALS",
    "ZSTD_MAGIC",
    "Batch",
    "BatchBuilder",
    "DecodedSample",
    "RecordLike",
    "SampleLike",
    "SequenceCounter",
    "UnbatchableRecordError",
    "decode_batch",
    "decode_event_batch",
    "encode_record",
    "first_sequence",
    "samples_of",
]

log = logging.getLogger(__name__)

#: The default cap of one batch payload (compressed), as the issue asks: 128 KiB.
DEFAULT_MAX_BYTES = 128 * 1024
#: At most this many compressions per batch while looking for the largest prefix that fits.
MAX_TRIALS = 4
#: The first four bytes of every zstd frame (RFC 8878).
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Default limit of a decompressed batch in the decode helpers (a guard against zstd bombs).
DEFAULT_MAX_DECOMPRESSED = 64 * 1024 * 1024
#: Default limit of a batch before compression, well within what the decode helpers accept.
DEFAULT_MAX_RAW_BYTES = 16 * 1024 * 1024

_MICROS = 1_000_000
_INT64_MIN, _INT64_END, _UINT64_END = -(2**63), 2**63, 2**64
# Times stay within ±2**62 µs (±146,000 years) so that any delta between two fits in a sint64.
_TIME_LIMIT_US = 2**62
_UINT32_END = 2**32
# Tag of field 5 (records / events) with wire type 2 (length-delimited): (5 << 3) | 2.
_ITEMS_TAG = b"\x2a"
# Fill ratio at which a trial batch is good enough: growing it further would cost another
# compression for at most a few percent more records per publish.
_GOOD_FILL = 0.85
# Guesses aim a little below the cap, as compressed size grows slightly faster than raw size
# near the end of a batch (fewer matches to what came before at the start of the window).
_AIM = 0.97
# Ratio assumed before the first batch: telemetry compresses 3-10x with zstd level 3.
_INITIAL_RATIO = 4.0

# Value kinds, in the order of Series' value fields.
_DOUBLE, _INT, _UINT, _STRING = 0, 1, 2, 3
_KIND_OF_TYPE: dict[type, int] = {float: _DOUBLE, int: _INT, str: _STRING}

Value = float | int | str


class SampleLike(Protocol):
    """One sample: what ``agent.schemes``' ``Sample(signal, t, value)`` provides."""

    @property
    def signal(self) -> str:
        """The signal's name."""

    @property
    def t(self) -> float:
        """When it was observed, in seconds since the Unix epoch."""

    @property
    def value(self) -> float | int | str:
        """The physical value (a ``str`` for a value-table name)."""


class RecordLike(Protocol):
    """One collected record: what ``agent.schemes``' ``CollectedRecord`` provides."""

    @property
    def scheme_id(self) -> str:
        """Id of the scheme that made it."""

    @property
    def priority(self) -> int:
        """The scheme's priority (0 to 2**32 - 1)."""

    @property
    def trigger_time(self) -> float:
        """When the scheme triggered, in seconds since the Unix epoch."""

    @property
    def samples(self) -> Sequence[SampleLike]:
        """The samples collected."""


class DecodedSample(NamedTuple):
    """One sample read back from a decoded record."""

    signal: str
    t: float
    value: Value


# --------------------------------------------------------------------------------------------
# Records


def _micros(seconds: float, what: str) -> int:
    if not math.isfinite(seconds):
        raise ValueError(f"{what} is {seconds!r}, not a finite time")
    us = round(seconds * _MICROS)
    if not -_TIME_LIMIT_US < us < _TIME_LIMIT_US:
        raise ValueError(f"{what} {seconds!r} is out of range")
    return us


def _time_deltas(times: list[float], base_us: int, signal: str) -> list[int]:
    """Microsecond deltas of *times*: the first from *base_us*, each next from the one before."""
    try:
        us = [round(t * _MICROS) for t in times]
    except (ValueError, OverflowError, TypeError):  # NaN, infinity, not a number
        bad = next(t for t in times if not isinstance(t, int | float) or not math.isfinite(t))
        raise ValueError(f"signal {signal!r}: time {bad!r} is not a finite time") from None
    if min(us) <= -_TIME_LIMIT_US or max(us) >= _TIME_LIMIT_US:
        raise ValueError(f"signal {signal!r}: a sample time is out of range")
    previous = [base_us]
    previous.extend(us[:-1])
    return list(map(operator.sub, us, previous))


def _plain(value: object, signal: str) -> tuple[int, Value]:
    """Kind and plain value of a sample whose type is not exactly float, int or str.

    Subclasses (``bool``, ``IntEnum``, numpy scalars) become the plain type, which is what the
    protobuf runtime accepts (it refuses a ``bool`` for an integer field).
    """
    if isinstance(value, int):
        return _INT, int(value)
    if isinstance(value, float):
        return _DOUBLE, float(value)
    if isinstance(value, str):
        return _STRING, str(value)
    raise TypeError(f"signal {signal!r}: cannot encode a value of type {type(value).__name__}")


def _int_kind(value: int) -> int:
    if _INT64_MIN <= value < _INT64_END:
        return _INT
    # Only unsigned 64-bit signals reach 2**63; anything larger has no integer column and is sent
    # as the nearest double rather than refused (a record must not fail because of one value).
    return _UINT if 0 <= value < _UINT64_END else _DOUBLE


def _series(signal: str, kind: int, deltas: list[int], values: list[Value]) -> Series:
    if kind == _DOUBLE:
        doubles = cast("list[float]", values)
        return Series(signal=signal, time_delta_us=deltas, doubles=DoubleValues(values=doubles))
    if kind == _INT:
        return Series(
            signal=signal, time_delta_us=deltas, ints=IntValues(values=cast("list[int]", values))
        )
    if kind == _UINT:
        return Series(
            signal=signal, time_delta_us=deltas, uints=UintValues(values=cast("list[int]", values))
        )
    return Series(
        signal=signal,
        time_delta_us=deltas,
        strings=StringValues(values=cast("list[str]", values)),
    )


def encode_record(record: RecordLike) -> bytes:
    """The bytes the upload queue stores for *record*: a serialized ``tbox.v1.Record``.

    Samples are grouped into one ``Series`` per signal and value type, in order of first
    appearance; within a series they keep their order. Times are rounded to microseconds. ``int``
    (and ``bool``) values stay integers (``ints`` from -2**63 to 2**63-1, ``uints`` up to 2**64-1,
    beyond that the nearest double), ``float`` values are doubles, ``str`` values strings.

    Raises :class:`ValueError` for a time that is not finite or more than 146,000 years from the
    epoch, or a priority outside 0..2**32-1; :class:`TypeError` for a value of another type.
    """
    trigger_us = _micros(record.trigger_time, f"scheme {record.scheme_id!r}: trigger time")
    priority = record.priority
    if not 0 <= priority < _UINT32_END:
        raise ValueError(f"scheme {record.scheme_id!r}: priority {priority} is outside 0..2**32-1")
    # The per-sample loop is the encoder's hot path: one dict look-up for the type, one for the
    # column, two appends. Range checks and time conversion then run per column, in C.
    columns: dict[tuple[str, int], tuple[list[float], list[Value]]] = {}
    kind_of_type = _KIND_OF_TYPE
    for sample in record.samples:
        value = sample.value
        kind = kind_of_type.get(type(value))
        if kind is None:
            kind, value = _plain(value, sample.signal)
        key = (sample.signal, kind)
        column = columns.get(key)
        if column is None:
            column = columns[key] = ([], [])
        column[0].append(sample.t)
        column[1].append(value)

    series = []
    for (signal, kind), (times, values) in columns.items():
        ints = cast("list[int]", values)
        if kind == _INT and (min(ints) < _INT64_MIN or max(ints) >= _INT64_END):
            # Integers beyond int64: split the column by the integer kind of each value.
            split: dict[int, tuple[list[float], list[Value]]] = {}
            for t, v in zip(times, ints, strict=True):
                int_kind = _int_kind(v)
                part = split.setdefault(int_kind, ([], []))
                part[0].append(t)
                if int_kind == _DOUBLE:
                    try:
                        part[1].append(float(v))
                    except OverflowError:
                        raise ValueError(
                            f"signal {signal!r}: integer {v} is out of range"
                        ) from None
                else:
                    part[1].append(v)
            for part_kind, (part_times, part_values) in split.items():
                deltas = _time_deltas(part_times, trigger_us, signal)
                series.append(_series(signal, part_kind, deltas, part_values))
        else:
            series.append(_series(signal, kind, _time_deltas(times, trigger_us, signal), values))
    message = Record(
        scheme_id=record.scheme_id,
        priority=priority,
        trigger_time_us=trigger_us,
        series=series,
    )
    return message.SerializeToString()


def samples_of(record: Record) -> list[DecodedSample]:
    """The samples of a decoded record, in time order (stable: ties keep series order).

    Times are seconds since the Unix epoch, rebuilt from the microsecond deltas.
    """
    out: list[DecodedSample] = []
    base = record.trigger_time_us
    for series in record.series:
        which = series.WhichOneof("values")
        values: Sequence[Value]
        if which == "doubles":
            values = series.doubles.values
        elif which == "ints":
            values = series.ints.values
        elif which == "uints":
            values = series.uints.values
        elif which == "strings":
            values = series.strings.values
        else:
            values = []
        us = base
        for delta, value in zip(series.time_delta_us, values, strict=False):
            us += delta
            out.append(DecodedSample(series.signal, us / _MICROS, value))
    out.sort(key=lambda s: s.t)
    return out


# --------------------------------------------------------------------------------------------
# Batches


class UnbatchableRecordError(InputError):
    """The first stored payload cannot go into any batch; drop it (``reason`` names why).

    ``reason`` is ``"malformed"`` (the bytes do not parse as the topic's item message) or
    ``"too_large"`` (even alone it exceeds the batch cap after compression, or the limit before).
    """

    def __init__(self, reason: Literal["malformed", "too_large"], message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Batch:
    """One built batch: ``payload`` is what to publish; it holds the first ``count`` payloads."""

    payload: bytes
    sequence: int
    count: int
    raw_bytes: int


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zstd_bound(size: int) -> int:
    # ZSTD_COMPRESSBOUND from zstd.h: the largest frame zstd can produce for `size` input bytes
    # (header and checksum included), plus a few bytes of slack for our frame parameters.
    margin = ((128 << 10) - size) >> 11 if size < (128 << 10) else 0
    return size + (size >> 8) + margin + 32


class BatchBuilder:
    """Packs stored record payloads into zstd-compressed batches of at most ``max_bytes``.

    ``kind`` picks the topic's message: ``"telemetry"`` (payloads are ``tbox.v1.Record`` bytes from
    :func:`encode_record`; batches are ``TelemetryBatch``) or ``"events"`` (payloads are
    serialized ``tbox.v1.SecurityEvent``; batches are ``SecurityEventBatch``). ``level`` is the
    zstd level. ``max_raw_bytes`` bounds a batch before compression, which bounds the memory
    needed to build and to decode it however well it compresses (the decode helpers accept 64 MiB
    by default). Not thread-safe (one zstd context is reused): one builder per uplink task.
    """

    def __init__(
        self,
        vehicle_id: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        level: int = 3,
        kind: Literal["telemetry", "events"] = "telemetry",
        max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES,
    ) -> None:
        if max_bytes < 256:
            raise ValueError(f"max_bytes {max_bytes} is too small for a batch (minimum 256)")
        if max_raw_bytes < max_bytes:
            raise ValueError(f"max_raw_bytes {max_raw_bytes} is below max_bytes {max_bytes}")
        self.vehicle_id = vehicle_id
        self.max_bytes = max_bytes
        self.max_raw_bytes = max_raw_bytes
        self.kind = kind
        self._batch_type = TelemetryBatch if kind == "telemetry" else SecurityEventBatch
        self._item_type = Record if kind == "telemetry" else SecurityEvent
        self._compressor = zstandard.ZstdCompressor(level=level)
        # Raw/compressed ratio of the previous batch: the first guess for the next one.
        self._ratio = _INITIAL_RATIO

    def header(self, *, sequence: int, created_time: float) -> bytes:
        """The serialized batch without its items (fields 1-4)."""
        return self._batch_type(
            vehicle_id=self.vehicle_id,
            sequence=sequence,
            schema_version=SCHEMA_VERSION,
            created_time_us=_micros(created_time, "batch creation time"),
        ).SerializeToString()

    def build(self, payloads: Sequence[bytes], *, sequence: int, created_time: float) -> Batch:
        """One batch holding the longest prefix of *payloads* that fits (at least one).

        *payloads* are stored items in the order they should be sent; the caller publishes
        ``batch.payload`` and, once the broker acknowledged it, deletes ``payloads[:batch.count]``.
        Raises :class:`UnbatchableRecordError` if ``payloads[0]`` is malformed or too large even
        alone (a later bad payload just ends the batch before it), and :class:`ValueError` if
        *payloads* is empty.
        """
        if not payloads:
            raise ValueError("no payloads to batch")
        header = self.header(sequence=sequence, created_time=created_time)
        cap = self.max_bytes
        framed: list[bytes] = []  # framed[i]: tag + length + payloads[i]
        raw = [len(header)]  # raw[n]: uncompressed batch size with the first n payloads
        limit = len(payloads)  # no batch may hold more payloads than this

        def extend_to(n: int) -> int:
            """Frame and check payloads up to n (fewer if one is malformed); return how many."""
            nonlocal limit
            while len(framed) < min(n, limit):
                i = len(framed)
                payload = payloads[i]
                if not self._well_formed(payload):
                    limit = i
                    if i == 0:
                        raise UnbatchableRecordError(
                            "malformed",
                            f"stored {self.kind} payload of {len(payload)} bytes does not parse "
                            f"as tbox.v1.{self._item_type.__name__}",
                        )
                    break
                piece = _ITEMS_TAG + _varint(len(payload)) + payload
                if raw[-1] + len(piece) > self.max_raw_bytes:
                    limit = i
                    if i == 0:
                        raise UnbatchableRecordError(
                            "too_large",
                            f"stored {self.kind} payload of {len(payload)} bytes exceeds the "
                            f"uncompressed batch limit of {self.max_raw_bytes}",
                        )
                    break
                framed.append(piece)
                raw.append(raw[-1] + len(piece))
            return len(framed)

        def prefix_for(raw_target: float) -> int:
            """The most payloads whose uncompressed batch stays within raw_target (≥ 1)."""
            n = 1
            while n < limit and extend_to(n + 1) > n and raw[n + 1] <= raw_target:
                n += 1
            return n

        def compress(n: int) -> bytes:
            return self._compressor.compress(header + b"".join(framed[:n]))

        extend_to(1)
        # Every prefix within zstd's worst case fits without a trial: start from the largest.
        fits = 0
        while fits < limit and _zstd_bound(raw[fits + 1]) <= cap:
            fits += 1
            extend_to(fits + 1)
        best: bytes | None = None  # compressed bytes of the first `fits` payloads, once known
        too_many = limit + 1  # the smallest prefix known not to fit
        size_of_one = 0
        guess = prefix_for(cap * self._ratio * _AIM)
        for _ in range(MAX_TRIALS):
            guess = min(guess, too_many - 1)
            if guess <= fits:
                break  # the guess would not beat what is known to fit
            data = compress(guess)
            if guess == 1:
                size_of_one = len(data)
            if len(data) <= cap:
                fits, best = guess, data
                if guess >= limit or len(data) >= _GOOD_FILL * cap:
                    break
            else:
                too_many = guess
            # Secant step: scale the raw size by how far the compressed size is from the cap.
            guess = prefix_for(raw[guess] * cap / len(data) * _AIM)
        if fits == 0 and too_many > 1:  # the trials ran out before trying payloads[0] alone
            data = compress(1)
            size_of_one = len(data)
            if len(data) <= cap:
                fits, best = 1, data
        if fits == 0:
            raise UnbatchableRecordError(
                "too_large",
                f"stored {self.kind} payload of {len(payloads[0])} bytes compresses to "
                f"{size_of_one} bytes, more than the batch cap of {cap}",
            )
        if best is None:
            best = compress(fits)
        self._ratio = max(1.0, raw[fits] / len(best))
        return Batch(payload=best, sequence=sequence, count=fits, raw_bytes=raw[fits])

    def _well_formed(self, payload: bytes) -> bool:
        # The C parser checks the wire format (and UTF-8 of strings) at native speed; the parsed
        # object is dropped, the batch carries the stored bytes as they are.
        try:
            self._item_type.FromString(payload)
        except (DecodeError, ValueError, RuntimeError):
            return False
        return True


def _decompress(payload: bytes, max_size: int, what: str) -> bytes:
    if payload[:4] != ZSTD_MAGIC:
        raise InputError(f"{what} payload is not a zstd frame (starts with {payload[:4].hex()})")
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as e:
        raise InputError(f"{what} payload has a broken zstd header: {e}") from None
    if declared > max_size:
        raise InputError(f"{what} payload declares {declared} bytes, more than {max_size}")
    try:
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=max_size)
    except zstandard.ZstdError as e:
        raise InputError(f"{what} payload does not decompress: {e}") from None


def decode_batch(payload: bytes, *, max_size: int = DEFAULT_MAX_DECOMPRESSED) -> TelemetryBatch:
    """Decompress and parse a ``telemetry`` payload; :class:`InputError` if it is not one.

    *max_size* bounds the decompressed size (a guard against decompression bombs).
    """
    batch = TelemetryBatch()
    try:
        batch.ParseFromString(_decompress(payload, max_size, "telemetry"))
    except DecodeError as e:
        raise InputError(f"telemetry payload is not a tbox.v1.TelemetryBatch: {e}") from None
    return batch


def decode_event_batch(
    payload: bytes, *, max_size: int = DEFAULT_MAX_DECOMPRESSED
) -> SecurityEventBatch:
    """Decompress and parse an ``events`` payload; :class:`InputError` if it is not one."""
    batch = SecurityEventBatch()
    try:
        batch.ParseFromString(_decompress(payload, max_size, "events"))
    except DecodeError as e:
        raise InputError(f"events payload is not a tbox.v1.SecurityEventBatch: {e}") from None
    return batch


# --------------------------------------------------------------------------------------------
# Sequence numbers

RESERVE_WRITTEN = crashpoints.declare(
    "sequence.reserve_written",
    "a new sequence reservation written and fsynced to the temporary file, not yet renamed",
)
RESERVE_RENAMED = crashpoints.declare(
    "sequence.reserve_renamed",
    "a new sequence reservation renamed into place, directory not yet fsynced",
)


def first_sequence(persisted: int | None, now: float) -> int:
    """The first number a counter may hand out, given its persisted reservation.

    With a reservation, the number after it (numbers up to it may have been used before a crash).
    Without one (a new vehicle, or a lost or unreadable file), the current time in microseconds
    since the epoch: larger than any number a previous counter could have reached unless it handed
    out more than a million numbers per second or the clock went back, so a lost file does not make
    the backend drop new batches as duplicates of old ones.
    """
    if persisted is not None:
        return persisted + 1
    return max(1, int(now * _MICROS))


class SequenceCounter:
    """Per-vehicle sequence numbers, strictly increasing across restarts and crashes.

    The file at *path* holds one decimal number: the highest number this counter may have handed
    out. Before handing out a number above it, the counter writes a new reservation ``block``
    numbers further (temporary file, fsync, ``os.replace``, fsync of the directory). So each
    block costs one synchronous write; call :meth:`next` from a worker thread if that matters.
    Thread-safe.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        block: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if block < 1:
            raise ValueError(f"block {block} must be at least 1")
        self.path = Path(path)
        self.block = block
        self._lock = threading.Lock()
        persisted = self._load()
        self._next = first_sequence(persisted, clock())
        # Numbers up to _reserved may be handed out without writing; a reservation is always
        # written before the first number after a (re)start, so this starts below _next.
        self._reserved = self._next - 1

    def _load(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("sequence file %s unreadable (%s); restarting from the clock", self.path, e)
            return None
        text = text.strip()
        if not text.isdigit() or int(text) >= _UINT64_END:
            log.warning(
                "sequence file %s holds %r; restarting from the clock", self.path, text[:40]
            )
            return None
        return int(text)

    def next(self) -> int:
        """The next sequence number (persisting a new reservation first when needed).

        Raises :class:`OSError` if the reservation cannot be written: without it, the number
        could be reused after a crash, so none is handed out.
        """
        with self._lock:
            number = self._next
            if number > self._reserved:
                self._persist(number + self.block - 1)
            self._next = number + 1
            return number

    def _persist(self, reserved: int) -> None:
        # Durable rename: without the directory fsync a power cut could bring back the old
        # reservation, and numbers handed out since would be reused.
        write_durably(
            self.path,
            f"{reserved}\n".encode("ascii"),
            written=RESERVE_WRITTEN,
            renamed=RESERVE_RENAMED,
        )
        self._reserved = reserved
