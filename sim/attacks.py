"""Attacks on a CAN frame stream: deterministic transforms that inject, forge and remove frames.

An :class:`Attack` describes one attack — its kind, its window (``start`` and ``duration`` in
seconds relative to the stream's first frame, or to the origin the caller gives), a ``seed`` and
the kind's parameters. :class:`AttackStream` applies it to a stream of python-can messages in time
order and labels every frame it emits: ``None`` for an original frame (passed through untouched,
the very object that came in), the attack's kind for a frame the attack injected or forged.
The same input, attack and seed always give the same output.

Kinds (:data:`ATTACK_KINDS`):

``flooding`` (:class:`Flooding`)
    A high-priority id (default 0x000) sent back to back at ``rate`` frames/s, by default the rate
    that fills ``load`` (0.5) of a ``bitrate`` (500 kbit/s) bus with its exact wire length.
``fuzzing`` (:class:`Fuzzing`)
    Random ids in [``id_min``, ``id_max``] with random length and data, at ``rate`` frames/s.
``spoofing`` (:class:`Spoofing`)
    Forged frames of ``target_id`` sent on top of the real sender (so two streams of one id
    interleave), at ``rate`` frames/s — by default the real sender's own rate, learned from the
    frames before the attack. Each forged frame is the sender's latest payload with one signal set
    (:class:`sim.attack_payloads.PayloadForger`) and its counter (last seen + 1) and checksum
    made plausible.
``replay`` (:class:`Replay`)
    The frames of an earlier window [``source_start``, ``source_start + duration``) — by default
    the window just before the attack — sent again, shifted to start at ``start``; only the
    ``target_ids`` if any are given.
``suspension`` (:class:`Suspension`)
    The ``target_ids`` (an ECU's messages) go silent: their frames in the window are removed.
    Nothing is injected.
``masquerade`` (:class:`Masquerade`)
    The real sender of ``target_id`` is silenced and replaced: its frames in the window are
    removed and forged ones sent with its own timing — the period learned from its frames before
    the attack, continuing its phase, late by a half-normal jitter of ``jitter`` × the period
    (capped at half a period) — and its counter continued by one per period.
``diagnostic`` (:class:`DiagnosticAbuse`)
    Every ``interval`` seconds a UDS DiagnosticSessionControl programming session request
    (``02 10 02``) on ``target_id`` (default the functional address 0x7DF), then a SecurityAccess
    requestSeed (``02 27 01``) and, with ``send_key``, a sendKey with a random key
    (``06 27 02 k k k k``), ``gap`` seconds apart: what a tester attached while driving would send.

Injected frames go on ``channel`` — by default the bus the target id was first seen on, else the
bus of the stream's first frame. Target ids are matched on that bus only. Injections end with the
window or with the stream (an attack never extends a log). Original frames are never modified:
forged and replayed frames are new messages.

Causality: an injection at time *t* is emitted once every original frame before *t* has been fed,
and what it is made of (templates, learned periods) depends only on those frames — so the same
transform drives a log (:meth:`AttackStream.apply`) and a live simulator (:meth:`AttackStream.feed`
+ :meth:`AttackStream.flush`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import can

from agent.errors import UsageError
from sim.attack_payloads import PayloadForger
from sim.errors import SimError
from sim.wire import frame_bits

__all__ = [
    "ATTACK_KINDS",
    "Attack",
    "AttackStream",
    "DiagnosticAbuse",
    "Flooding",
    "Fuzzing",
    "LabelledFrame",
    "Masquerade",
    "Replay",
    "Spoofing",
    "Suspension",
    "attack_frames",
]

_MAX_STANDARD_ID = 0x7FF
_MAX_EXTENDED_ID = 0x1FFFFFFF
_DEFAULT_CHANNEL = "can0"
#: Rate of spoofed frames when neither the option, the real sender nor the DBC gives one.
_FALLBACK_SPOOF_RATE = 100.0
# UDS service ids and the ISO-TP single-frame layout (first byte = payload length).
_UDS_SESSION_CONTROL = 0x10
_UDS_PROGRAMMING_SESSION = 0x02
_UDS_SECURITY_ACCESS = 0x27


class LabelledFrame(NamedTuple):
    """A frame of an attacked stream: ``attack`` is None for an original frame, else the kind of
    the attack that injected or forged it."""

    frame: can.Message
    attack: str | None


def _channel_name(channel: object) -> str:
    """A frame's channel as a bus name (as :func:`sim.record.format_candump_line` writes it)."""
    if channel is None:
        return _DEFAULT_CHANNEL
    if isinstance(channel, int):
        return f"can{channel}"
    return str(channel)


def _check_id(kind: str, frame_id: int, *, extended: bool | None = None) -> None:
    limit = _MAX_STANDARD_ID if extended is False else _MAX_EXTENDED_ID
    if not 0 <= frame_id <= limit:
        bits = "11" if extended is False else "29"
        raise UsageError(f"{kind}: id 0x{frame_id:X} does not fit in {bits} bits")


def _frame(frame_id: int, data: bytes | bytearray, channel: str, extended: bool) -> can.Message:
    return can.Message(
        arbitration_id=frame_id,
        is_extended_id=extended,
        data=bytes(data),
        dlc=len(data),
        channel=channel,
    )


class _Context:
    """What every injector needs to know about the stream: which bus each id is on."""

    def __init__(self, channel: str | None) -> None:
        self.channel = channel
        self.first_channel: str | None = None
        self.channel_of: dict[int, str] = {}

    def note(self, frame: can.Message) -> None:
        name = _channel_name(frame.channel)
        if self.first_channel is None:
            self.first_channel = name
        self.channel_of.setdefault(frame.arbitration_id, name)

    def channel_for(self, frame_id: int | None) -> str:
        """The bus injected frames of *frame_id* go on."""
        if self.channel is not None:
            return self.channel
        if frame_id is not None and frame_id in self.channel_of:
            return self.channel_of[frame_id]
        return self.first_channel or _DEFAULT_CHANNEL

    def matches(self, frame: can.Message, ids: frozenset[int]) -> bool:
        """True for a frame of one of *ids* on the bus the attack targets."""
        frame_id = frame.arbitration_id
        if frame_id not in ids:
            return False
        return _channel_name(frame.channel) == self.channel_for(frame_id)


class _Injector:
    """One attack kind at work: decides which originals stay and what to inject when.

    ``ready(limit)`` is called before injections up to *limit* (relative seconds) are asked for:
    every original frame before *limit* has been observed by then.
    """

    def observe(self, frame: can.Message, rel: float) -> bool:
        """See an original frame at relative time *rel*; False removes it from the stream."""
        return True

    def ready(self, limit: float) -> None:
        """Every original frame before *limit* has been observed."""

    def next_time(self) -> float | None:
        """Relative time of the next injection (None: nothing scheduled)."""
        return None

    def inject(self, t: float) -> can.Message:
        """The frame due at *t* (= :meth:`next_time`); schedules the next one."""
        raise NotImplementedError

    def resolved(self) -> dict[str, Any]:
        """Parameters worked out while running (learned periods, checksum models)."""
        return {}


# ----------------------------------------------------------------------------------- attacks


@dataclass(frozen=True, kw_only=True)
class Attack:
    """What every attack has: a window relative to the stream's origin, a seed and a bus.

    * *start*: seconds after the origin (the first frame, unless the caller gives one) at which
      the attack begins; *duration*: how long it lasts.
    * *seed*: makes every random choice (ids, payloads, keys, jitter) reproducible.
    * *channel*: the bus the attack acts on (default: where its target id is seen).
    """

    kind: ClassVar[str] = ""
    start: float = 5.0
    duration: float = 10.0
    seed: int = 0
    channel: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and self.start >= 0):
            raise UsageError(f"{self.kind}: start {self.start} must be a finite number ≥ 0")
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise UsageError(f"{self.kind}: duration {self.duration} must be a finite number > 0")
        if self.channel is not None and not self.channel:
            raise UsageError(f"{self.kind}: channel must not be empty")

    @property
    def end(self) -> float:
        """Relative time at which the attack ends (exclusive)."""
        return self.start + self.duration

    def targets(self) -> tuple[int, ...]:
        """The ids the attack sends, forges or silences (empty: none in particular)."""
        return ()

    def parameters(self) -> dict[str, Any]:
        """The kind's own parameters as JSON values (bytes as hex, DBC objects left out)."""
        common = {f.name for f in dataclasses.fields(Attack)}
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in common or not f.metadata.get("describe", True):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bytes | bytearray):
                value = bytes(value).hex().upper()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def injector(self, context: _Context, rng: random.Random) -> _Injector:
        """The object that carries out this attack on one stream (used by :class:`AttackStream`)."""
        raise NotImplementedError


class _Periodic(_Injector):
    """Injections at ``start + k / rate``, k = 0, 1, …"""

    def __init__(self, start: float, rate: float) -> None:
        self._start = start
        self._period = 1.0 / rate
        self._k = 0

    def next_time(self) -> float | None:
        return self._start + self._k * self._period

    def inject(self, t: float) -> can.Message:
        self._k += 1
        return self.make()

    def make(self) -> can.Message:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Flooding(Attack):
    """A high-priority id sent back to back (see the module docstring)."""

    kind: ClassVar[str] = "flooding"
    target_id: int = 0x000
    load: float = 0.5
    rate: float | None = None
    data: bytes = bytes(8)
    bitrate: int = 500_000
    extended: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_id(self.kind, self.target_id, extended=self.extended)
        if not 0 < self.load <= 1:
            raise UsageError(f"flooding: load {self.load} must be in (0, 1] (a share of the bus)")
        if self.bitrate <= 0:
            raise UsageError(f"flooding: bitrate {self.bitrate} must be positive")
        if len(self.data) > 8:
            raise UsageError(f"flooding: data has {len(self.data)} bytes; a CAN frame holds 8")
        if self.rate is not None:
            if not (math.isfinite(self.rate) and self.rate > 0):
                raise UsageError(f"flooding: rate {self.rate} must be a positive number")
            need = self.rate * self.frame_bits
            if need > self.bitrate:
                raise UsageError(
                    f"flooding: {self.rate:g} frames/s of {self.frame_bits} bits need "
                    f"{need / 1000:.0f} kbit/s, more than the {self.bitrate / 1000:g} kbit/s bus"
                )

    def targets(self) -> tuple[int, ...]:
        return (self.target_id,)

    @property
    def frame_bits(self) -> int:
        """Wire bits of one flood frame, stuffing included."""
        return frame_bits(self.target_id, self.extended, self.data)[0]

    @property
    def effective_rate(self) -> float:
        """Frames per second: ``rate``, or what fills ``load`` of the bus."""
        if self.rate is not None:
            return self.rate
        return self.load * self.bitrate / self.frame_bits

    def injector(self, context: _Context, rng: random.Random) -> _Injector:
        return _FloodInjector(self, context)


class _FloodInjector(_Periodic):
    def __init__(self, attack: Flooding, context: _Context) -> None:
        super().__init__(attack.start, attack.effective_rate)
        self._attack = attack
        self._context = context

    def make(self) -> can.Message:
        a = self._attack
        channel = self._context.channel_for(a.target_id)
        return _frame(a.target_id, a.data, channel, a.extended or a.target_id > _MAX_STANDARD_ID)

    def resolved(self) -> dict[str, Any]:
        a = self._attack
        return {"rate": a.effective_rate, "frame_bits": a.frame_bits}


@dataclass(frozen=True, kw_only=True)
class Fuzzing(Attack):
    """Random ids and data (see the module docstring)."""

    kind: ClassVar[str] = "fuzzing"
    rate: float = 200.0
    id_min: int = 0x000
    id_max: int = _MAX_STANDARD_ID
    dlc: int | None = None
    extended: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.rate) and 0 < self.rate <= 20_000):
            raise UsageError(f"fuzzing: rate {self.rate} must be in (0, 20000] frames/s")
        _check_id(self.kind, self.id_min, extended=self.extended)
        _check_id(self.kind, self.id_max, extended=self.extended)
        if self.id_min > self.id_max:
            raise UsageError(f"fuzzing: id-min 0x{self.id_min:X} is above id-max 0x{self.id_max:X}")
        if self.dlc is not None and not 0 <= self.dlc <= 8:
            raise UsageError(f"fuzzing: dlc {self.dlc} must be 0…8")

    def injector(self, context: _Context, rng: random.Random) -> _Injector:
        return _FuzzInjector(self, context, rng)


class _FuzzInjector(_Periodic):
    def __init__(self, attack: Fuzzing, context: _Context, rng: random.Random) -> None:
        super().__init__(attack.start, attack.rate)
        self._attack = attack
        self._context = context
        self._rng = rng

    def make(self) -> can.Message:
        a = self._attack
        rng = self._rng
        frame_id = rng.randint(a.id_min, a.id_max)
        n = a.dlc if a.dlc is not None else rng.randint(0, 8)
        channel = self._context.channel_for(None)
        return _frame(frame_id, rng.randbytes(n), channel, a.extended)


@dataclass(frozen=True, kw_only=True)
class _Forged(Attack):
    """Parameters of the attacks that forge a message's payload."""

    target_id: int
    signal: str | None = None
    value: float | None = None
    data: bytes | None = None
    #: The DBC message of ``target_id`` (a cantools ``Message``), needed to forge a signal.
    message: Any = field(default=None, compare=False, repr=False, metadata={"describe": False})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_id(self.kind, self.target_id)
        if self.data is not None and len(self.data) > 64:
            raise UsageError(f"{self.kind}: data has {len(self.data)} bytes; at most 64")
        if self.value is not None and not math.isfinite(self.value):
            raise UsageError(f"{self.kind}: value {self.value} must be a finite number")

    def targets(self) -> tuple[int, ...]:
        return (self.target_id,)

    def forger(self, rng: random.Random) -> PayloadForger:
        return PayloadForger(
            self.target_id,
            message=self.message,
            signal=self.signal,
            value=self.value,
            data=self.data,
            rng=rng,
        )


class _SenderWatch:
    """The real sender of one id as seen before an attack: count, first/last time, payload."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.template: bytes | None = None

    def see(self, frame: can.Message, rel: float, *, before_attack: bool) -> None:
        self.template = bytes(frame.data)
        if before_attack:
            if self.count == 0:
                self.first = rel
            self.last = rel
            self.count += 1

    def period(self) -> float | None:
        """Mean interval of the frames seen before the attack (None with fewer than two)."""
        if self.count < 2 or self.last <= self.first:
            return None
        return (self.last - self.first) / (self.count - 1)


def _dbc_period(message: Any) -> float | None:
    cycle = getattr(message, "cycle_time", None) if message is not None else None
    return cycle / 1000.0 if cycle else None


@dataclass(frozen=True, kw_only=True)
class Spoofing(_Forged):
    """Forged frames on top of the real sender (see the module docstring)."""

    kind: ClassVar[str] = "spoofing"
    rate: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rate is not None and not (math.isfinite(self.rate) and 0 < self.rate <= 10_000):
            raise UsageError(f"spoofing: rate {self.rate} must be in (0, 10000] frames/s")

    def injector(self, context: _Context, rng: random.Random) -> _Injector:
        return _SpoofInjector(self, context, self.forger(rng))


class _SpoofInjector(_Injector):
    def __init__(self, attack: Spoofing, context: _Context, forger: PayloadForger) -> None:
        self._attack = attack
        self._context = context
        self._forger = forger
        self._ids = frozenset((attack.target_id,))
        self._sender = _SenderWatch()
        self._period: float | None = None
        self._rate_source = ""
        self._k = 0

    def observe(self, frame: can.Message, rel: float) -> bool:
        if self._context.matches(frame, self._ids):
            self._sender.see(frame, rel, before_attack=rel < self._attack.start)
            self._forger.learn(frame.data)
        return True

    def ready(self, limit: float) -> None:
        a = self._attack
        if self._period is None and limit >= a.start:
            if a.rate is not None:
                self._period, self._rate_source = 1.0 / a.rate, "option"
            elif (learned := self._sender.period()) is not None:
                self._period, self._rate_source = learned, "learned from the real sender"
            elif (cycle := _dbc_period(a.message)) is not None:
                self._period, self._rate_source = cycle, "DBC cycle time"
            else:
                self._period, self._rate_source = 1.0 / _FALLBACK_SPOOF_RATE, "default"

    def next_time(self) -> float | None:
        period = self._period or 0.0  # before the attack only k = 0 (= start) is asked for
        return self._attack.start + self._k * period

    def inject(self, t: float) -> can.Message:
        self._k += 1
        forger = self._forger
        counter = None if forger.last_counter is None else forger.last_counter + 1
        template = self._sender.template
        payload = forger.forge(template, counter)
        a = self._attack
        channel = self._context.channel_for(a.target_id)
        return _frame(a.target_id, payload, channel, a.target_id > _MAX_STANDARD_ID)

    def resolved(self) -> dict[str, Any]:
        out: dict[str, Any] = {"forged": self._forger.describe()}
        if self._period is not None:
            out["rate"] = 1.0 / self._period
            out["rate_source"] = self._rate_source
        return out


@dataclass(frozen=True, kw_only=True)
class Masquerade(_Forged):
    """The real sender silenced and replaced with its own timing (see the module docstring)."""

    kind: ClassVar[str] = "masquerade"
    jitter: float = 0.03

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.jitter <= 0.5:
            raise UsageError(f"masquerade: jitter {self.jitter} must be in [0, 0.5] (of a period)")

    def injector(self, context: _Context, rng: random.Random) -> _Injector:
        return _MasqueradeInjector(self, context, self.forger(rng), rng)


class _MasqueradeInjector(_Injector):
    def __init__(
        self, attack: Masquerade, context: _Context, forger: PayloadForger, rng: random.Random
    ) -> None:
        self._attack = attack
        self._context = context
        self._forger = forger
        self._rng = rng
        self._ids = frozenset((attack.target_id,))
        self._sender = _SenderWatch()
        self._period: float | None = None
        self._period_source = ""
        self._slot = 0  # periods since the real sender's last frame
        self._counter_base: int | None = None
        self._next: float | None = None

    def observe(self, frame: can.Message, rel: float) -> bool:
        a = self._attack
        if not self._context.matches(frame, self._ids):
            return True
        if rel < a.start:
            self._sender.see(frame, rel, before_attack=True)
            self._forger.learn(frame.data)
            return True
        return rel >= a.end  # silenced inside the window

    def ready(self, limit: float) -> None:
        if self._period is not None or limit < self._attack.start:
            return
        a = self._attack
        sender = self._sender
        period = sender.period()
        self._period_source = "learned from the real sender"
        if period is None:
            period = _dbc_period(a.message)
            self._period_source = "DBC cycle time"
        if sender.count == 0 or period is None:
            seen = "no frame" if sender.count == 0 else "one frame and the DBC gives no cycle time"
            raise SimError(
                f"masquerade: id 0x{a.target_id:03X} sent {seen} before the attack starts at "
                f"{a.start:g} s, so its timing cannot be taken over; start later"
            )
        self._period = period
        self._counter_base = self._forger.last_counter
        # The first slot of the real sender's grid at or after the start.
        slot = max(1, math.ceil((a.start - sender.last) / period))
        while sender.last + slot * period < a.start:
            slot += 1
        self._slot = slot
        self._schedule()

    def _schedule(self) -> None:
        period = self._period
        assert period is not None
        nominal = self._sender.last + self._slot * period
        # Late, never early, like an ECU task; capped so the order of slots is kept.
        delay = abs(self._rng.gauss(0.0, self._attack.jitter * period))
        self._next = nominal + min(delay, 0.5 * period)

    def next_time(self) -> float | None:
        if self._period is None:
            return self._attack.start  # a hint for pacing; nothing is injected before ready()
        return self._next

    def inject(self, t: float) -> can.Message:
        base = self._counter_base
        counter = None if base is None else base + self._slot
        payload = self._forger.forge(self._sender.template, counter)
        self._slot += 1
        self._schedule()
        a = self._attack
        channel = self._context.channel_for(a.target_id)
        return _frame(a.target_id, payload, channel, a.target_id > _MAX_STANDARD_ID)

    def resolved(self) -> dict[str, Any]:
        out: dict[str, Any] = {"forged": self._forger.describe()}
        if self._period is not None:
            out["period"] = self._period
            out["period_source"] = self._period_source
        return out


@dataclass(frozen=True, kw_only=True)
class Replay(Attack):
    """An earlier window re-sent (see the module docstring)."""

    kind: ClassVar[str] = "replay"
    target_ids: tuple[int, ...] = ()
    source_start: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for frame_id in self.target_ids:
            _check_id(self.kind, frame_id)
        if self.start <= 0:
            raise UsageError("replay: start must be after 0: the replayed window comes before it")
        if self.source_start is not None and not 0 <= self.source_start < self.start:
            raise UsageError(
                f"replay: source-start {self.source_start:g} must be ≥ 0 and before the start "
                f"{self.start:g} (frames can only be replayed after they were recorded)"
            )

    @property
    def effective_source_start(self) -> float:
        """Where the replayed window begins: ``source_start``, or just before the attack."""
        if self.source_start is not None:
            return self.source_start
        return max(0.0, self.start - self.duration)

    def targets(self) -> tuple[int, ...]:
        return self.target_ids

    def injector(self, context: _Context, rng: random.Random) -> _Injector:
        return _ReplayInjector(self, context)


class _ReplayInjector(_Injector):
    def __init__(self, attack: Replay, context: _Context) -> None:
        self._context = context
        self._ids = frozenset(attack.target_ids)
        self._from = attack.effective_source_start
        self._until = self._from + attack.duration
        self._shift = attack.start - self._from
        self._channel = attack.channel
        self._recorded: deque[tuple[float, can.Message]] = deque()

    def observe(self, frame: can.Message, rel: float) -> bool:
        if self._from <= rel < self._until:
            if self._ids:
                wanted = self._context.matches(frame, self._ids)
            else:
                wanted = self._channel is None or _channel_name(frame.channel) == self._channel
            if wanted:
                self._recorded.append((rel + self._shift, frame))
        return True

    def next_time(self) -> float | None:
        return self._recorded[0][0] if self._recorded else None

    def inject(self, t: float) -> can.Message:
        _, original = self._recorded.popleft()
        return can.Message(
            arbitration_id=original.arbitration_id,
            is_extended_id=original.is_extended_id,
            is_remote_frame=original.is_remote_frame,
            is_fd=original.is_fd,
            bitrate_switch=original.bitrate_switch,
            dlc=original.dlc,
            data=bytes(original.data),
            channel=_channel_name(original.channel),
        )

    def resolved(self) -> dict[str, Any]:
        return {"source_start": self._from, "source_end": self._until}


@dataclass(frozen=True, kw_only=True)
class Suspension(Attack):
    """An ECU's ids go silent (see the module docstring)."""

    kind: ClassVar[str] = "suspension"
    target_ids: tuple[int, ...]
    #: The DBC node whose messages were chosen, when the ids came from one (for the description).
    ecu: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.target_ids:
            raise UsageError("suspension: give the ids to silence (--target-id, or ecu=NODE)")
        for frame_id in self.target_ids:
            _check_id(self.kind, frame_id)

    def targets(self) -> tuple[int, ...]:
        return self.target_ids

    def injector(self, context: _Context, rng: random.Random) -> _Injector:
        return _SuspensionInjector(self, context)


class _SuspensionInjector(_Injector):
    def __init__(self, attack: Suspension, context: _Context) -> None:
        self._context = context
        self._ids = frozenset(attack.target_ids)
        self._start = attack.start
        self._end = attack.end

    def observe(self, frame: can.Message, rel: float) -> bool:
        return not (self._start <= rel < self._end and self._context.matches(frame, self._ids))


@dataclass(frozen=True, kw_only=True)
class DiagnosticAbuse(Attack):
    """UDS programming session and SecurityAccess requests while driving (see the module
    docstring)."""

    kind: ClassVar[str] = "diagnostic"
    target_id: int = 0x7DF
    interval: float = 1.0
    gap: float = 0.01
    security_level: int = 0x01
    send_key: bool = True
    padding: int = 0xAA

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_id(self.kind, self.target_id)
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise UsageError(f"diagnostic: interval {self.interval} must be a positive number")
        if not (math.isfinite(self.gap) and 0 <= self.gap * (self.steps - 1) < self.interval):
            raise UsageError(
                f"diagnostic: gap {self.gap} must be ≥ 0 and its {self.steps} requests must fit "
                f"in the interval {self.interval:g} s"
            )
        if not (0 < self.security_level < 0x7F and self.security_level % 2 == 1):
            raise UsageError(
                f"diagnostic: security-level 0x{self.security_level:X} must be an odd "
                "requestSeed level, 0x01…0x7D"
            )
        if not 0 <= self.padding <= 0xFF:
            raise UsageError(f"diagnostic: padding 0x{self.padding:X} must be one byte")

    def targets(self) -> tuple[int, ...]:
        return (self.target_id,)

    @property
    def steps(self) -> int:
        """Requests per cycle: session control, requestSeed and (with send_key) sendKey."""
        return 3 if self.send_key else 2

    def injector(self, context: _Context, rng: random.Random) -> _Injector:
        return _DiagnosticInjector(self, context, rng)


class _DiagnosticInjector(_Injector):
    def __init__(self, attack: DiagnosticAbuse, context: _Context, rng: random.Random) -> None:
        self._attack = attack
        self._context = context
        self._rng = rng
        self._n = 0  # requests sent so far

    def next_time(self) -> float | None:
        a = self._attack
        cycle, step = divmod(self._n, a.steps)
        return a.start + cycle * a.interval + step * a.gap

    def inject(self, t: float) -> can.Message:
        a = self._attack
        step = self._n % a.steps
        self._n += 1
        if step == 0:
            request = bytes((0x02, _UDS_SESSION_CONTROL, _UDS_PROGRAMMING_SESSION))
        elif step == 1:
            request = bytes((0x02, _UDS_SECURITY_ACCESS, a.security_level))
        else:
            key = self._rng.randbytes(4)
            request = bytes((0x06, _UDS_SECURITY_ACCESS, a.security_level + 1)) + key
        payload = request + bytes((a.padding,)) * (8 - len(request))
        channel = self._context.channel_for(a.target_id)
        return _frame(a.target_id, payload, channel, a.target_id > _MAX_STANDARD_ID)


#: Every attack kind by name, in the order the command line lists them.
ATTACK_KINDS: dict[str, type[Attack]] = {
    cls.kind: cls
    for cls in (Flooding, Fuzzing, Spoofing, Replay, Suspension, Masquerade, DiagnosticAbuse)
}


# ----------------------------------------------------------------------------- the transform


class AttackStream:
    """Applies an :class:`Attack` to a stream of frames (see the module docstring).

    Pull a whole stream through :meth:`apply`, or push: :meth:`feed` each original frame in time
    order and take what it returns (the injections due up to it, then the frame unless the attack
    removed it); a live source also calls :meth:`flush` with the current time so injections go out
    on time when no frame comes. *origin* is the absolute time of relative time 0 (default: the
    first frame's timestamp).

    Counters: ``frames_in``, ``frames_out``, ``injected`` (frames injected or forged, the labelled
    ones) and ``removed`` (original frames taken out); ``first_injected_time`` and
    ``first_removed_time`` are absolute times (None until it happens).
    """

    def __init__(self, attack: Attack, *, origin: float | None = None) -> None:
        self.attack = attack
        self._origin = origin
        self._context = _Context(attack.channel)
        self._injector = attack.injector(
            self._context, random.Random(f"attack:{attack.kind}:{attack.seed}")
        )
        self._end = attack.end
        self.frames_in = 0
        self.frames_out = 0
        self.injected = 0
        self.removed = 0
        self.first_injected_time: float | None = None
        self.first_removed_time: float | None = None
        self.last_time: float | None = None

    @property
    def origin(self) -> float | None:
        """Absolute time of relative time 0 (None until given or the first frame is fed)."""
        return self._origin

    @origin.setter
    def origin(self, value: float) -> None:
        if self.frames_in:
            raise RuntimeError("the origin of an attack stream is fixed once frames are fed")
        self._origin = value

    def feed(self, frame: can.Message) -> list[LabelledFrame]:
        """One original frame in: the injections due by its time, then the frame (unless
        removed)."""
        if self._origin is None:
            self._origin = frame.timestamp
        rel = frame.timestamp - self._origin
        self.frames_in += 1
        self.last_time = frame.timestamp
        self._context.note(frame)
        out: list[LabelledFrame] = []
        self._inject_until(rel, out)
        if self._injector.observe(frame, rel):
            out.append(LabelledFrame(frame, None))
        else:
            self.removed += 1
            if self.first_removed_time is None:
                self.first_removed_time = frame.timestamp
        self.frames_out += len(out)
        return out

    def flush(self, until: float) -> list[LabelledFrame]:
        """The injections due by absolute time *until*; every original frame up to it must have
        been fed already."""
        if self._origin is None:
            return []
        out: list[LabelledFrame] = []
        self._inject_until(until - self._origin, out)
        self.frames_out += len(out)
        return out

    def next_due(self) -> float | None:
        """Absolute time of the next injection (None: none scheduled now)."""
        if self._origin is None:
            return None
        t = self._injector.next_time()
        if t is None or t >= self._end:
            return None
        return self._origin + t

    def apply(self, frames: Iterable[can.Message]) -> Iterator[LabelledFrame]:
        """The attacked stream of *frames*, lazily (injections end with the last frame)."""
        feed = self.feed
        for frame in frames:
            yield from feed(frame)

    def _inject_until(self, limit: float, out: list[LabelledFrame]) -> None:
        injector = self._injector
        injector.ready(limit)
        end = self._end
        origin = self._origin
        assert origin is not None
        kind = self.attack.kind
        while True:
            t = injector.next_time()
            if t is None or t > limit or t >= end:
                return
            frame = injector.inject(t)
            frame.timestamp = origin + t
            out.append(LabelledFrame(frame, kind))
            self.injected += 1
            if self.first_injected_time is None:
                self.first_injected_time = frame.timestamp

    def describe(self) -> dict[str, Any]:
        """The attack as run: window in absolute time, bus, ids, parameters, counts."""
        a = self.attack
        origin = self._origin
        targets = a.targets()
        return {
            "kind": a.kind,
            "start": None if origin is None else origin + a.start,
            "end": None if origin is None else origin + a.end,
            "start_offset": a.start,
            "duration": a.duration,
            "channel": self._context.channel_for(targets[0] if targets else None),
            "target_ids": list(targets),
            "seed": a.seed,
            "parameters": {**a.parameters(), **self._injector.resolved()},
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "injected": self.injected,
            "removed": self.removed,
            "first_injected_time": self.first_injected_time,
            "first_removed_time": self.first_removed_time,
        }


def attack_frames(
    frames: Iterable[can.Message], attack: Attack, *, origin: float | None = None
) -> Iterator[LabelledFrame]:
    """*frames* (in time order) with *attack* applied: each output frame with its label."""
    return AttackStream(attack, origin=origin).apply(frames)
