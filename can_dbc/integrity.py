"""Rolling counters and checksums of CAN messages: find them in a DBC, compute, fill, verify.

Safety-relevant messages carry an *alive counter* (incremented by the sender with every frame,
wrapping at its bit width) and a *checksum* over the frame, so receivers can detect lost,
repeated, stale or corrupted frames. The intrusion-detection engine reuses this module to check
them on received traffic; the simulator uses it to fill them into generated frames.

Declaring them in a DBC (machine-readable, as ``can_dbc/vehicles/tbox_ev.dbc`` does)::

    BA_DEF_ SG_ "SigType" ENUM "Normal","Counter","Checksum";
    BA_DEF_ BO_ "ChecksumAlgo" STRING ;
    BA_DEF_DEF_ "SigType" "Normal";
    BA_DEF_DEF_ "ChecksumAlgo" "";
    BA_ "SigType" SG_ 176 ESC_VehSpd_Counter 1;
    BA_ "SigType" SG_ 176 ESC_VehSpd_CRC 2;
    BA_ "ChecksumAlgo" BO_ 176 "crc8_sae_j1850";

A message with any explicit ``SigType`` or ``ChecksumAlgo`` attribute is described by its
attributes alone. Otherwise the opendbc naming conventions are used: a counter is a signal whose
last name component is ``COUNTER``, ``CNT``, ``CTR``, ``ALIVE`` or ``ALIVECOUNTER`` (``COUNTER``,
``_COUNTER``, ``ESC_CNT``, ``RollingCounter``…; 2–8 bits, unscaled); a checksum one whose last
component is ``CHECKSUM``, ``CHKSUM``, ``CRC`` or ``CRC8`` (4–16 bits, unscaled). Conventions
carry no algorithm: :attr:`IntegritySpec.algorithm` is then ``None`` (opendbc keeps algorithms in
code per car make) unless the caller passes a default.

Checksum coverage (AUTOSAR E2E profile 1 style, one rule for every algorithm):

    checksum = ALGO( data_id ‖ payload with the checksum's bits cleared and every byte that holds
                     only checksum bits left out )

where ``data_id`` is the frame id as 2 bytes little-endian for 11-bit ids (4 bytes for 29-bit
ids), so a frame copied onto another id fails the check. For the usual byte-aligned 8-bit
checksum this is "all other bytes of the frame, in order, after the id". The counter is covered.

Algorithms (:data:`ALGORITHMS`):

* ``crc8_sae_j1850`` — CRC-8/SAE-J1850: polynomial 0x1D, initial value 0xFF, final XOR 0xFF,
  no reflection (check value of ``b"123456789"`` is 0x4B). AUTOSAR's ``Crc_CalculateCRC8``.
* ``crc8_h2f`` — CRC-8/AUTOSAR (0x2F polynomial, init 0xFF, xor-out 0xFF; check 0xDF).
* ``xor8`` — XOR of all covered bytes.
* ``sum8`` — sum of all covered bytes modulo 256.

Results are truncated to the checksum signal's width. Counters wrap at ``2**length``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ALGORITHMS",
    "IntegritySpec",
    "SignalField",
    "crc8_h2f",
    "crc8_sae_j1850",
    "sum8",
    "xor8",
]


def _crc8_table(poly: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_SAE_J1850 = _crc8_table(0x1D)
_H2F = _crc8_table(0x2F)


# Each algorithm as (initial state, step(state, bytes) -> state, final XOR); the result is
# ``(state ^ xor) & 0xFF``. Splitting out ``step`` lets a spec pre-compute the state after its
# constant data id, so per frame only the payload bytes are processed.
_Step = Callable[[int, "bytes | bytearray"], int]


def _crc_step(table: tuple[int, ...]) -> _Step:
    def step(crc: int, data: bytes | bytearray) -> int:
        for b in data:
            crc = table[crc ^ b]
        return crc

    return step


def _xor_step(x: int, data: bytes | bytearray) -> int:
    for b in data:
        x ^= b
    return x


def _sum_step(x: int, data: bytes | bytearray) -> int:
    return (x + sum(data)) & 0xFF


_STEPPERS: dict[str, tuple[int, _Step, int]] = {
    "crc8_sae_j1850": (0xFF, _crc_step(_SAE_J1850), 0xFF),
    "crc8_h2f": (0xFF, _crc_step(_H2F), 0xFF),
    "xor8": (0, _xor_step, 0),
    "sum8": (0, _sum_step, 0),
}


def _run(name: str, data: bytes | bytearray) -> int:
    init, step, xorout = _STEPPERS[name]
    return (step(init, data) ^ xorout) & 0xFF


def crc8_sae_j1850(data: bytes | bytearray) -> int:
    """CRC-8/SAE-J1850 (poly 0x1D, init 0xFF, xor-out 0xFF) of *data*."""
    return _run("crc8_sae_j1850", data)


def crc8_h2f(data: bytes | bytearray) -> int:
    """CRC-8/AUTOSAR "H2F" (poly 0x2F, init 0xFF, xor-out 0xFF) of *data*."""
    return _run("crc8_h2f", data)


def xor8(data: bytes | bytearray) -> int:
    """XOR of all bytes of *data*."""
    return _run("xor8", data)


def sum8(data: bytes | bytearray) -> int:
    """Sum of all bytes of *data* modulo 256."""
    return _run("sum8", data)


#: Checksum algorithms by the name used in the ``ChecksumAlgo`` attribute.
ALGORITHMS: Mapping[str, Callable[[bytes | bytearray], int]] = {
    "crc8_sae_j1850": crc8_sae_j1850,
    "crc8_h2f": crc8_h2f,
    "xor8": xor8,
    "sum8": sum8,
}


@dataclass(frozen=True)
class SignalField:
    """Where a signal's raw bits sit in a payload of *frame_length* bytes (either byte order).

    The payload is read as one integer — little-endian for Intel signals, big-endian for
    Motorola ones — so a signal is ``(value >> shift) & mask`` in either case.
    """

    frame_length: int
    big_endian: bool
    shift: int
    length: int

    @classmethod
    def of(cls, signal: Any, frame_length: int) -> SignalField:
        """The field of a cantools ``Signal`` in a frame of *frame_length* bytes.

        Raises ``ValueError`` if the signal does not fit inside the frame.
        """
        length = int(signal.length)
        start = int(signal.start)
        if signal.byte_order == "little_endian":
            f = cls(frame_length, False, start, length)
        else:
            # Motorola: the DBC start bit is the MSB in the "sawtooth" numbering. Walk to the LSB
            # in MSB-first numbering, then express it as a bit of the big-endian integer.
            msb_first = (start // 8) * 8 + 7 - start % 8
            lsb = msb_first + length - 1
            byte, bit = lsb // 8, 7 - lsb % 8
            f = cls(frame_length, True, (frame_length - 1 - byte) * 8 + bit, length)
        if f.shift < 0 or f.shift + length > frame_length * 8 or length <= 0:
            raise ValueError(f"signal {signal.name} does not fit in {frame_length} bytes")
        return f

    @property
    def mask(self) -> int:
        """``2**length - 1``."""
        return (1 << self.length) - 1

    @property
    def byte_masks(self) -> tuple[int, ...]:
        """Per payload byte, the bits this field occupies (0 for bytes it does not touch)."""
        whole = self.mask << self.shift
        return tuple(whole.to_bytes(self.frame_length, "big" if self.big_endian else "little"))

    def read(self, data: bytes | bytearray) -> int:
        """The field's raw unsigned value in *data* (short payloads read as zero-padded)."""
        n = self.frame_length
        chunk = bytes(data[:n]).ljust(n, b"\0")
        value = int.from_bytes(chunk, "big") if self.big_endian else int.from_bytes(chunk, "little")
        return (value >> self.shift) & self.mask

    def write(self, data: bytearray, raw: int) -> None:
        """Store the unsigned *raw* value (truncated to the field) into *data* in place."""
        n = self.frame_length
        if self.length == 8 and self.shift % 8 == 0 and len(data) >= n:
            # A whole byte (the usual checksum): no need to go through an integer.
            byte = n - 1 - self.shift // 8 if self.big_endian else self.shift // 8
            data[byte] = raw & 0xFF
            return
        order: Literal["big", "little"] = "big" if self.big_endian else "little"
        value = int.from_bytes(bytes(data[:n]).ljust(n, b"\0"), order)
        value &= ~(self.mask << self.shift)
        value |= (raw & self.mask) << self.shift
        data[:n] = value.to_bytes(n, order)


_COUNTER_NAMES = frozenset({"COUNTER", "CNT", "CTR", "ALIVE", "ALIVECOUNTER", "ALIVECTR"})
_CHECKSUM_NAMES = frozenset({"CHECKSUM", "CHKSUM", "CRC", "CRC8", "CHECKSUM8"})
_TOKEN_RE = re.compile(r"[A-Z][a-z]+[0-9]*|[A-Z]+(?![a-z])[0-9]*|[a-z]+[0-9]*|[0-9]+")


def _last_token(name: str) -> str:
    """The last component of a signal name: ``ESC_VehSpd_CRC`` → ``CRC``, ``RollingCounter`` →
    ``COUNTER``."""
    tail = name.rsplit("_", 1)[-1] or name.strip("_")
    parts: list[str] = _TOKEN_RE.findall(tail)
    token: str = parts[-1] if parts else tail
    upper = token.upper()
    # "AliveCounter" splits into Alive + Counter; keep the joined form recognisable too.
    if len(parts) >= 2 and (parts[-2] + parts[-1]).upper() in _COUNTER_NAMES:
        return (parts[-2] + parts[-1]).upper()
    return upper


def _unscaled(signal: Any) -> bool:
    return float(signal.scale) == 1.0 and float(signal.offset) == 0.0 and not signal.is_float


def _attribute(owner: Any, name: str) -> Any | None:
    """An explicitly set DBC attribute of a cantools object, resolved to its value or choice."""
    dbc = getattr(owner, "dbc", None)
    attrs = getattr(dbc, "attributes", None) if dbc is not None else None
    if not attrs or name not in attrs:
        return None
    attr = attrs[name]
    value = attr.value
    choices = getattr(attr.definition, "choices", None)
    if choices and isinstance(value, int) and 0 <= value < len(choices):
        return choices[value]  # cantools keeps ENUM values as indices
    return value


@dataclass(frozen=True)
class IntegritySpec:
    """The counter and checksum of one message, and how to compute and fill them.

    ``counter`` and ``checksum`` are cantools ``Signal`` objects (either may be ``None``);
    ``algorithm`` names an entry of :data:`ALGORITHMS` or is ``None`` when unknown, in which
    case :meth:`compute_checksum` raises and :meth:`apply` leaves the checksum alone.
    """

    frame_id: int
    is_extended: bool
    length: int
    counter: Any | None
    checksum: Any | None
    algorithm: str | None
    declared: bool = False
    _counter_field: SignalField | None = field(default=None, repr=False, compare=False)
    _checksum_field: SignalField | None = field(default=None, repr=False, compare=False)
    _cover: tuple[tuple[int, int], ...] = field(default=(), repr=False, compare=False)
    _cover_span: tuple[int, int] | None = field(default=None, repr=False, compare=False)
    _id_state: int = field(default=0, repr=False, compare=False)  # state after the data id
    _step: _Step | None = field(default=None, repr=False, compare=False)
    _xorout: int = field(default=0, repr=False, compare=False)
    _width_mask: int = field(default=0xFF, repr=False, compare=False)

    @classmethod
    def for_message(
        cls, message: Any, *, default_algorithm: str | None = None
    ) -> IntegritySpec | None:
        """The spec of a cantools ``Message``, or ``None`` if it has no counter and no checksum.

        Attributes win over naming conventions (see the module docstring); *default_algorithm*
        is used for a checksum whose algorithm is not declared. Raises ``ValueError`` for an
        algorithm name that is not in :data:`ALGORITHMS`.
        """
        signals = list(message.signals)
        counter = checksum = None
        declared = False
        for sig in signals:
            kind = _attribute(sig, "SigType")
            if kind is None:
                continue
            declared = True
            if kind == "Counter" and counter is None:
                counter = sig
            elif kind == "Checksum" and checksum is None:
                checksum = sig
        algorithm_attr = _attribute(message, "ChecksumAlgo")
        if algorithm_attr not in (None, ""):
            declared = True
        if not declared:
            counter = _by_convention(signals, _COUNTER_NAMES, 2, 8)
            checksum = _by_convention(signals, _CHECKSUM_NAMES, 4, 16)
        if counter is None and checksum is None:
            return None
        algorithm: str | None = None
        if checksum is not None:
            algorithm = str(algorithm_attr) if algorithm_attr not in (None, "") else None
            algorithm = algorithm or default_algorithm
            if algorithm is not None and algorithm not in ALGORITHMS:
                known = ", ".join(ALGORITHMS)
                raise ValueError(
                    f"message {message.name}: unknown checksum algorithm {algorithm!r} "
                    f"(known: {known})"
                )
        length = int(message.length)
        extended = bool(message.is_extended_frame)
        counter_field = SignalField.of(counter, length) if counter is not None else None
        checksum_field = SignalField.of(checksum, length) if checksum is not None else None
        cover: tuple[tuple[int, int], ...] = ()
        if checksum_field is not None:
            masks = checksum_field.byte_masks
            # Keep each byte with its checksum bits cleared; drop bytes that are all checksum.
            cover = tuple((i, 0xFF & ~m) for i, m in enumerate(masks) if m != 0xFF)
        span: tuple[int, int] | None = None
        indices = [i for i, m in cover]
        if (
            cover
            and all(m == 0xFF for _, m in cover)
            and indices == list(range(indices[0], indices[-1] + 1))
        ):
            span = (indices[0], indices[-1] + 1)
        frame_id = int(message.frame_id)
        data_id = frame_id.to_bytes(4 if extended else 2, "little")
        id_state, step, xorout = 0, None, 0
        if algorithm is not None:
            init, step, xorout = _STEPPERS[algorithm]
            id_state = step(init, data_id)
        return cls(
            frame_id=frame_id,
            is_extended=extended,
            length=length,
            counter=counter,
            checksum=checksum,
            algorithm=algorithm,
            declared=declared,
            _counter_field=counter_field,
            _checksum_field=checksum_field,
            _cover=cover,
            _cover_span=span,
            _id_state=id_state,
            _step=step,
            _xorout=xorout,
            _width_mask=(1 << int(checksum.length)) - 1 if checksum is not None else 0xFF,
        )

    # -- counter ----------------------------------------------------------------------------

    @property
    def counter_modulus(self) -> int:
        """Number of distinct counter values (``2**bits``); 0 without a counter."""
        return 1 << int(self.counter.length) if self.counter is not None else 0

    def read_counter(self, data: bytes | bytearray) -> int | None:
        """The counter value in *data*, or ``None`` without a counter."""
        f = self._counter_field
        return f.read(data) if f is not None else None

    def counter_follows(self, previous: int, current: int) -> bool:
        """Whether *current* is the value that follows *previous* (with wrap-around)."""
        m = self.counter_modulus
        return m > 0 and current == (previous + 1) % m

    # -- checksum ---------------------------------------------------------------------------

    def read_checksum(self, data: bytes | bytearray) -> int | None:
        """The checksum value stored in *data*, or ``None`` without a checksum."""
        f = self._checksum_field
        return f.read(data) if f is not None else None

    def compute_checksum(self, data: bytes | bytearray) -> int:
        """The checksum *data* should carry (its own checksum bits are ignored).

        Raises ``ValueError`` if the message has no checksum or its algorithm is unknown.
        """
        step = self._step
        if step is None:
            raise ValueError(f"frame 0x{self.frame_id:X}: no checksum algorithm known")
        padded = data if len(data) >= self.length else bytes(data).ljust(self.length, b"\0")
        span = self._cover_span
        if span is not None:
            # Common case: the covered bytes are one contiguous run with no partial masks.
            covered = padded[span[0] : span[1]]
        else:
            covered = bytes(padded[i] & m for i, m in self._cover)
        return ((step(self._id_state, covered) ^ self._xorout) & 0xFF) & self._width_mask

    def verify(self, data: bytes | bytearray) -> bool | None:
        """Whether the stored checksum is right; ``None`` when it cannot be checked."""
        if self.checksum is None or self.algorithm is None:
            return None
        return self.read_checksum(data) == self.compute_checksum(data)

    # -- filling ----------------------------------------------------------------------------

    def apply(self, data: bytearray, counter_value: int) -> None:
        """Write *counter_value* (mod the counter's range) and then the checksum into *data*.

        The payload must already hold every other signal; the checksum is left untouched when
        the algorithm is unknown.
        """
        if self._counter_field is not None:
            self._counter_field.write(data, counter_value % self.counter_modulus)
        self.apply_checksum(data)

    def apply_checksum(self, data: bytearray) -> None:
        """Write the checksum of *data* into it (nothing if the algorithm is unknown)."""
        f = self._checksum_field
        if f is not None and self._step is not None:
            f.write(data, self.compute_checksum(data))


def _by_convention(signals: list[Any], names: frozenset[str], lo: int, hi: int) -> Any | None:
    """The first plausible signal whose last name component is in *names*."""
    for sig in signals:
        if (
            _last_token(sig.name) in names
            and lo <= int(sig.length) <= hi
            and _unscaled(sig)
            and not sig.is_multiplexer
            and sig.multiplexer_ids is None
        ):
            return sig
    return None
