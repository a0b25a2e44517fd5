"""DBC-driven CAN traffic with real timing: cycle times, jitter, arbitration and bus load.

:class:`TrafficGenerator` turns a :class:`~sim.vehicle.VehicleModel` and one or more DBCs per bus
into the frames the vehicle's ECUs would put on the wire. It is pure computation (no clock, no
I/O): call :meth:`TrafficGenerator.frames_until` with increasing simulated times and send the
frames wherever you like — in real time or as fast as possible.

Timing
    Every message is released at its ``GenMsgCycleTime`` (``default_cycle_ms`` when the DBC has
    none) on a fixed grid that starts at a random phase in [0, period), so messages do not all
    align. Each release is delayed by a half-normal jitter ``|N(0, jitter·period)|`` (capped at
    half a period): an ECU task can be late, never early, and since the grid itself does not
    drift the average rate is exact.
Events
    Messages whose ``GenMsgSendType`` is ``Event`` (or ``IfActive``) and that have no cycle time
    are *polled* every ``default_cycle_ms`` and sent only when their payload (counter and checksum
    aside) changed — once at start-up, then on change. Their unbound numeric signals hold a
    constant, so only bound quantities (doors, commands…) make them fire. An event message that
    does have a cycle time is sent periodically like the others.
Diagnostics
    UDS request/response messages are never generated: the request/response pairs belong to a
    tester and the ECU that answers it (see :mod:`firmware_stub`). A message is treated as
    diagnostic if its ``GenMsgSendType`` is ``NoMsgSendType``, it has ``DiagRequest``,
    ``DiagResponse`` or ``DiagState`` set to ``Yes``, or its id is an OBD/UDS id (0x7DF,
    0x7E0–0x7EF, 29-bit 0x18DA…/0x18DB…).
The wire
    Each bus carries one frame at a time at ``bitrate``. A released frame waits in its ECU's
    transmit buffer until the bus is idle; then the pending frame with the lowest arbitration
    field wins (standard before extended for the same base id). A frame released again while its
    previous instance is still waiting replaces it (counted in :attr:`TrafficGenerator.overruns`),
    as a CAN controller's transmit mailbox does. The frame's ``timestamp`` is the end of its
    transmission. Frame lengths in bits, stuffing included, come from :mod:`sim.wire`; CAN FD
    data phases take their time at ``data_bitrate``.
Values
    A signal bound to a model quantity (built-in table :data:`sim.bindings.TBOX_EV_BINDINGS`
    plus the ``bindings`` argument; keys ``"SIGNAL"`` or ``"MESSAGE.SIGNAL"``) carries that
    quantity, clamped to the signal's [minimum, maximum] and its raw range. Unbound signals:
    ``GenSigStartValue`` if the DBC sets one; else a stable valid choice (the lowest value whose
    name does not suggest invalid/fault/SNA) for enums; else 0 for 1–2-bit flags; else a slow
    deterministic sine (period 20–120 s) over the middle half of [minimum, maximum] (the middle
    fifth of the raw range when the DBC gives no range). Counters and checksums are filled with
    :mod:`can_dbc.integrity`: the counter advances by one per frame and wraps at its bit width.
    Multiplexed messages cycle through their multiplexer values, one per frame.
Robustness
    Any DBC loads: a message that cannot be generated (classic frame over 8 bytes, nested
    multiplexing, a signal outside the frame, an unknown checksum algorithm, an encoding error)
    is skipped once and listed with its reason in :attr:`TrafficGenerator.skipped_messages`.

Encoding is compiled once per message (and multiplexer value): per frame the generator only
computes each dynamic signal's raw integer, ORs it into one integer per byte order and converts
that to bytes.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import re
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import can

from can_dbc.integrity import IntegritySpec, SignalField
from sim.bindings import TBOX_EV_BINDINGS
from sim.errors import SimError
from sim.vehicle import VehicleModel
from sim.wire import FD_LENGTHS, STUFF_TABLE, frame_bits, header_bits, stuff_bits

__all__ = ["TrafficGenerator"]

log = logging.getLogger(__name__)

_BAD_CHOICE_RE = re.compile(
    r"invalid|error|err\b|fault|fail|sna|signal.?not|not.?avail|reserved|undefined|unknown|"
    r"^init|^n/?a$",
    re.IGNORECASE,
)
_EVENT_SEND_TYPES = frozenset({"Event", "IfActive", "OnChange", "OnWrite"})
_NO_SEND_TYPES = frozenset({"NoMsgSendType", "NotUsed", "noMsgSendType"})
_MIN_PERIOD_S = 0.001
_LOAD_WINDOW_S = 1.0


# ----------------------------------------------------------------------------- compiled encoders


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to encode one message for one multiplexer value."""

    length: int
    base_le: int
    base_be: int
    # (shift, mask, key, 1/scale, offset, raw_lo, raw_hi)
    qty_le: tuple[tuple[int, int, str, float, float, int, int], ...]
    qty_be: tuple[tuple[int, int, str, float, float, int, int], ...]
    # (shift, mask, omega, phase, raw centre, raw amplitude)
    wave_le: tuple[tuple[int, int, float, float, float, float], ...]
    wave_be: tuple[tuple[int, int, float, float, float, float], ...]
    # IEEE floats: (field, key or None, constant physical value, "f"/"d")
    floats: tuple[tuple[SignalField, str | None, float, str], ...]
    counter: tuple[bool, int, int] | None  # (big endian, shift, mask)

    def encode(self, t: float, values: Mapping[str, float], counter: int) -> bytearray:
        le = self.base_le
        be = self.base_be
        for shift, mask, key, inv, off, lo, hi in self.qty_le:
            r = round((values[key] - off) * inv)
            le |= ((lo if r < lo else hi if r > hi else r) & mask) << shift
        for shift, mask, key, inv, off, lo, hi in self.qty_be:
            r = round((values[key] - off) * inv)
            be |= ((lo if r < lo else hi if r > hi else r) & mask) << shift
        if self.wave_le or self.wave_be:
            sin = math.sin
            for shift, mask, omega, phase, centre, amp in self.wave_le:
                le |= (round(centre + amp * sin(omega * t + phase)) & mask) << shift
            for shift, mask, omega, phase, centre, amp in self.wave_be:
                be |= (round(centre + amp * sin(omega * t + phase)) & mask) << shift
        if self.counter is not None:
            big, shift, mask = self.counter
            if big:
                be |= (counter & mask) << shift
            else:
                le |= (counter & mask) << shift
        n = self.length
        if be:
            le |= int.from_bytes(be.to_bytes(n, "big"), "little")
        data = bytearray(le.to_bytes(n, "little"))
        for fld, fkey, const, fmt in self.floats:
            v = values[fkey] if fkey is not None else const
            raw = int.from_bytes(struct.pack("<" + fmt, v), "little")
            fld.write(data, raw)
        return data


class _SkipError(Exception):
    """A message cannot be generated; the text is the reason."""


def _raw_bounds(sig: Any) -> tuple[int, int]:
    """The raw integer range a signal's bits can hold."""
    n = int(sig.length)
    if sig.is_signed:
        return -(1 << (n - 1)), (1 << (n - 1)) - 1
    return 0, (1 << n) - 1


def _phys_raw_range(sig: Any) -> tuple[int, int, bool]:
    """Raw bounds from the signal's [minimum, maximum] within the bit range.

    Returns ``(lo, hi, from_dbc_range)``; the DBC range is ignored when absent, empty
    (``[0|0]`` is common in opendbc files) or not representable.
    """
    lo, hi = _raw_bounds(sig)
    scale = float(sig.scale)
    offset = float(sig.offset)
    mn, mx = sig.minimum, sig.maximum
    if mn is None or mx is None or not mn < mx or scale == 0:
        return lo, hi, False
    a = (float(mn) - offset) / scale
    b = (float(mx) - offset) / scale
    if a > b:
        a, b = b, a
    rlo = max(lo, math.ceil(a - 1e-9))
    rhi = min(hi, math.floor(b + 1e-9))
    if rlo > rhi:
        return lo, hi, False
    return rlo, rhi, True


@dataclass(slots=True)
class _Slot:
    """Scheduling state of one generated message on one bus."""

    name: str
    frame_id: int
    extended: bool
    fd: bool
    dlc: int
    arb_key: int
    period: float
    event: bool
    plans: tuple[_Plan, ...]
    spec: IntegritySpec | None
    nominal: float = 0.0
    mux_index: int = 0
    counter: int = 0
    queued: bool = False
    data: bytearray | None = None
    last_payloads: list[bytes | None] | None = None
    dead: bool = False
    header_stuff: int = 0  # stuff bits in SOF … DLC
    header_state: int = 0  # stuffing automaton state after the DLC (× 256)
    base_bits: int = 0  # bits of the frame with the header's stuff bits, without the data's


class _Bus:
    """One bus: its release schedule, its transmit queue and the wire."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sched: list[tuple[float, int, _Slot]] = []  # (release time, seq, slot)
        self.pending: list[tuple[int, _Slot]] = []  # (arbitration key, slot)
        self.free_at = 0.0
        self.held: can.Message | None = None
        self.held_end = 0.0
        self.wire: deque[tuple[float, float]] = deque()
        self.overruns = 0

    def next_start(self) -> float:
        if self.held is not None:
            return math.inf
        if self.pending:
            return self.free_at
        if not self.sched:
            return math.inf
        due = self.sched[0][0]
        return due if due > self.free_at else self.free_at


def _arbitration_key(frame_id: int, extended: bool) -> int:
    """Lower wins: base id, then the IDE bit (standard before extended), then the id extension."""
    if extended:
        return ((frame_id >> 18) << 19) | (1 << 18) | (frame_id & 0x3FFFF)
    return frame_id << 19


def _attr(owner: Any, name: str) -> Any | None:
    dbc = getattr(owner, "dbc", None)
    attrs = getattr(dbc, "attributes", None) if dbc is not None else None
    if not attrs or name not in attrs:
        return None
    attr = attrs[name]
    choices = getattr(attr.definition, "choices", None)
    value = attr.value
    if choices and isinstance(value, int) and 0 <= value < len(choices):
        return choices[value]
    return value


def _is_diagnostic(msg: Any) -> bool:
    if msg.send_type in _NO_SEND_TYPES:
        return True
    for attr in ("DiagRequest", "DiagResponse", "DiagState"):
        if _attr(msg, attr) in ("Yes", 1):
            return True
    fid = int(msg.frame_id)
    if msg.is_extended_frame:
        return (fid >> 16) & 0x1FFF in (0x18DA, 0x18DB)
    return fid == 0x7DF or 0x7E0 <= fid <= 0x7EF


class TrafficGenerator:
    """Generates the frames of every bus from DBCs and a vehicle model (see module docstring).

    * *buses* maps a bus name (the frames' ``channel``) to the cantools databases whose
      messages are sent on it; a frame id already sent by an earlier database of the same bus
      is skipped.
    * *model* is advanced by the generator (on a fixed grid of *model_step* seconds) from its
      current state, which is simulated time 0; do not step it yourself meanwhile.
    * *bitrate* / *data_bitrate*: nominal and CAN FD data-phase bit rates.
    * *default_cycle_ms*: period of messages without ``GenMsgCycleTime`` (and the poll period
      of event messages).
    * *jitter*: release jitter as a fraction of the period (standard deviation).
    * *seed*: makes phases, jitter and generated waves reproducible.
    * *start_time*: added to every frame's timestamp (e.g. ``time.time()`` at start).
    * *bindings*: extra ``"SIGNAL"`` / ``"MESSAGE.SIGNAL"`` → model quantity mappings; they
      take precedence over the built-in table. An unknown quantity raises :class:`SimError`.
    """

    def __init__(
        self,
        buses: Mapping[str, Sequence[Any]],
        model: VehicleModel,
        *,
        bitrate: int = 500_000,
        data_bitrate: int = 2_000_000,
        default_cycle_ms: float = 100.0,
        jitter: float = 0.03,
        seed: int = 0,
        start_time: float = 0.0,
        bindings: Mapping[str, str] | None = None,
        model_step: float = 0.01,
    ) -> None:
        if bitrate <= 0 or data_bitrate <= 0:
            raise ValueError("bitrate and data_bitrate must be positive")
        if default_cycle_ms <= 0:
            raise ValueError("default_cycle_ms must be positive")
        if jitter < 0:
            raise ValueError("jitter must be ≥ 0")
        if model_step <= 0:
            raise ValueError("model_step must be positive")
        self.model = model
        self.bitrate = bitrate
        self.data_bitrate = data_bitrate
        self.default_cycle_ms = default_cycle_ms
        self.jitter = jitter
        self.seed = seed
        self.start_time = start_time
        self.model_step = model_step
        self._values = model.values()
        self._bit_time = 1.0 / bitrate
        self._data_bit_time = 1.0 / data_bitrate
        self._rng = random.Random(f"traffic:{seed}")
        self._seq = 0
        self._now = 0.0
        self._model_steps = 0
        self._next_model_t = model_step - 1e-9
        self._gauss = self._rng.gauss
        self._skipped: dict[str, str] = {}
        self._user_bindings = dict(bindings or {})
        known = set(self._values)
        for sig, qty in self._user_bindings.items():
            if qty not in known:
                raise SimError(
                    f"binding {sig!r} → {qty!r}: the vehicle model has no quantity {qty!r}"
                )
        self._buses: list[_Bus] = []
        for bus_name, databases in buses.items():
            bus = _Bus(bus_name)
            self._buses.append(bus)
            seen: dict[tuple[int, bool], str] = {}
            for db in databases:
                for msg in db.messages:
                    self._add_message(bus, msg, seen)

    # ------------------------------------------------------------------------------ public

    @property
    def skipped_messages(self) -> Mapping[str, str]:
        """Messages that are not generated, as ``"bus/MESSAGE"`` → reason."""
        return dict(self._skipped)

    @property
    def overruns(self) -> dict[str, int]:
        """Per bus, frames replaced in their transmit buffer before they got the bus."""
        return {b.name: b.overruns for b in self._buses}

    @property
    def message_count(self) -> dict[str, int]:
        """Per bus, how many messages are being generated."""
        return {b.name: len(b.sched) for b in self._buses}

    @property
    def time(self) -> float:
        """Simulated seconds reached by the last :meth:`frames_until` call."""
        return self._now

    def bus_load(self) -> dict[str, float]:
        """Per bus, the fraction of wire time used over the last second of simulated time."""
        lo = self._now - _LOAD_WINDOW_S
        hi = self._now
        out: dict[str, float] = {}
        for bus in self._buses:
            busy = 0.0
            for start, end in bus.wire:
                s = start if start > lo else lo
                e = end if end < hi else hi
                if e > s:
                    busy += e - s
            out[bus.name] = busy / _LOAD_WINDOW_S
        return out

    @property
    def finished(self) -> bool:
        """Never: a vehicle keeps driving (the :class:`sim.runner.FrameProducer` protocol)."""
        return False

    def frames_until(self, t: float) -> list[can.Message]:
        """Advance to simulated time *t* (seconds since start) and return the frames completed.

        A frame is returned once its transmission has ended by *t*; frames come sorted by
        timestamp. Calls must use non-decreasing *t*; an earlier *t* returns nothing.
        """
        if t < self._now:
            return []
        out: list[can.Message] = []
        buses = self._buses
        for bus in buses:
            if bus.held is not None and bus.held_end <= t:
                out.append(bus.held)
                bus.held = None
        if len(buses) == 1:
            self._run_bus(buses[0], t, t, out)
        else:
            # Several buses share one model, which only moves forwards: interleave them in
            # order of their next transmission start, one frame at a time.
            while True:
                chosen: _Bus | None = None
                start = math.inf
                for b in buses:
                    s = b.next_start()
                    if s < start:
                        chosen, start = b, s
                if chosen is None or start > t:
                    break
                second = min((b.next_start() for b in buses if b is not chosen), default=math.inf)
                self._run_bus(chosen, t, min(t, second), out)
            if len(out) > 1:
                out.sort(key=_timestamp)
        self._now = t
        if t >= self._next_model_t:
            self._advance_model(t)
        horizon = t - _LOAD_WINDOW_S
        for bus in buses:
            wire = bus.wire
            while wire and wire[0][1] <= horizon:
                wire.popleft()
        return out

    # ----------------------------------------------------------------------------- the wire

    def _run_bus(self, bus: _Bus, t: float, until: float, out: list[can.Message]) -> None:
        """Transmit on *bus* every frame that starts by *until* (≤ *t*); hold one that ends
        after *t*. This is the hot loop: locals and inlined steps are deliberate."""
        sched = bus.sched
        pending = bus.pending
        heappop = heapq.heappop
        heappush = heapq.heappush
        wire_append = bus.wire.append
        values = self._values
        bit_time = self._bit_time
        data_bit_time = self._data_bit_time
        offset = self.start_time
        channel = bus.name
        table = STUFF_TABLE
        message = can.Message
        release = self._release
        while bus.held is None:
            # When does the wire next start a frame?
            if pending:
                start = bus.free_at
            elif sched:
                start = max(sched[0][0], bus.free_at)
            else:
                return
            if start > until:
                return
            if start >= self._next_model_t:
                self._advance_model(start)
            while sched and sched[0][0] <= start:
                due, _, slot = heappop(sched)
                release(bus, slot, due, values, heappush)
            if not pending:
                continue  # only event polls without a change
            slot = heappop(pending)[1]
            data = slot.data
            assert data is not None
            slot.queued = False
            slot.data = None
            if slot.fd:
                nominal, fast = frame_bits(slot.frame_id, slot.extended, data, fd=True)
                duration = nominal * bit_time + fast * data_bit_time
            else:
                state = slot.header_state
                bits = slot.base_bits
                for byte in data:
                    e = table[state + byte]
                    state = e & 0xFFFF
                    bits += e >> 16
                duration = bits * bit_time
            end = start + duration
            bus.free_at = end
            wire_append((start, end))
            # Positional: timestamp, arbitration_id, is_extended_id, is_remote_frame,
            # is_error_frame, channel, dlc, data, is_fd, is_rx, bitrate_switch (kwargs are slower).
            frame = message(
                offset + end,
                slot.frame_id,
                slot.extended,
                False,
                False,
                channel,
                slot.dlc,
                data,
                slot.fd,
                True,
                slot.fd,
            )
            if end <= t:
                out.append(frame)
            else:
                bus.held = frame
                bus.held_end = end

    def _release(
        self,
        bus: _Bus,
        slot: _Slot,
        due: float,
        values: Mapping[str, float],
        heappush: Any,
    ) -> None:
        """The ECU's task runs: build the frame and hand it to the transmit buffer."""
        if slot.dead:
            return
        # Next release: on the fixed grid, late by a half-normal jitter (never early).
        period = slot.period
        nominal = slot.nominal + period
        slot.nominal = nominal
        if self.jitter > 0:
            delay = abs(self._gauss(0.0, self.jitter * period))
            nominal += delay if delay < 0.5 * period else 0.5 * period
        self._seq += 1
        heappush(bus.sched, (nominal, self._seq, slot))

        plans = slot.plans
        i = slot.mux_index
        plan = plans[i]
        if len(plans) > 1:
            slot.mux_index = i + 1 if i + 1 < len(plans) else 0
        try:
            if slot.event:
                # Compare without the counter: only a change of content sends an event frame.
                assert slot.last_payloads is not None
                key = bytes(plan.encode(due, values, 0))
                if slot.last_payloads[i] == key:
                    return
                slot.last_payloads[i] = key
            data = plan.encode(due, values, slot.counter)
            spec = slot.spec
            if spec is not None:
                spec.apply_checksum(data)
        except Exception as e:  # any encoding failure skips the message
            slot.dead = True
            self._skip(bus.name, slot.name, f"encoding failed: {e}")
            return
        slot.counter += 1
        if len(data) < slot.dlc:
            data.extend(bytes(slot.dlc - len(data)))
        if slot.queued:
            bus.overruns += 1  # the previous instance never got the bus
        else:
            slot.queued = True
            heappush(bus.pending, (slot.arb_key, slot))
        slot.data = data

    def _advance_model(self, t: float) -> None:
        """Step the model on its fixed grid up to *t* (values are piecewise constant)."""
        step = self.model_step
        target = math.floor((t + 1e-9) / step)
        if target > self._model_steps:
            self.model.step((target - self._model_steps) * step)
            self._model_steps = target
        self._next_model_t = (self._model_steps + 1) * step - 1e-9

    # ----------------------------------------------------------------------------- building

    def _skip(self, bus: str, name: str, reason: str) -> None:
        key = f"{bus}/{name}"
        if key not in self._skipped:
            self._skipped[key] = reason
            log.info("not generating %s: %s", key, reason)

    def _add_message(self, bus: _Bus, msg: Any, seen: dict[tuple[int, bool], str]) -> None:
        name = str(msg.name)
        if _is_diagnostic(msg):
            return  # request/response traffic, see the module docstring
        ident = (int(msg.frame_id), bool(msg.is_extended_frame))
        if ident in seen:
            self._skip(bus.name, name, f"frame id 0x{ident[0]:X} already sent as {seen[ident]}")
            return
        try:
            slot = self._compile(bus, msg)
        except _SkipError as e:
            self._skip(bus.name, name, str(e))
            return
        except Exception as e:  # a broken DBC entry must not stop the others
            self._skip(bus.name, name, f"cannot compile: {e}")
            return
        seen[ident] = name
        rng = random.Random(f"phase:{self.seed}:{bus.name}:{name}")
        slot.nominal = rng.uniform(0.0, slot.period)
        self._seq += 1
        # First release exactly at the phase offset; jitter applies from then on.
        heapq.heappush(bus.sched, (slot.nominal, self._seq, slot))

    def _compile(self, bus: _Bus, msg: Any) -> _Slot:
        name = str(msg.name)
        frame_id = int(msg.frame_id)
        extended = bool(msg.is_extended_frame)
        fd = bool(getattr(msg, "is_fd", False))
        length = int(msg.length)
        if fd:
            if length > 64:
                raise _SkipError(f"CAN FD frame of {length} bytes (at most 64)")
            dlc = next(n for n in FD_LENGTHS if n >= length)
        else:
            if length > 8:
                raise _SkipError(f"classic CAN frame of {length} bytes (at most 8; is it CAN FD?)")
            dlc = length
        if frame_id > (0x1FFFFFFF if extended else 0x7FF):
            raise _SkipError(f"frame id 0x{frame_id:X} does not fit its id format")
        cycle = msg.cycle_time
        event = msg.send_type in _EVENT_SEND_TYPES and not cycle
        period_ms = float(cycle) if cycle else self.default_cycle_ms
        period = max(_MIN_PERIOD_S, period_ms / 1000.0)
        try:
            spec = IntegritySpec.for_message(msg)
        except ValueError as e:
            raise _SkipError(str(e)) from None
        # A checksum without a known algorithm (opendbc conventions) stays 0; the counter runs.
        plans = self._plans(bus, msg, length, spec, event)
        slot = _Slot(
            name=name,
            frame_id=frame_id,
            extended=extended,
            fd=fd,
            dlc=dlc,
            arb_key=_arbitration_key(frame_id, extended),
            period=period,
            event=event,
            plans=plans,
            spec=spec if spec is not None and spec.algorithm is not None else None,
            last_payloads=[None] * len(plans) if event else None,
        )
        # Header of the frame for the stuffing automaton, and the fixed part of its length.
        slot.header_stuff, slot.header_state = stuff_bits(header_bits(frame_id, extended, fd, dlc))
        slot.base_bits = (67 if extended else 47) + 8 * dlc + slot.header_stuff
        # Try one frame now so that a message that cannot be encoded is skipped up front.
        # cantools must be able to decode what we send (it rejects some broken DBC entries).
        try:
            for plan in plans:
                data = plan.encode(0.0, self._values, 0)
                if spec is not None and spec.algorithm is not None:
                    spec.apply_checksum(data)
        except Exception as e:
            raise _SkipError(f"encoding failed: {e}") from None
        try:
            for plan in plans:
                msg.decode(bytes(plan.encode(0.0, self._values, 0)), decode_choices=False)
        except Exception as e:
            raise _SkipError(f"cantools cannot decode it: {e}") from None
        return slot

    def _plans(
        self, bus: _Bus, msg: Any, length: int, spec: IntegritySpec | None, event: bool
    ) -> tuple[_Plan, ...]:
        signals = list(msg.signals)
        muxes = [s for s in signals if s.is_multiplexer]
        if len(muxes) > 1 or any(
            s.is_multiplexer and s.multiplexer_ids is not None for s in signals
        ):
            raise _SkipError("nested or multiple multiplexers are not supported")
        counter_sig = spec.counter if spec is not None else None
        checksum_sig = spec.checksum if spec is not None else None
        fields: dict[str, SignalField] = {}
        for sig in signals:
            try:
                fields[sig.name] = SignalField.of(sig, length)
            except ValueError as e:
                raise _SkipError(str(e)) from None
            if sig.is_float and sig.length not in (32, 64):
                raise _SkipError(f"float signal {sig.name} of {sig.length} bits")
        if not muxes:
            return (
                self._plan(bus, msg, length, signals, fields, counter_sig, checksum_sig, event),
            )
        mux = muxes[0]
        values = sorted({v for s in signals if s.multiplexer_ids for v in s.multiplexer_ids})
        if not values:
            values = [0]
        lo, hi = _raw_bounds(mux)
        plans = []
        for value in values:
            if not lo <= value <= hi:
                continue
            chosen = [s for s in signals if s.multiplexer_ids is None or value in s.multiplexer_ids]
            plans.append(
                self._plan(
                    bus, msg, length, chosen, fields, counter_sig, checksum_sig, event, mux, value
                )
            )
        if not plans:
            raise _SkipError(f"no multiplexer value of {mux.name} fits its {mux.length} bits")
        return tuple(plans)

    def _plan(
        self,
        bus: _Bus,
        msg: Any,
        length: int,
        signals: list[Any],
        fields: Mapping[str, SignalField],
        counter_sig: Any | None,
        checksum_sig: Any | None,
        event: bool,
        mux: Any | None = None,
        mux_value: int = 0,
    ) -> _Plan:
        base_le = base_be = 0
        qty_le: list[tuple[int, int, str, float, float, int, int]] = []
        qty_be: list[tuple[int, int, str, float, float, int, int]] = []
        wave_le: list[tuple[int, int, float, float, float, float]] = []
        wave_be: list[tuple[int, int, float, float, float, float]] = []
        floats: list[tuple[SignalField, str | None, float, str]] = []
        counter: tuple[bool, int, int] | None = None

        def const(f: SignalField, raw: int) -> None:
            nonlocal base_le, base_be
            if f.big_endian:
                base_be |= (raw & f.mask) << f.shift
            else:
                base_le |= (raw & f.mask) << f.shift

        occupied: dict[int, str] = {}  # bit of the little-endian payload integer → signal
        for sig in signals:
            f = fields[sig.name]
            bits = int.from_bytes(bytes(f.byte_masks), "little")
            for other_bit, other in occupied.items():
                if bits >> other_bit & 1:
                    raise _SkipError(f"signals {other} and {sig.name} overlap")
            while bits:
                low = bits & -bits
                occupied[low.bit_length() - 1] = sig.name
                bits ^= low
        for sig in signals:
            f = fields[sig.name]
            if sig is counter_sig:
                counter = (f.big_endian, f.shift, f.mask)
                continue
            if sig is checksum_sig:
                continue  # zero until the checksum is computed
            if mux is not None and sig is mux:
                const(f, mux_value)
                continue
            key = self._binding(msg, sig)
            if sig.is_float:
                value = float(sig.offset)
                if key is None:
                    lo_p = sig.minimum if sig.minimum is not None else 0.0
                    hi_p = sig.maximum if sig.maximum is not None else lo_p
                    value = (float(lo_p) + float(hi_p)) / 2.0
                floats.append((f, key, value, "f" if sig.length == 32 else "d"))
                continue
            scale = float(sig.scale)
            offset = float(sig.offset)
            lo, hi, ranged = _phys_raw_range(sig)
            if key is not None and scale != 0:
                entry = (f.shift, f.mask, key, 1.0 / scale, offset, lo, hi)
                (qty_be if f.big_endian else qty_le).append(entry)
                continue
            raw = self._constant(sig, lo, hi)
            if raw is not None or scale == 0:
                const(f, raw if raw is not None else 0)
                continue
            centre = (lo + hi) / 2.0
            amp = (hi - lo) * (0.25 if ranged else 0.1)
            if event:
                const(f, round(centre))
                continue
            rng = random.Random(f"wave:{self.seed}:{msg.frame_id}:{sig.name}")
            omega = 2.0 * math.pi / rng.uniform(20.0, 120.0)
            phase = rng.uniform(0.0, 2.0 * math.pi)
            # Keep centre ± amp inside [lo, hi] after rounding.
            amp = min(amp, centre - lo, hi - centre)
            entry_w = (f.shift, f.mask, omega, phase, centre, amp)
            (wave_be if f.big_endian else wave_le).append(entry_w)
        return _Plan(
            length=length,
            base_le=base_le,
            base_be=base_be,
            qty_le=tuple(qty_le),
            qty_be=tuple(qty_be),
            wave_le=tuple(wave_le),
            wave_be=tuple(wave_be),
            floats=tuple(floats),
            counter=counter,
        )

    def _binding(self, msg: Any, sig: Any) -> str | None:
        qualified = f"{msg.name}.{sig.name}"
        user = self._user_bindings
        key = user.get(qualified) or user.get(sig.name)
        if key is None:
            key = TBOX_EV_BINDINGS.get(qualified) or TBOX_EV_BINDINGS.get(sig.name)
            if key is not None and key not in self._values:
                key = None
        return key

    @staticmethod
    def _constant(sig: Any, lo: int, hi: int) -> int | None:
        """The fixed raw value of an unbound signal, or ``None`` if it should vary."""
        initial = sig.raw_initial
        if isinstance(initial, int | float) and not isinstance(initial, bool):
            raw = round(initial)
            blo, bhi = _raw_bounds(sig)
            if blo <= raw <= bhi:
                return raw
        choices = sig.choices
        if choices:
            usable = sorted(int(k) for k in choices if lo <= int(k) <= hi)
            good = [k for k in usable if not _BAD_CHOICE_RE.search(str(choices[k]))]
            if good:
                return good[0]
            if usable:
                return usable[0]
        if int(sig.length) <= 2:
            return min(max(0, lo), hi)
        return None


def _timestamp(frame: can.Message) -> float:
    return float(frame.timestamp)
