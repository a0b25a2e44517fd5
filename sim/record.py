"""Recording frames as a ``candump -L`` log.

:class:`LogRecorder` is a frame sink (for :class:`sim.runner.SimulationRunner`, or anything with
frames) that writes ``(1700000000.000000) can0 123#DEADBEEF`` lines: 8 hex digits for 29-bit ids,
``#R`` for remote frames, ``##<flags><data>`` for CAN FD and ``2xxxxxxx#…`` for error frames.
python-can's ``CanutilsLogWriter`` is not used: it appends a `` R``/`` T`` direction column to
every line and rewrites timestamps that go backwards. Lines are formatted in the loop and written
in a thread, at most every ``flush_interval`` seconds, so the disk never stalls the loop.

:func:`record_buses` records what is on a set of buses (through
:class:`agent.frame_source.FrameSource`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import can

from agent.busurl import BusSpec
from agent.errors import InputError, UsageError

__all__ = ["LogRecorder", "format_candump_line", "record_buses"]

_CAN_ERR_FLAG = 0x20000000


def format_candump_line(msg: can.Message) -> str:
    """*msg* as one ``candump -L`` line, newline included."""
    channel = msg.channel
    if channel is None:
        channel = "can0"
    elif isinstance(channel, int):
        channel = f"can{channel}"
    data = msg.data[: msg.dlc] if not msg.is_fd and msg.dlc < len(msg.data) else msg.data
    if msg.is_error_frame:
        can_id = f"{_CAN_ERR_FLAG | (msg.arbitration_id & 0x1FFFFFFF):08X}"
        return f"({msg.timestamp:.6f}) {channel} {can_id}#{data.hex().upper()}\n"
    can_id = f"{msg.arbitration_id:08X}" if msg.is_extended_id else f"{msg.arbitration_id:03X}"
    if msg.is_remote_frame:
        rtr = f"R{msg.dlc}" if 0 < msg.dlc <= 8 else "R"
        return f"({msg.timestamp:.6f}) {channel} {can_id}#{rtr}\n"
    if msg.is_fd:
        flags = (1 if msg.bitrate_switch else 0) | (2 if msg.error_state_indicator else 0)
        return f"({msg.timestamp:.6f}) {channel} {can_id}##{flags:X}{data.hex().upper()}\n"
    return f"({msg.timestamp:.6f}) {channel} {can_id}#{data.hex().upper()}\n"


class LogRecorder:
    """Writes frames to *path* in ``candump -L`` format (``"-"``: standard output).

    An async context manager and a frame sink: ``await recorder.send_frames(frames)``. The file is
    written at least every ``flush_interval`` seconds (and flushed to the OS), and completely on
    exit. ``frames`` counts the frames recorded.
    """

    def __init__(self, path: str | Path, *, flush_interval: float = 0.5) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self.frames = 0
        self._file: IO[str] | None = None
        self._pending: list[str] = []
        self._last_flush = 0.0
        self._owns_file = str(path) != "-"

    async def __aenter__(self) -> LogRecorder:
        if self._owns_file:
            try:
                self._file = await asyncio.to_thread(_open_for_writing, Path(self.path))
            except OSError as e:
                raise UsageError(f"cannot write {self.path}: {e.strerror or e}") from e
        else:
            self._file = sys.stdout
        self._last_flush = asyncio.get_running_loop().time()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write what is pending and close the file."""
        file, self._file = self._file, None
        if file is None:
            return
        chunk = "".join(self._pending)
        self._pending.clear()
        await asyncio.to_thread(_finish, file, chunk, self._owns_file)

    async def send_frames(self, frames: Sequence[can.Message]) -> None:
        """Record *frames* (written to the file within ``flush_interval`` seconds)."""
        if self._file is None:
            raise UsageError(f"recorder for {self.path} is not open (use 'async with')")
        if not frames:
            return
        self._pending.extend(map(format_candump_line, frames))
        self.frames += len(frames)
        now = asyncio.get_running_loop().time()
        if now - self._last_flush >= self.flush_interval or len(self._pending) >= 100_000:
            await self.flush()

    async def flush(self) -> None:
        """Write the pending lines now and flush them to the OS."""
        self._last_flush = asyncio.get_running_loop().time()
        if self._file is None or not self._pending:
            return
        chunk = "".join(self._pending)
        self._pending.clear()
        try:
            await asyncio.to_thread(_write, self._file, chunk)
        except OSError as e:
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from e


def _open_for_writing(path: Path) -> IO[str]:
    return path.open("w", encoding="ascii", newline="\n")


def _write(file: IO[str], chunk: str) -> None:
    file.write(chunk)
    file.flush()


def _finish(file: IO[str], chunk: str, close: bool) -> None:
    try:
        if chunk:
            file.write(chunk)
        file.flush()
    finally:
        if close:
            file.close()


async def record_buses(
    specs: Sequence[BusSpec],
    recorder: LogRecorder,
    *,
    duration: float | None = None,
    max_frames: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Record frames from *specs* into *recorder* until *duration* seconds pass, *max_frames*
    frames are recorded or the task is cancelled; return the number of frames recorded.

    Frames carry their bus name as channel and the bus's timestamps. ``on_batch`` is called with
    the running total after each batch (for progress reports).
    """
    from agent.frame_source import FrameSource

    recorded = 0

    async def pump(source: FrameSource) -> None:
        nonlocal recorded
        async for batch in source:
            if max_frames is not None and recorded + len(batch) >= max_frames:
                await recorder.send_frames(batch[: max_frames - recorded])
                recorded = max_frames
                return
            await recorder.send_frames(batch)
            recorded += len(batch)
            if on_batch is not None:
                on_batch(recorded)

    if max_frames is not None and max_frames <= 0:
        return 0
    async with FrameSource(specs) as source:
        try:
            async with asyncio.timeout(duration):
                await pump(source)
        except TimeoutError:
            pass
    return recorded
