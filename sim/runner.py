"""Driving frames from a producer into sinks with real timing.

A :class:`FrameProducer` answers "which frames are due by run time *t*?" (the DBC traffic
generator, :class:`sim.replay.LogReplay`); :class:`FrameSink` objects take batches of frames (a
python-can bus through :class:`BusSink`, the socketcand server, :class:`sim.record.LogRecorder`).
:class:`SimulationRunner` paces one producer into its sinks:

* ``speed=1``: real time; ``speed=2``: twice as fast; the run clock is ``loop.time()`` scaled,
  checked every few milliseconds (``asyncio.sleep``, no busy-spinning), so frames leave within a
  tick of when they are due whatever the sinks cost.
* ``speed=0``: as fast as possible: the producer is asked in steps of ``step`` seconds of run time
  and the sinks are awaited each step (their back-pressure paces the run), yielding to the loop.

Routing: a sink with a ``bus_name`` attribute is a bus. With one bus every frame goes to it; with
several, a frame goes to the bus whose name equals the frame's ``channel`` (others are counted as
unrouted). Sinks without ``bus_name`` (server, recorder) get every frame.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import can

from agent.busurl import BusSpec, open_bus, parse_bus_url
from agent.errors import BusError, UsageError
from sim.wire import estimated_bits

__all__ = [
    "BusSink",
    "FrameProducer",
    "FrameSink",
    "RunnerStats",
    "SimulationRunner",
]

log = logging.getLogger(__name__)

#: Consecutive failed sends after which a bus counts as broken.
_MAX_CONSECUTIVE_SEND_ERRORS = 50


@runtime_checkable
class FrameProducer(Protocol):
    """Frames by run time: ``frames_until(t)`` returns, in order, every frame due at or before
    ``t`` seconds since the start of the run that was not returned before. ``finished`` is True
    once no frame will ever come again. A producer may also offer ``next_frame_time() -> float |
    None`` (run time of its next frame) so that the runner can sleep until then.
    """

    def frames_until(self, t: float) -> list[can.Message]:
        """Every frame due by run time *t* not returned before."""
        ...

    @property
    def finished(self) -> bool:
        """True once the producer has nothing more to give."""
        ...


@runtime_checkable
class FrameSink(Protocol):
    """Takes batches of frames; awaiting ``send_frames`` is how a sink applies back-pressure."""

    async def send_frames(self, frames: Sequence[can.Message]) -> None:
        """Send (write, publish) *frames*."""
        ...


@dataclass
class RunnerStats:
    """Counters of a :class:`SimulationRunner`: frames and wire bits per bus, the current rate."""

    frames: int = 0
    frames_per_bus: dict[str, int] = field(default_factory=dict)
    bits_per_bus: dict[str, int] = field(default_factory=dict)
    unrouted: int = 0
    run_time: float = 0.0  # producer time reached, in seconds
    wall_time: float = 0.0  # seconds since the run started
    _samples: collections.deque[tuple[float, int, dict[str, int], dict[str, int]]] = field(
        default_factory=lambda: collections.deque(maxlen=64), repr=False
    )

    def _sample(self, now: float) -> None:
        samples = self._samples
        if samples and now - samples[-1][0] < 0.1:
            return
        samples.append((now, self.frames, dict(self.frames_per_bus), dict(self.bits_per_bus)))
        while len(samples) > 2 and now - samples[1][0] >= 1.0:
            samples.popleft()

    def _window(self) -> tuple[float, int, dict[str, int], dict[str, int]] | None:
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        span = last[0] - first[0]
        if span <= 0:
            return None
        return span, last[1] - first[1], first[2], first[3]

    @property
    def rate(self) -> float:
        """Frames per second (wall clock) over about the last second."""
        window = self._window()
        return window[1] / window[0] if window else 0.0

    def bus_rates(self) -> dict[str, float]:
        """Frames per second per bus over about the last second."""
        window = self._window()
        if window is None:
            return dict.fromkeys(self.frames_per_bus, 0.0)
        span, _, before, _ = window
        return {bus: (n - before.get(bus, 0)) / span for bus, n in self.frames_per_bus.items()}

    def bus_bit_rates(self) -> dict[str, float]:
        """Wire bits per second per bus over about the last second (no stuffing bits:
        :func:`sim.wire.estimated_bits`)."""
        window = self._window()
        if window is None:
            return dict.fromkeys(self.bits_per_bus, 0.0)
        span, _, _, before = window
        return {bus: (n - before.get(bus, 0)) / span for bus, n in self.bits_per_bus.items()}


class BusSink:
    """A python-can bus as a frame sink.

    Give it a bus URL (C7), a :class:`~agent.busurl.BusSpec` (it opens the bus on ``__aenter__``
    and shuts it down on ``__aexit__``) or an open ``can.BusABC`` (which stays the caller's).
    ``virtual://`` buses are sent to in the loop (their ``send`` only queues in memory); every other
    bus is sent to batch-wise in a thread (``asyncio.to_thread``), since drivers block.
    """

    def __init__(self, bus: BusSpec | str | Any, *, name: str | None = None) -> None:
        if isinstance(bus, str):
            bus = parse_bus_url(bus)
        self._spec: BusSpec | None = bus if isinstance(bus, BusSpec) else None
        self._bus: Any = None if self._spec is not None else bus
        if self._spec is not None:
            self.bus_name = name or self._spec.name
            self._in_loop = self._spec.is_virtual
        else:
            self.bus_name = name or str(getattr(bus, "channel", None) or "can0")
            self._in_loop = type(bus).__name__ == "VirtualBus"
        self.frames_sent = 0
        self.send_errors = 0
        self.last_error = ""
        self._consecutive_errors = 0

    @property
    def bus(self) -> Any:
        """The python-can bus (None before ``__aenter__`` when built from a URL)."""
        return self._bus

    async def __aenter__(self) -> BusSink:
        if self._spec is not None and self._bus is None:
            if self._in_loop:
                self._bus = open_bus(self._spec)
            else:
                self._bus = await asyncio.to_thread(open_bus, self._spec)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._spec is not None and self._bus is not None:
            bus, self._bus = self._bus, None
            if self._in_loop:
                bus.shutdown()
            else:
                await asyncio.to_thread(bus.shutdown)

    async def send_frames(self, frames: Sequence[can.Message]) -> None:
        """Send *frames* to the bus in order; a failing frame is counted and skipped."""
        if self._bus is None:
            raise BusError(f"bus {self.bus_name} is not open (use 'async with BusSink(…)')")
        if not frames:
            return
        if self._in_loop:
            self._send_batch(frames)
        else:
            await asyncio.to_thread(self._send_batch, list(frames))

    def _send_batch(self, frames: Sequence[can.Message]) -> None:
        send = self._bus.send
        for msg in frames:
            try:
                send(msg, timeout=1.0)
            except (can.CanError, OSError, ValueError) as e:
                self.send_errors += 1
                self._consecutive_errors += 1
                self.last_error = str(e)
                if self._consecutive_errors >= _MAX_CONSECUTIVE_SEND_ERRORS:
                    raise BusError(
                        f"bus {self.bus_name}: {self._consecutive_errors} sends failed in a row, "
                        f"last: {e}"
                    ) from e
                continue
            self._consecutive_errors = 0
            self.frames_sent += 1


class SimulationRunner:
    """Paces a :class:`FrameProducer` into :class:`FrameSink` objects (see the module docstring).

    ::

        async with SimulationRunner(LogReplay("drive.log"), [sink], speed=1.0) as runner:
            await runner.run(duration=10.0)

    ``duration`` is run time (producer seconds): at ``speed=0`` ``run(10)`` sends ten seconds'
    worth of frames as fast as the sinks take them. :meth:`stop` ends a run early (e.g. from a
    signal handler); :meth:`start` runs in a background task owned by the runner, cancelled on
    exit. The runner does not open or close its sinks.
    """

    def __init__(
        self,
        producer: FrameProducer,
        sinks: Sequence[FrameSink],
        *,
        speed: float = 1.0,
        step: float = 0.1,
        tick: float = 0.002,
    ) -> None:
        if not speed >= 0:  # also rejects NaN
            raise UsageError(f"speed must be 0 (as fast as possible) or positive, got {speed}")
        if step <= 0 or tick <= 0:
            raise UsageError("step and tick must be positive")
        self.producer = producer
        self.sinks = list(sinks)
        self.speed = speed
        self.step = step
        self.tick = tick
        self.stats = RunnerStats()
        buses = [s for s in self.sinks if getattr(s, "bus_name", None)]
        names = [str(getattr(s, "bus_name", "")) for s in buses]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UsageError(
                f"two buses are named {duplicates[0]!r}: give each a distinct ?name=… in its URL"
            )
        self._bus_sinks: dict[str, FrameSink] = dict(zip(names, buses, strict=True))
        self._other_sinks = [s for s in self.sinks if s not in buses]
        self._stop = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._running = False

    async def __aenter__(self) -> SimulationRunner:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        if self._tasks is not None:
            tasks, self._tasks = self._tasks, None
            await tasks.__aexit__(None, None, None)

    def stop(self) -> None:
        """Ask a running :meth:`run` to return after its current step (a later ``run`` returns
        after one step: a stop is not forgotten, so a signal just before the run is not lost)."""
        self._stop.set()

    def start(self, duration: float | None = None) -> asyncio.Task[None]:
        """Run in a background task owned by the runner (inside ``async with``)."""
        if self._tasks is None:
            raise RuntimeError("SimulationRunner.start() needs 'async with runner:'")
        return self._tasks.create_task(self.run(duration))

    async def run(self, duration: float | None = None) -> None:
        """Send the producer's frames until *duration* seconds of run time, the producer finishes
        or :meth:`stop` is called."""
        if duration is not None and duration < 0:
            raise UsageError(f"duration must not be negative, got {duration}")
        if self._running:
            raise RuntimeError("SimulationRunner.run() is already running")
        self._running = True
        try:
            if self.speed > 0:
                await self._run_paced(duration)
            else:
                await self._run_fast(duration)
        finally:
            self._running = False

    async def _run_paced(self, duration: float | None) -> None:
        loop = asyncio.get_running_loop()
        producer = self.producer
        speed = self.speed
        next_time = getattr(producer, "next_frame_time", None)
        start = loop.time()
        while True:
            now = loop.time()
            t = (now - start) * speed
            last = duration is not None and t >= duration
            if last:
                assert duration is not None
                t = duration
            frames = producer.frames_until(t)
            self.stats.run_time = t
            self.stats.wall_time = now - start
            if frames:
                await self._dispatch(frames)
            self.stats._sample(loop.time())
            if last or self._stop.is_set() or getattr(producer, "finished", False):
                return
            # Sleep until the next frame is due, in ticks of a few ms, but never longer than
            # 50 ms so that stop() and the rate statistics stay responsive.
            wait = self.tick
            if callable(next_time):
                due = next_time()
                wait = 0.05 if due is None else min(max((due - t) / speed, self.tick), 0.05)
            if duration is not None:
                wait = min(wait, max((duration - t) / speed, 0.0) + 1e-4)
            await asyncio.sleep(wait)

    async def _run_fast(self, duration: float | None) -> None:
        loop = asyncio.get_running_loop()
        producer = self.producer
        start = loop.time()
        t = 0.0
        while True:
            t += self.step
            last = duration is not None and t >= duration
            if last:
                assert duration is not None
                t = duration
            frames = producer.frames_until(t)
            self.stats.run_time = t
            self.stats.wall_time = loop.time() - start
            if frames:
                await self._dispatch(frames)
            self.stats._sample(loop.time())
            if last or self._stop.is_set() or getattr(producer, "finished", False):
                return
            await asyncio.sleep(0)  # let clients, readers and signal handlers run

    async def _dispatch(self, frames: list[can.Message]) -> None:
        stats = self.stats
        stats.frames += len(frames)
        per_bus = stats.frames_per_bus
        bits = stats.bits_per_bus
        buses = self._bus_sinks
        routed: dict[str, list[can.Message]] = {}
        if len(buses) == 1:
            (only,) = buses
            routed[only] = frames
        else:
            for msg in frames:
                channel = msg.channel if isinstance(msg.channel, str) else str(msg.channel)
                batch = routed.get(channel)
                if batch is None:
                    batch = routed[channel] = []
                batch.append(msg)
        for name, batch in routed.items():
            if buses and name not in buses:
                stats.unrouted += len(batch)
                continue
            per_bus[name] = per_bus.get(name, 0) + len(batch)
            bits[name] = bits.get(name, 0) + sum(map(estimated_bits, batch))
        for name, batch in routed.items():
            sink = buses.get(name)
            if sink is not None:
                await sink.send_frames(batch)
        for sink in self._other_sinks:
            await sink.send_frames(frames)
