"""A simulated serial device on a pseudo-terminal: the base of the GNSS, modem and slcan twins.

::

    async with MyTwin(link="/tmp/gnss0") as twin:   # a PtyTwin subclass
        print(twin.path)          # /dev/pts/7: open it with pyserial like a real port
        twin.send(b"hello\\r\\n")  # bytes to the host; never blocks
        await twin.unplug(3.0)    # gone for 3 s, back on a new pty; /tmp/gnss0 follows it

:class:`PtyTwin` opens a pty pair, puts the slave in raw mode (no echo, no CR/LF translation, as a
USB serial adapter behaves) and keeps a file descriptor of the slave open itself, so that the
device stays "plugged in" while no host has it open. It reads the master with
``loop.add_reader`` (never blocking the loop) and hands the host's bytes to :meth:`on_bytes`.

``link`` is a symlink kept pointing at the current slave (replaced atomically with a temporary
symlink and ``os.replace``) and removed on exit: like a udev rule's ``/dev/gnss0``, it lets a
client reopen "the same" device after :meth:`PtyTwin.unplug` moved it to a new pty.

Subclasses override small hooks: :meth:`on_bytes` (what the host wrote), :meth:`serve` (the
device's own activity, run in a task group the twin owns while it is entered) and
:meth:`on_power_up` (reset state whenever the device appears).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from agent.errors import UsageError
from sim.errors import SimError

__all__ = ["DEFAULT_MAX_PENDING", "PtyTwin", "TwinConfigError", "TwinError", "TwinStats"]

log = logging.getLogger(__name__)

_READ_CHUNK: Final = 4096
#: Bytes kept for a host that is not reading before further writes are dropped: about what a
#: USB serial device's transmit FIFO holds, so a host that opens the port late does not first get
#: minutes of stale output (pyserial flushes the kernel's input queue on open, not this).
DEFAULT_MAX_PENDING: Final = 4096


class TwinError(SimError):
    """A simulated serial device could not do what was asked (no pty, a broken link)."""


class TwinConfigError(TwinError, UsageError):
    """A simulated device was given settings it cannot use (the command line exits 2)."""


@dataclass(slots=True)
class TwinStats:
    """Counters of one :class:`PtyTwin`.

    ``bytes_in``: read from the host; ``bytes_out``: written to the pty; ``dropped_bytes`` and
    ``dropped_writes``: data :meth:`PtyTwin.send` discarded because the host was not reading (and
    the pending buffer was full) or the device was unplugged; ``unplugs``: times unplugged.
    """

    bytes_in: int = 0
    bytes_out: int = 0
    dropped_bytes: int = 0
    dropped_writes: int = 0
    unplugs: int = 0


class PtyTwin:
    """A serial device on a pseudo-terminal (see the module docstring).

    * *link*: a symlink to maintain pointing at the current slave device (``None``: none).
    * *max_pending*: bytes buffered for a host that does not read; beyond that
      :meth:`send` drops whole writes and counts them.
    """

    def __init__(
        self,
        *,
        link: str | os.PathLike[str] | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if max_pending <= 0:
            raise TwinConfigError(f"max_pending must be positive, got {max_pending}")
        self.link: Path | None = None if link is None else Path(link)
        self.stats = TwinStats()
        self._max_pending = max_pending
        self._master: int | None = None
        self._slave: int | None = None
        self._path: str | None = None
        self._pending = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._serve_task: asyncio.Task[None] | None = None

    # --- public ---------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The slave device of the current pty (of the last one while unplugged)."""
        if self._path is None:
            raise TwinError(f"{type(self).__name__} has no pty yet: use 'async with' first")
        return self._path

    @property
    def plugged(self) -> bool:
        """True while the device is present (entered and not unplugged)."""
        return self._master is not None

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._plug()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._serve_task = self._tasks.create_task(self.serve(), name=f"{type(self).__name__}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._serve_task is not None:
                self._serve_task.cancel()
            if self._tasks is not None:
                tasks, self._tasks = self._tasks, None
                # Hand the body's exception on, so that the group sees a cancellation that a
                # failing serve() caused and re-raises that failure instead.
                await tasks.__aexit__(exc_type, exc, traceback)
        finally:
            self._serve_task = None
            self._unplug_pty()
            self._loop = None

    def send(self, data: bytes) -> bool:
        """Write *data* to the host without blocking; False if it was dropped.

        What the pty does not take at once is kept and written when the host reads. While bytes
        are kept, a write that would push them past *max_pending* (a host that is not reading) is
        dropped whole and counted, as is any write while unplugged.
        """
        if not data:
            return True
        master = self._master
        if master is None:
            self._count_drop(data)
            return False
        if self._pending:
            if len(self._pending) + len(data) > self._max_pending:
                self._count_drop(data)
                return False
            self._pending += data
            return True
        try:
            written = os.write(master, data)
        except BlockingIOError:
            written = 0
        except OSError as e:
            log.debug("write to %s failed: %s", self._path, e)
            self._count_drop(data)
            return False
        self.stats.bytes_out += written
        if written < len(data):
            # Kept even beyond max_pending: half a write would reach the host as a broken line.
            self._pending += data[written:]
            assert self._loop is not None
            self._loop.add_writer(master, self._flush_pending)
        return True

    async def unplug(self, seconds: float) -> None:
        """Make the device disappear for *seconds*, then reappear on a new pty.

        The pty is closed (a host reading it gets an error, as with a USB device pulled out),
        the link removed and pending output discarded; afterwards a new pty is opened, the link
        re-pointed at it and :meth:`on_power_up` called. Background activity (:meth:`serve`)
        carries on meanwhile; what it sends is dropped.
        """
        if seconds < 0:
            raise TwinConfigError(f"unplug time must not be negative, got {seconds}")
        if self._loop is None:
            raise TwinError(f"{type(self).__name__} is not running: use 'async with' first")
        if self._master is None:
            raise TwinError(f"{type(self).__name__} is already unplugged")
        self._unplug_pty()
        self.stats.unplugs += 1
        await asyncio.sleep(seconds)
        if self._loop is not None:  # not closed meanwhile
            self._plug()

    # --- hooks ------------------------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        """Bytes the host wrote (called in the event loop as they arrive); ignored by default."""

    async def serve(self) -> None:
        """The device's own activity while the twin is entered (cancelled on exit)."""

    def on_power_up(self) -> None:
        """Called whenever the device appears: on entry and after each :meth:`unplug`."""

    # --- the pty ----------------------------------------------------------------------------

    def _plug(self) -> None:
        assert self._loop is not None
        try:
            master, slave = os.openpty()
        except OSError as e:
            raise TwinError(f"cannot open a pseudo-terminal: {e.strerror or e}") from e
        try:
            # Raw like a serial adapter: bytes pass unchanged, nothing is echoed.
            tty.setraw(slave)
            os.set_blocking(master, False)
            path = os.ttyname(slave)
            if self.link is not None:
                _point_link(self.link, path)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._path = master, slave, path
        self._loop.add_reader(master, self._on_readable)
        self.on_power_up()

    def _unplug_pty(self) -> None:
        master, slave = self._master, self._slave
        self._master = self._slave = None
        if self._pending:
            self.stats.dropped_bytes += len(self._pending)
            self.stats.dropped_writes += 1
            self._pending.clear()
        if master is not None:
            if self._loop is not None:
                self._loop.remove_reader(master)
                self._loop.remove_writer(master)
            os.close(master)
        if slave is not None:
            os.close(slave)
        if self.link is not None and self._path is not None:
            _remove_link(self.link, self._path)

    def _on_readable(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # The twin holds a slave descriptor itself, so this should not happen; do not let
            # a readable-but-failing descriptor spin the loop.
            log.warning("%s: reading the pty failed (%s); device unplugged", self._path, e)
            self._unplug_pty()
            return
        if data:
            self.stats.bytes_in += len(data)
            self.on_bytes(data)

    def _flush_pending(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            written = os.write(master, self._pending)
        except BlockingIOError:
            return
        except OSError as e:
            log.debug("write to %s failed: %s", self._path, e)
            written = 0
            self._count_drop(bytes(self._pending))
            self._pending.clear()
        self.stats.bytes_out += written
        del self._pending[:written]
        if not self._pending:
            assert self._loop is not None
            self._loop.remove_writer(master)

    def _count_drop(self, data: bytes) -> None:
        self.stats.dropped_bytes += len(data)
        self.stats.dropped_writes += 1


def _point_link(link: Path, target: str) -> None:
    """Make *link* a symlink to *target*, atomically (readers never see it missing)."""
    if link.exists() and not link.is_symlink():
        raise TwinConfigError(f"cannot use {link} as the device link: it exists and is no symlink")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target)
        tmp.replace(link)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise TwinConfigError(
            f"cannot create the device link {link} → {target}: {e.strerror or e}"
        ) from e


def _remove_link(link: Path, target: str) -> None:
    """Remove *link* if it still points at *target* (someone else's link stays)."""
    with contextlib.suppress(OSError):
        if link.is_symlink() and str(link.readlink()) == target:
            link.unlink()
