"""A simulated Lawicel/slcan CAN adapter on a pseudo-terminal, bridged to a CAN bus (C7 URL).

::

    async with SlcanTwin("virtual://bench", link="/tmp/slcan0") as adapter:
        # elsewhere: can.Bus(interface="slcan", channel=adapter.path, bitrate=500000)
        ...

python-can's ``slcan`` driver (and slcand, or a terminal) talks to it as to a real adapter.
Commands end with ``\\r``; the adapter answers ``\\r`` for OK and ``\\a`` (BEL) for an error:

* ``S0``–``S8`` (10k … 1M bit/s), ``sxxyy`` (BTR0/BTR1), ``Yn`` (CAN FD data bit rate, n Mbit/s),
  ``Z0``/``Z1`` (timestamps), ``Mxxxxxxxx``/``mxxxxxxxx`` (acceptance code and mask; accepted
  but not applied): only while the channel is closed.
* ``O`` opens the channel, ``L`` opens it listen-only, ``C`` closes it (each BEL if the channel is
  already in that state).
* ``tiiildd…``, ``Tiiiiiiiildd…`` (data frames), ``riiil``, ``Riiiiiiiil`` (remote frames) and the
  CAN FD frames ``d``/``D`` (and ``b``/``B`` with bit-rate switch, length code in hex): sent to the
  bus while the channel is open (not listen-only); the answer is ``z\\r`` (11-bit) or ``Z\\r``
  (29-bit), BEL for a malformed frame, a closed channel or a full transmit queue.
* ``V`` → ``V1013\\r`` (hardware 10, software 13), ``N`` → ``N<serial>\\r``, ``F`` → ``Fxx\\r``
  (status flags; bit 1 transmit queue full, bit 3 data overrun: frames lost because the host
  did not read), cleared by reading.
* An empty command answers ``\\r`` (hosts send a few to flush the adapter); ``\\n`` is ignored.

Frames from the bus reach the host as ``t``/``T``/``r``/``R`` (``d``/``D``/``b``/``B`` for CAN FD)
lines, with a 4-digit hex millisecond timestamp (0–59999) after ``Z1``, only while the channel is
open; error frames are not forwarded. The bus is read by a thread of the twin (python-can's
``recv`` blocks) and written to as :class:`~sim.runner.BusSink` does, so the loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import can
from can.util import CAN_FD_DLC, len2dlc

from agent.busurl import BusSpec, parse_bus_url
from agent.errors import BusError
from sim.pty_twin import PtyTwin
from sim.runner import BusSink

__all__ = ["LawicelInterpreter", "SlcanStats", "SlcanTwin", "format_frame", "parse_frame"]

log = logging.getLogger(__name__)

OK: Final = b"\r"
ERROR: Final = b"\a"
#: Nominal bit rates of ``S0`` … ``S8``.
BITRATES: Final = (10_000, 20_000, 50_000, 100_000, 125_000, 250_000, 500_000, 750_000, 1_000_000)
_MAX_LINE: Final = 160  # longer than any valid command ("B" + 8 + 1 + 128 + timestamp)
_MAX_TX_QUEUE: Final = 1024
_FLAG_TX_FULL: Final = 0x02
_FLAG_OVERRUN: Final = 0x08
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_ID_DIGITS: Final = {"t": 3, "r": 3, "d": 3, "b": 3, "T": 8, "R": 8, "D": 8, "B": 8}
_DATA_RATES: Final = frozenset("12458")
_RECV_TIMEOUT_S: Final = 0.1
_READ_BATCH: Final = 256
#: Bytes kept for the host: a bus burst (or python-can's byte-by-byte reading) must not cost
#: frames, while a host that stops reading still loses them (and sees the overrun flag).
_MAX_PENDING: Final = 64 * 1024


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in _HEX for c in text)


def parse_frame(command: str) -> can.Message | None:
    """The frame of a ``t``/``T``/``r``/``R``/``d``/``D``/``b``/``B`` command; None if malformed."""
    kind = command[:1]
    digits = _ID_DIGITS.get(kind)
    if digits is None:
        return None
    id_text = command[1 : 1 + digits]
    code = command[1 + digits : 2 + digits]
    payload = command[2 + digits :]
    if len(id_text) != digits or not _is_hex(id_text) or not _is_hex(code):
        return None
    can_id = int(id_text, 16)
    extended = digits == 8
    if can_id > (0x1FFFFFFF if extended else 0x7FF):
        return None
    fd = kind in "dDbB"
    if fd:
        length = CAN_FD_DLC[int(code, 16)]
    elif code.isdigit() and int(code) <= 8:
        length = int(code)
    else:
        return None
    if kind in "rR":
        if payload:
            return None
        return can.Message(
            arbitration_id=can_id, is_extended_id=extended, is_remote_frame=True, dlc=length
        )
    if len(payload) != 2 * length or (payload and not _is_hex(payload)):
        return None
    return can.Message(
        arbitration_id=can_id,
        is_extended_id=extended,
        is_fd=fd,
        bitrate_switch=kind in "bB",
        dlc=length,
        data=bytes.fromhex(payload),
    )


def format_frame(msg: can.Message, timestamp_ms: int | None = None) -> bytes | None:
    """The slcan line (``\\r`` included) that reports *msg* to the host; None for error frames
    and frames slcan cannot carry. *timestamp_ms* (0–59999) is appended when given."""
    if msg.is_error_frame:
        return None
    can_id = msg.arbitration_id
    extended = msg.is_extended_id
    if can_id < 0 or can_id > (0x1FFFFFFF if extended else 0x7FF):
        return None
    ident = f"{can_id:08X}" if extended else f"{can_id:03X}"
    if msg.is_remote_frame:
        text = f"{'R' if extended else 'r'}{ident}{min(msg.dlc, 8)}"
    elif msg.is_fd:
        code = len2dlc(len(msg.data))
        data = bytes(msg.data).ljust(CAN_FD_DLC[code], b"\0")
        kind = ("B" if extended else "b") if msg.bitrate_switch else ("D" if extended else "d")
        text = f"{kind}{ident}{code:X}{data.hex().upper()}"
    else:
        if len(msg.data) > 8:
            return None
        text = f"{'T' if extended else 't'}{ident}{len(msg.data)}{bytes(msg.data).hex().upper()}"
    if timestamp_ms is not None:
        text += f"{timestamp_ms % 60_000:04X}"
    return text.encode("ascii") + OK


class LawicelInterpreter:
    """The adapter's command processor, without I/O (see the module docstring).

    :meth:`feed` takes the host's bytes and returns the answers; frames to send go to
    *transmit*, which returns False when the transmit queue is full. :meth:`frame_line` turns a
    frame from the bus into the line for the host (None while the channel is closed).
    """

    def __init__(
        self,
        transmit: Callable[[can.Message], bool],
        *,
        serial_number: str = "SIM1",
        version: str = "1013",
    ) -> None:
        self._transmit = transmit
        self.serial_number = serial_number
        self.version = version
        self.is_open = False
        self.listen_only = False
        self.bitrate: int | None = None
        self.timestamps = False
        self.flags = 0
        self._line = bytearray()
        self._overflow = False

    def reset(self) -> None:
        """Power-on state: channel closed, no bit rate, no timestamps, flags clear."""
        self.is_open = self.listen_only = self.timestamps = False
        self.bitrate = None
        self.flags = 0
        self._line.clear()
        self._overflow = False

    def feed(self, data: bytes) -> bytes:
        """Process *data* from the host; return the answers to every complete command."""
        out = bytearray()
        for byte in data:
            if byte == 0x0D:
                line = bytes(self._line)
                overflow = self._overflow
                self._line.clear()
                self._overflow = False
                out += ERROR if overflow else self._command(line)
            elif byte == 0x0A:
                continue
            elif len(self._line) >= _MAX_LINE:
                self._overflow = True
            else:
                self._line.append(byte)
        return bytes(out)

    def frame_line(self, msg: can.Message) -> bytes | None:
        """The line reporting a bus frame to the host; None if the channel is closed or slcan
        cannot carry the frame."""
        if not self.is_open:
            return None
        stamp = int(msg.timestamp * 1000) % 60_000 if self.timestamps else None
        return format_frame(msg, stamp)

    def note_overrun(self) -> None:
        """Record that a frame for the host was lost (the ``F`` data overrun flag)."""
        self.flags |= _FLAG_OVERRUN

    def _command(self, line: bytes) -> bytes:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return ERROR
        if not text:
            return OK
        kind, rest = text[0], text[1:]
        if kind in _ID_DIGITS:
            return self._frame(text)
        closed = not self.is_open
        if kind == "S" and closed and rest.isdigit() and len(rest) == 1 and int(rest) <= 8:
            self.bitrate = BITRATES[int(rest)]
            return OK
        if kind == "s" and closed and len(rest) == 4 and _is_hex(rest):
            self.bitrate = None  # set by registers; the nominal value is unknown
            return OK
        if kind == "Y" and closed and len(rest) == 1 and rest in _DATA_RATES:
            return OK
        if kind in "MmZ" and closed:
            if kind == "Z" and rest in ("0", "1"):
                self.timestamps = rest == "1"
                return OK
            if kind in "Mm" and len(rest) == 8 and _is_hex(rest):
                return OK
            return ERROR
        if kind in "OL" and closed and not rest:
            self.is_open = True
            self.listen_only = kind == "L"
            return OK
        if kind == "C" and not closed and not rest:
            self.is_open = self.listen_only = False
            return OK
        if kind == "V" and not rest:
            return b"V" + self.version.encode("ascii") + OK
        if kind == "N" and not rest:
            return b"N" + self.serial_number.encode("ascii") + OK
        if kind == "F" and not closed and not rest:
            flags, self.flags = self.flags, 0
            return f"F{flags:02X}".encode("ascii") + OK
        return ERROR

    def _frame(self, text: str) -> bytes:
        if not self.is_open or self.listen_only:
            return ERROR
        msg = parse_frame(text)
        if msg is None:
            return ERROR
        if not self._transmit(msg):
            self.flags |= _FLAG_TX_FULL
            return ERROR
        return b"Z\r" if msg.is_extended_id else b"z\r"


@dataclass(slots=True)
class SlcanStats:
    """Frames through a :class:`SlcanTwin`: ``to_bus`` sent to the bus, ``to_host`` written to
    the host, ``closed`` bus frames dropped while the channel was closed, ``lost`` bus frames
    the host did not read in time (the ``F`` overrun flag)."""

    to_bus: int = 0
    to_host: int = 0
    closed: int = 0
    lost: int = 0


class SlcanTwin(PtyTwin):
    """A Lawicel/slcan adapter on a pty bridged to *bus* (a URL or :class:`BusSpec`).

    * *serial_number*: what ``N`` answers.
    * *link*, *max_pending*: as for :class:`~sim.pty_twin.PtyTwin` (64 KiB pending by default).

    The bus is opened on entry (:class:`~agent.errors.BusError` if it cannot be) and closed on
    exit; a bus that fails while in use ends the twin with :class:`BusError`.
    """

    def __init__(
        self,
        bus: str | BusSpec,
        *,
        serial_number: str = "SIM1",
        link: str | os.PathLike[str] | None = None,
        max_pending: int = _MAX_PENDING,
    ) -> None:
        super().__init__(link=link, max_pending=max_pending)
        self.spec = parse_bus_url(bus) if isinstance(bus, str) else bus
        self.frames = SlcanStats()
        self.interpreter = LawicelInterpreter(self._enqueue, serial_number=serial_number)
        self._sink = BusSink(self.spec)
        self._outgoing: asyncio.Queue[can.Message] = asyncio.Queue(_MAX_TX_QUEUE)
        self._reader_stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._bus_failure: asyncio.Future[BaseException] | None = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        await self._sink.__aenter__()
        self._bus_failure = loop.create_future()
        self._reader_stop.clear()
        self._reader = threading.Thread(
            target=self._read_bus,
            args=(self._sink.bus, loop),
            name=f"slcan-twin-{self.spec.name}",
            daemon=True,
        )
        self._reader.start()
        try:
            return await super().__aenter__()
        except BaseException:
            await self._close_bus()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, traceback)
        finally:
            await self._close_bus()

    def on_bytes(self, data: bytes) -> None:
        """Answer the host's commands; frames go to the transmit queue."""
        self.send(self.interpreter.feed(data))

    def on_power_up(self) -> None:
        """An adapter powers up closed, with no bit rate set."""
        self.interpreter.reset()

    async def serve(self) -> None:
        """Send queued frames to the bus; end with :class:`BusError` if the bus fails."""
        assert self._bus_failure is not None
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._transmit_frames())
            error = await self._bus_failure
            raise BusError(f"bus {self.spec.url} failed: {error}") from error

    # --- host → bus -------------------------------------------------------------------------

    def _enqueue(self, msg: can.Message) -> bool:
        try:
            self._outgoing.put_nowait(msg)
        except asyncio.QueueFull:
            return False
        return True

    async def _transmit_frames(self) -> None:
        queue = self._outgoing
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < _READ_BATCH:
                batch.append(queue.get_nowait())
            sent = self._sink.frames_sent
            await self._sink.send_frames(batch)
            self.frames.to_bus += self._sink.frames_sent - sent

    # --- bus → host -------------------------------------------------------------------------

    def _read_bus(self, bus: Any, loop: asyncio.AbstractEventLoop) -> None:
        """The reader thread: drain the bus in batches and hand them to the loop."""
        stop = self._reader_stop
        try:
            while not stop.is_set():
                msg = bus.recv(_RECV_TIMEOUT_S)
                if msg is None:
                    continue
                batch = [msg]
                while len(batch) < _READ_BATCH and (more := bus.recv(0.0)) is not None:
                    batch.append(more)
                loop.call_soon_threadsafe(self._from_bus, batch)
        except Exception as e:  # python-can drivers raise whatever their backend raises
            if not stop.is_set():
                loop.call_soon_threadsafe(self._fail, e)

    def _from_bus(self, batch: list[can.Message]) -> None:
        interpreter = self.interpreter
        frames = self.frames
        for msg in batch:
            if not interpreter.is_open:
                frames.closed += 1
                continue
            line = interpreter.frame_line(msg)
            if line is None:
                continue  # an error frame, or one slcan cannot carry
            if self.send(line):
                frames.to_host += 1
            else:
                frames.lost += 1
                interpreter.note_overrun()

    def _fail(self, error: BaseException) -> None:
        if self._bus_failure is not None and not self._bus_failure.done():
            self._bus_failure.set_result(error)

    async def _close_bus(self) -> None:
        self._reader_stop.set()
        reader, self._reader = self._reader, None
        if reader is not None:
            # Joined in a thread: a driver stuck in recv must not freeze the loop.
            await asyncio.to_thread(reader.join, 2.0)
        await self._sink.__aexit__(None, None, None)
