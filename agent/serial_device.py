"""Serial devices on the T-box (GNSS receiver, cellular modem): open, read lines, reopen.

:class:`SerialDevice` is the part the devices share, python-can style: it opens the port
(pyserial), reads its lines without blocking the event loop, reopens the port with backoff when it
fails, disappears or goes silent, and hands out what the device produced by ``async for``. A
device subclass implements one hook, :meth:`SerialDevice._session`, which talks to the device over
an open :class:`SerialLink` and puts items out with :meth:`SerialDevice._emit`::

    class Thermometer(SerialDevice[Reading]):
        async def _session(self, link: SerialLink) -> None:
            while True:
                line = await link.readline(idle_timeout=5.0)  # PortSilentError after 5 s of nothing
                self._emit(Reading(line.time, float(line.data)))

    async with Thermometer("/dev/ttyUSB0", baudrate=9600, device="thermometer") as device:
        async for item in device:  # Reading | StateChange
            ...

The stream carries the device's items and, in order with them, a :class:`StateChange` whenever
the device's health state changes, so that one loop can both use the data and log the outages.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import logging
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Generic, NamedTuple, Self, TypeVar

import serial

from agent.backoff import Backoff
from agent.errors import BusError, UsageError

__all__ = [
    "MAX_LINE_BYTES",
    "PortSilentError",
    "ReceivedLine",
    "SerialDevice",
    "SerialLink",
    "SerialPortError",
    "StateChange",
]

log = logging.getLogger(__name__)

#: A longer run of bytes without a line end is cut into pieces of this size (NMEA sentences are
#: at most 82 characters, AT responses we ask for well under 200): noise without line ends must
#: not grow a buffer without bound.
MAX_LINE_BYTES: Final = 1024
#: Lines read but not yet taken by the session; beyond this the oldest are dropped.
_MAX_BUFFERED_LINES: Final = 1024
_READ_CHUNK: Final = 4096
_LINE_END: Final = re.compile(rb"[\r\n]")

ItemT = TypeVar("ItemT")


class SerialPortError(BusError):
    """A serial port could not be opened, failed while in use, or went away."""


class PortSilentError(SerialPortError):
    """A serial port delivered no bytes (or accepted none) for longer than allowed."""


class ReceivedLine(NamedTuple):
    """One line read from a port: ``time.time()`` when its last byte arrived, and its bytes
    without the line end."""

    time: float
    data: bytes


@dataclass(frozen=True, slots=True)
class StateChange:
    """A device's health state changed from ``previous`` to ``state`` at ``time`` (epoch s).

    ``reason`` says why in words fit for a log line (it names the port).
    """

    time: float
    port: str
    previous: str
    state: str
    reason: str


class SerialLink:
    """An open serial port, read line by line off the event loop.

    An async context manager: entering opens the port, leaving closes it. pyserial opens and
    configures the port (baud rate, raw mode); reading and writing then use the file descriptor
    directly. The loop watches the descriptor (``add_reader``) instead of a thread blocking in
    ``read`` with a timeout: nothing waits for a read timeout to notice cancellation, no thread
    has to be joined on close, and a silent port costs nothing. pyserial's own ``read`` and
    ``write`` are not used on the descriptor because they ``select()`` again (limited to fd
    numbers below 1024) and its non-blocking ``write`` spins on EAGAIN.

    Lines end at CR or LF (AT echoes end with a bare CR); empty lines are dropped.
    """

    def __init__(self, port: str, *, baudrate: int) -> None:
        self.port = port
        self.baudrate = baudrate
        #: Bytes received since the port was opened.
        self.bytes_received = 0
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._partial = b""
        self._lines: deque[ReceivedLine] = deque(maxlen=_MAX_BUFFERED_LINES)
        self._arrived = asyncio.Event()
        self._last_byte = 0.0  # loop time
        self._error: SerialPortError | None = None

    async def __aenter__(self) -> SerialLink:
        self._loop = asyncio.get_running_loop()
        try:
            # Opening a tty is quick (no blocking handshake): done in the loop, not in a thread.
            port = serial.Serial(self.port, baudrate=self.baudrate, timeout=0)
        except (serial.SerialException, OSError) as e:
            raise SerialPortError(f"cannot open serial port {self.port}: {_reason(e)}") from e
        self._serial = port
        self._fd = port.fileno()
        self._last_byte = self._loop.time()
        self._loop.add_reader(self._fd, self._on_readable)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching the port and close it (idempotent)."""
        port, self._serial = self._serial, None
        if port is None:
            return
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
        try:
            port.close()
        except (serial.SerialException, OSError) as e:  # closing a vanished device may fail
            log.debug("closing serial port %s failed: %s", self.port, e)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EIO: a USB device unplugged, a pty whose other side closed
            self._fail(SerialPortError(f"serial port {self.port} failed: {e.strerror or e}"))
            return
        if not data:
            # Readable with nothing to read: the device is gone (a tty hung up, a pty's master
            # closed); it stays "readable" forever, so stop watching it.
            self._fail(SerialPortError(f"serial port {self.port} went away (hung up)"))
            return
        now = time.time()
        assert self._loop is not None
        self._last_byte = self._loop.time()
        self.bytes_received += len(data)
        # Split off the complete lines; what follows the last line end waits for more bytes.
        *complete, rest = _LINE_END.split(self._partial + data)
        for line in complete:
            for start in range(0, len(line), MAX_LINE_BYTES):
                self._lines.append(ReceivedLine(now, line[start : start + MAX_LINE_BYTES]))
        while len(rest) >= MAX_LINE_BYTES:
            self._lines.append(ReceivedLine(now, rest[:MAX_LINE_BYTES]))
            rest = rest[MAX_LINE_BYTES:]
        self._partial = rest
        self._arrived.set()

    def _fail(self, error: SerialPortError) -> None:
        self._error = error
        assert self._loop is not None
        self._loop.remove_reader(self._fd)
        self._arrived.set()

    async def readline(self, *, idle_timeout: float | None = None) -> ReceivedLine:
        """The next line; raises :class:`PortSilentError` if no byte at all arrived for
        *idle_timeout* seconds (since the port was opened or the last byte), and
        :class:`SerialPortError` if the port failed."""
        loop = asyncio.get_running_loop()
        while not self._lines:
            if self._error is not None:
                raise self._error
            self._arrived.clear()
            if idle_timeout is None:
                await self._arrived.wait()
                continue
            left = self._last_byte + idle_timeout - loop.time()
            if left <= 0:
                raise PortSilentError(
                    f"serial port {self.port} sent nothing for {idle_timeout:g} s "
                    "(device off, wrong baud rate, or output disabled?)"
                )
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                pass  # the loop above decides: bytes may have come without a whole line
        return self._lines.popleft()

    def discard_input(self) -> None:
        """Forget lines (and a partial line) received but not read yet."""
        self._lines.clear()
        self._partial = b""

    def write(self, data: bytes) -> None:
        """Send *data* (a short command) without blocking; raises :class:`PortSilentError` if the
        device does not take it all at once (flow control holding it off), or
        :class:`SerialPortError` if the port failed."""
        if self._error is not None:
            raise self._error
        if self._serial is None:
            raise SerialPortError(f"serial port {self.port} is closed")
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError as e:
            raise SerialPortError(f"serial port {self.port} failed: {e.strerror or e}") from e
        if written != len(data):
            raise PortSilentError(f"serial port {self.port} does not accept data (flow control?)")


def _reason(error: BaseException) -> str:
    """Why an open failed, without pyserial's restatement of the port name."""
    # pyserial raises SerialException("could not open port X: [Errno 2] …") while handling
    # the OSError that says it plainly.
    cause = error.__context__ if isinstance(error.__context__, OSError) else error
    if isinstance(cause, OSError) and cause.strerror:
        if cause.errno == errno.EACCES:
            return f"{cause.strerror} (is the agent's user in the port's group, e.g. dialout?)"
        return cause.strerror
    return str(error)


class SerialDevice(abc.ABC, Generic[ItemT]):
    """A device on a serial port whose output is an async stream of items and state changes.

    An async context manager: entering starts a task (in a :class:`asyncio.TaskGroup` this
    object owns) that opens the port and runs :meth:`_session` on it; leaving cancels it and
    closes the port. The port is reopened with :class:`~agent.backoff.Backoff` delays whenever
    it cannot be opened or fails (state ``"port_lost"``), or goes silent (state
    :attr:`silent_state`); the path is opened anew each time, so a symlink re-pointed to another
    device (a re-enumerated USB adapter) is followed. The delays start over once a session has
    received data.

    ``async for item in device`` yields the subclass's items and :class:`StateChange` objects.
    At most ``max_pending`` wait for the consumer; beyond that the oldest are dropped (stale
    readings are worth less than fresh ones) and counted in :attr:`dropped`.
    """

    #: State reported when the device went silent (the session raised :class:`PortSilentError`).
    silent_state: str = "silent"

    def __init__(
        self,
        port: str,
        *,
        baudrate: int,
        device: str,
        backoff: Backoff | None = None,
        max_pending: int = 256,
    ) -> None:
        if not port:
            raise UsageError(f"no serial port given for the {device}")
        if baudrate <= 0:
            raise UsageError(f"baud rate of {port} must be a positive number, not {baudrate}")
        if max_pending < 1:
            raise UsageError(f"max_pending of {port} must be at least 1")
        self.port = port
        self.baudrate = baudrate
        self.device = device
        self._backoff = backoff or Backoff()
        self._state = "starting"
        self._since = time.time()
        #: Successful opens after the first.
        self.reopens = 0
        #: Items and state changes dropped because the consumer fell behind.
        self.dropped = 0
        #: The last port or device problem, for status pages ("" if none yet).
        self.last_error = ""
        self._queue: asyncio.Queue[ItemT | StateChange] = asyncio.Queue(max_pending)
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._open = asyncio.Event()

    @property
    def is_open(self) -> bool:
        """True while the port is open."""
        return self._open.is_set()

    async def wait_open(self) -> None:
        """Return once the port is open (at once if it is); bound it with ``asyncio.timeout``."""
        await self._open.wait()

    @property
    def state(self) -> str:
        """The current health state (``"starting"`` until the first session decides)."""
        return self._state

    @property
    def state_since(self) -> float:
        """When (``time.time()``) the current state began."""
        return self._since

    async def __aenter__(self) -> Self:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._task = self._group.create_task(self._run(), name=f"{self.device} {self.port}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._group is not None and self._task is not None
        self._task.cancel()
        try:
            # The body's exception goes to the group too: if the task failed, the group
            # cancelled the body, and only with that CancelledError can it tell.
            await self._group.__aexit__(exc_type, exc, tb)
        finally:
            self._group = None

    def __aiter__(self) -> AsyncIterator[ItemT | StateChange]:
        return self._items()

    async def _items(self) -> AsyncIterator[ItemT | StateChange]:
        if self._group is None:
            raise RuntimeError(f"use `async with` on the {self.device} before iterating it")
        while True:
            yield await self._queue.get()

    @abc.abstractmethod
    async def _session(self, link: SerialLink) -> None:
        """Talk to the device over *link*, which is open, until it fails.

        Raise :class:`PortSilentError` when the device stops responding and :class:`SerialPortError`
        (what the link raises) when the port fails: the port is then closed and reopened.
        Returning also reopens the port.
        """

    def _emit(self, item: ItemT | StateChange) -> None:
        """Hand *item* to the consumer (dropping the oldest waiting item if too many wait)."""
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    def _set_state(self, state: str, reason: str) -> None:
        """Enter *state*; a change is emitted as a :class:`StateChange`."""
        if state == self._state:
            return
        now = time.time()
        change = StateChange(now, self.port, self._state, state, reason)
        self._state, self._since = state, now
        # Debug only: the consumer gets the change in the stream and logs it as it sees fit.
        log.debug("%s %s: %s -> %s: %s", self.device, self.port, change.previous, state, reason)
        self._emit(change)

    async def _run(self) -> None:
        delays = self._backoff.delays()
        opened_before = False
        while True:
            link = SerialLink(self.port, baudrate=self.baudrate)
            try:
                async with link:
                    if opened_before:
                        self.reopens += 1
                    opened_before = True
                    self._open.set()
                    try:
                        await self._session(link)
                    finally:
                        self._open.clear()
            except PortSilentError as e:
                self.last_error = str(e)
                self._set_state(self.silent_state, str(e))
            except SerialPortError as e:
                self.last_error = str(e)
                self._set_state("port_lost", str(e))
            if link.bytes_received:
                delays = self._backoff.delays()
            await asyncio.sleep(next(delays))
