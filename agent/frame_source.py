"""Frames from CAN buses, handed to the event loop in batches.

:class:`FrameSource` owns one reader thread per bus (python-can's ``recv`` blocks, and several
interfaces, socketcand among them, have no file descriptor the loop could watch). Each thread drains
whatever its bus has ready into a list and posts the list to the loop with a single
``call_soon_threadsafe``: the per-frame cost in the loop is an append, not a wake-up (field notes:
one wake-up per frame caps python-can's Notifier at ~56k frames/s).

A bus that errors or disappears is closed, counted and reopened with exponential backoff and
jitter; the process never dies of it. Frames carry their bus name in ``channel`` and the bus's own
timestamp.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import can

from agent.backoff import Backoff
from agent.busurl import BusSpec, open_bus
from agent.errors import BusError, UsageError

log = logging.getLogger(__name__)

# Interfaces whose python-can driver filters in Python, frame by frame, with a linear scan over
# the filter list. For these we filter ourselves with a set lookup; the others get the filters in
# the driver, where the kernel or the adapter drops unwanted frames before Python sees them.
_SOFTWARE_FILTERED = frozenset({"virtual", "socketcand", "slcan", "serial", "udp_multicast"})

Batch = list[can.Message]

__all__ = ["Backoff", "BusStats", "FrameSource", "id_filters"]


class _SplitFrameNoise(logging.Filter):
    """Drop python-can socketcand's warning for every TCP read that splits a frame.

    At speed it logs thousands of these per second though nothing is wrong (field notes).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Got incomplete message")


logging.getLogger("can.interfaces.socketcand.socketcand").addFilter(_SplitFrameNoise())


def _peer_closed(bus: Any) -> bool:
    """True if a TCP-based bus's peer has closed the connection.

    python-can's socketcand client treats end-of-stream as "no frame yet" and would wait forever
    on a server that died; an idle bus gets this check so it is reopened instead.
    """
    import socket

    sock = getattr(bus, "_SocketCanDaemonBus__socket", None)
    if not isinstance(sock, socket.socket) or sock.fileno() < 0:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


@dataclass(slots=True)
class BusStats:
    """Counters for one bus, updated by its reader thread and read by anyone."""

    name: str
    url: str
    frames: int = 0
    filtered: int = 0
    errors: int = 0
    reopens: int = 0
    is_open: bool = False
    last_error: str = ""


def id_filters(frame_ids: Iterable[int]) -> list[dict[str, int | bool]]:
    """python-can filter dicts that pass exactly *frame_ids* (ids above 0x7FF are extended)."""
    return [
        {"can_id": i, "can_mask": 0x1FFFFFFF if i > 0x7FF else 0x7FF, "extended": i > 0x7FF}
        for i in sorted(set(frame_ids))
    ]


class _BusReader:
    """One bus: a thread that opens it, drains it in batches and reopens it after failures."""

    def __init__(
        self,
        spec: BusSpec,
        frame_ids: frozenset[int] | None,
        post: Any,
        pending: threading.BoundedSemaphore,
        stop: threading.Event,
        max_batch: int,
        backoff: Backoff,
    ) -> None:
        self.spec = spec
        self.stats = BusStats(name=spec.name, url=spec.url)
        self._frame_ids = frame_ids
        self._post = post
        self._pending = pending
        self._stop = stop
        self._max_batch = max_batch
        self._backoff = backoff
        self._bus: Any = None
        self.opened = threading.Event()
        self._failures_in_row = 0
        self.thread = threading.Thread(
            target=self._run, name=f"can-reader-{spec.name}", daemon=True
        )

    def _open(self) -> Any:
        in_driver = self._frame_ids is not None and self.spec.interface not in _SOFTWARE_FILTERED
        filters = id_filters(self._frame_ids) if in_driver and self._frame_ids else None
        return open_bus(self.spec, can_filters=filters)

    def _run(self) -> None:
        delays = self._backoff.delays()
        first = True
        while not self._stop.is_set():
            try:
                self._bus = self._open()
            except BusError as e:
                self._record_error(e)
                first = False
                self._stop.wait(next(delays))
                continue
            if not first:
                self.stats.reopens += 1
            first = False
            self.stats.is_open = True
            self._failures_in_row = 0
            self.opened.set()
            delays = self._backoff.delays()
            try:
                self._drain(self._bus)
            except (can.CanError, OSError, ValueError, BusError) as e:
                self._record_error(e)
            except Exception as e:  # a driver raising anything else must not kill intake
                self._record_error(e)
            finally:
                self.stats.is_open = False
                self._shutdown_bus()
            if not self._stop.is_set():
                self._stop.wait(next(delays))

    def _drain(self, bus: Any) -> None:
        recv = bus.recv
        wanted = self._frame_ids if self.spec.interface in _SOFTWARE_FILTERED else None
        name = self.spec.name
        max_batch = self._max_batch
        stats = self.stats
        stop = self._stop
        check_peer = self.spec.interface == "socketcand"
        while not stop.is_set():
            msg = recv(0.1)
            if msg is None:
                if check_peer and _peer_closed(bus):
                    raise BusError(f"bus {self.spec.url}: the other side closed the connection")
                continue
            batch: Batch = []
            try:
                # Drain what is ready without waiting, so a busy bus produces big batches and
                # an idle one hands over each frame at once (latency stays one frame time).
                while msg is not None:
                    if msg.is_error_frame or (
                        wanted is not None and msg.arbitration_id not in wanted
                    ):
                        stats.filtered += 1
                    else:
                        msg.channel = name
                        batch.append(msg)
                        if len(batch) >= max_batch:
                            break
                    msg = recv(0.0)
            finally:
                # Frames received before a failure are delivered, not lost with the bus.
                if batch and not self._hand_over(batch):
                    return  # noqa: B012 - stopping: nobody is left to take the batch

    def _hand_over(self, batch: Batch) -> bool:
        """Post *batch* to the loop; False if we are stopping and nobody will take it."""
        self.stats.frames += len(batch)
        # Back-pressure instead of loss: a slow consumer stalls this thread, and the bus
        # driver's own buffer (the kernel's, the adapter's, TCP's) absorbs the rest.
        while not self._pending.acquire(timeout=0.1):
            if self._stop.is_set():
                return False
        try:
            self._post(batch)
        except RuntimeError:  # the loop has closed: we are shutting down
            return False
        return True

    def _record_error(self, error: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(error)
        self._failures_in_row += 1
        # One warning per outage: a bus that stays away is counted, not logged every backoff.
        level = logging.WARNING if self._failures_in_row == 1 else logging.DEBUG
        log.log(level, "bus %s: %s; retrying with backoff", self.spec.name, error)

    def _shutdown_bus(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            try:
                bus.shutdown()
            except Exception as e:  # shutting down a broken bus may fail again; nothing to do
                log.debug("bus %s shutdown failed: %s", self.spec.name, e)


class FrameSource:
    """An async iterator of frame batches from one or more CAN buses.

    Use as an async context manager::

        async with FrameSource([parse_bus_url("socketcand://127.0.0.1:29536/can0")]) as source:
            async for batch in source:
                for frame in batch: ...

    ``frame_ids`` maps a bus name to the ids someone subscribed to (``None``: everything); the
    filter is applied in the kernel or adapter where the interface supports it, otherwise in the
    reader thread before frames reach the loop. Error frames are dropped (counted as filtered).
    """

    def __init__(
        self,
        buses: Sequence[BusSpec],
        *,
        frame_ids: Mapping[str, Iterable[int] | None] | None = None,
        max_batch: int = 1024,
        max_pending_batches: int = 64,
        backoff: Backoff | None = None,
    ) -> None:
        if not buses:
            raise UsageError("no bus given: name at least one bus URL")
        names = [spec.name for spec in buses]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UsageError(
                f"bus name {duplicates[0]!r} is used twice: give each bus a distinct "
                "name with ?name=… in its URL"
            )
        self._specs = list(buses)
        wanted = dict(frame_ids or {})
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise UsageError(f"frame ids given for bus {unknown[0]!r}, which is not opened")
        self._frame_ids = {
            name: (None if ids is None else frozenset(ids)) for name, ids in wanted.items()
        }
        self._max_batch = max_batch
        self._pending = threading.BoundedSemaphore(max_pending_batches)
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._queue: asyncio.Queue[Batch] = asyncio.Queue()
        self._readers: list[_BusReader] = []

    @property
    def stats(self) -> dict[str, BusStats]:
        """Counters per bus name."""
        return {reader.spec.name: reader.stats for reader in self._readers}

    async def __aenter__(self) -> FrameSource:
        loop = asyncio.get_running_loop()
        queue = self._queue

        def post(batch: Batch) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, batch)

        for spec in self._specs:
            reader = _BusReader(
                spec,
                self._frame_ids.get(spec.name),
                post,
                self._pending,
                self._stop,
                self._max_batch,
                self._backoff,
            )
            self._readers.append(reader)
            reader.thread.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self, grace: float = 2.0) -> None:
        """Stop the reader threads and close the buses (waiting at most *grace* seconds)."""
        self._stop.set()
        threads = [r.thread for r in self._readers if r.thread.is_alive()]
        if threads:
            # join in a thread: a driver stuck in a blocking call must not freeze the loop.
            await asyncio.to_thread(_join_all, threads, grace)

    async def wait_open(self, within: float = 10.0) -> bool:
        """Wait until every bus has been opened once; False if *within* seconds passed first."""
        deadline = asyncio.get_running_loop().time() + within
        for reader in self._readers:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or not await asyncio.to_thread(reader.opened.wait, left):
                return False
        return True

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[Batch]:
        queue = self._queue
        release = self._pending.release
        while True:
            batch = await queue.get()
            release()
            yield batch

    async def frames(self) -> AsyncIterator[can.Message]:
        """Frames one by one (convenient; iterate batches on hot paths)."""
        async for batch in self:
            for frame in batch:
                yield frame


def _join_all(threads: Sequence[threading.Thread], timeout: float) -> None:
    for thread in threads:
        thread.join(timeout)
