"""Attacks on live traffic: injected into a bus, or applied inside the simulator.

:class:`LiveAttack` injects an attack into a live bus (a bus URL, contract C7): it reads the bus to
learn what the attack needs (the spoofed sender's payloads and rate, the replayed window) and sends
the injected frames on time. A live bus cannot silence another sender, so suspension and
masquerade are refused there: :class:`AttackedProducer` applies them (and every other kind) to the
simulator's own frames before they go out (``tbox sim serve|run --attack``).

:class:`SentLabelSink` records which of the frames sent were injected: a CSV with header
``index,time,attack,channel,id`` — the 0-based index in the sent stream (for ``tbox sim serve|run``
the same index as in its ``--record`` log), the absolute time, the attack's kind, the bus and the
id as ``0x0B4`` — and on close the attack's description as JSON next to it
(:func:`sent_description_path`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import can

from agent.busurl import BusSpec, open_bus, parse_bus_url
from agent.errors import InputError, UsageError
from sim.attacks import Attack, AttackStream
from sim.runner import BusSink, FrameProducer

__all__ = ["AttackedProducer", "LiveAttack", "SentLabelSink", "sent_description_path"]

#: Attack kinds that must silence a sender, which only the simulator itself can do.
SIMULATOR_ONLY_KINDS = frozenset({"suspension", "masquerade"})
_MAX_WAIT_S = 0.05  # longest sleep of the injector, so a stop or new frame is seen soon
_MIN_WAIT_S = 0.0005
_RECV_TIMEOUT_S = 0.05
_MAX_BATCH = 1024
_LABEL_FLUSH_S = 0.5


def sent_description_path(labels: str | Path) -> Path:
    """The description written next to a labels file: ``X.labels.csv`` → ``X.attack.json``,
    any other name gets ``.attack.json`` appended."""
    text = str(labels)
    if text.endswith(".labels.csv"):
        return Path(text[: -len(".labels.csv")] + ".attack.json")
    return Path(text + ".attack.json")


class SentLabelSink:
    """A frame sink writing the labels of the frames it is given (see the module docstring).

    *label_of* is asked about every frame in order and returns the attack kind of an injected
    frame, None for an original. *describe*, if given, returns the attack's description, written
    with ``labels`` and ``frames_sent`` added to :func:`sent_description_path` on close.
    """

    def __init__(
        self,
        path: str | Path,
        label_of: Callable[[can.Message], str | None],
        *,
        describe: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.frames = 0
        self.labelled = 0
        self._label_of = label_of
        self._describe = describe
        self._file: IO[str] | None = None
        self._pending: list[str] = []
        self._last_flush = 0.0

    async def __aenter__(self) -> SentLabelSink:
        try:
            self._file = await asyncio.to_thread(self.path.open, "w", encoding="ascii")
        except OSError as e:
            raise UsageError(f"cannot write {self.path}: {e.strerror or e}") from e
        self._pending.append("index,time,attack,channel,id\n")
        self._last_flush = asyncio.get_running_loop().time()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        chunk = "".join(self._pending)
        self._pending.clear()
        description = None
        if self._describe is not None:
            description = {
                **self._describe(),
                "labels": str(self.path),
                "frames_sent": self.frames,
            }
        await asyncio.to_thread(self._finish, file, chunk, description)

    def _finish(self, file: IO[str], chunk: str, description: dict[str, Any] | None) -> None:
        try:
            file.write(chunk)
        finally:
            file.close()
        if description is not None:
            target = sent_description_path(self.path)
            try:
                target.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
            except OSError as e:
                raise InputError(f"cannot write {target}: {e.strerror or e}") from e

    async def send_frames(self, frames: Sequence[can.Message]) -> None:
        """Note which of *frames* (the next ones of the sent stream) were injected."""
        if self._file is None:
            raise UsageError(f"labels {self.path} are not open (use 'async with')")
        label_of = self._label_of
        index = self.frames
        for frame in frames:
            kind = label_of(frame)
            if kind is not None:
                channel = frame.channel if frame.channel is not None else "can0"
                self._pending.append(
                    f"{index},{frame.timestamp:.6f},{kind},{channel},0x{frame.arbitration_id:03X}\n"
                )
                self.labelled += 1
            index += 1
        self.frames = index
        now = asyncio.get_running_loop().time()
        if now - self._last_flush >= _LABEL_FLUSH_S and len(self._pending) > 0:
            self._last_flush = now
            chunk = "".join(self._pending)
            self._pending.clear()
            try:
                await asyncio.to_thread(_write, self._file, chunk)
            except OSError as e:
                raise InputError(f"cannot write {self.path}: {e.strerror or e}") from e


def _write(file: IO[str], chunk: str) -> None:
    file.write(chunk)
    file.flush()


class AttackedProducer:
    """A :class:`~sim.runner.FrameProducer` whose frames go through an attack first.

    Relative time 0 of the attack is run time 0 of *producer* (its ``start_time`` when it has one,
    as the traffic generator and log replay do). With *track_labels*, :meth:`label_of` tells a
    :class:`SentLabelSink` which frames were injected.
    """

    def __init__(
        self, producer: FrameProducer, attack: Attack, *, track_labels: bool = False
    ) -> None:
        self.producer = producer
        self.stream = AttackStream(attack)
        self._labels: collections.deque[tuple[can.Message, str]] | None = (
            collections.deque() if track_labels else None
        )
        # The runner sleeps until next_frame_time() only if the producer offers it; the traffic
        # generator does not (it is polled every tick), so neither do we then.
        self.next_frame_time: Callable[[], float | None] | None = (
            self._next_frame_time if callable(getattr(producer, "next_frame_time", None)) else None
        )

    @property
    def start_time(self) -> float | None:
        """The wrapped producer's wall-clock time of run time 0."""
        value = getattr(self.producer, "start_time", None)
        return float(value) if isinstance(value, int | float) else None

    @start_time.setter
    def start_time(self, value: float) -> None:
        self.producer.start_time = value  # type: ignore[attr-defined]

    @property
    def model(self) -> Any:
        """The simulated vehicle of the wrapped producer (None for a replay)."""
        return getattr(self.producer, "model", None)

    @property
    def finished(self) -> bool:
        """True once the wrapped producer has finished (injections end with it)."""
        return bool(self.producer.finished)

    def frames_until(self, t: float) -> list[can.Message]:
        """The wrapped producer's frames due by run time *t*, attacked."""
        frames = self.producer.frames_until(t)
        stream = self.stream
        if stream.origin is None:
            start = self.start_time
            if start is not None:
                stream.origin = start
            elif frames:
                stream.origin = frames[0].timestamp - t
            else:
                return frames
        out: list[can.Message] = []
        labels = self._labels
        for frame in frames:
            for labelled in stream.feed(frame):
                out.append(labelled.frame)
                if labels is not None and labelled.attack is not None:
                    labels.append((labelled.frame, labelled.attack))
        origin = stream.origin
        assert origin is not None
        for labelled in stream.flush(origin + t):
            out.append(labelled.frame)
            if labels is not None and labelled.attack is not None:
                labels.append((labelled.frame, labelled.attack))
        return out

    def _next_frame_time(self) -> float | None:
        inner = getattr(self.producer, "next_frame_time", None)
        due = inner() if callable(inner) else None
        origin = self.stream.origin
        injection = self.stream.next_due()
        if origin is not None and injection is not None:
            rel = injection - origin
            due = rel if due is None else min(due, rel)
        return due

    def label_of(self, frame: can.Message) -> str | None:
        """The attack kind if *frame* was injected (ask about every frame sent, in order)."""
        labels = self._labels
        if labels and labels[0][0] is frame:
            return labels.popleft()[1]
        return None


class LiveAttack:
    """Injects an attack into a live bus (see the module docstring).

    ::

        async with LiveAttack("socketcand://127.0.0.1:29536/can0", Flooding(start=1)) as live:
            await live.run()          # returns once the attack window has passed

    Relative time 0 is when the object is entered. The bus is read (for what spoofing and replay
    learn from it) in a thread and written through a :class:`~sim.runner.BusSink`; both run as
    tasks of a task group the object owns, cancelled on exit. Frames read keep their order and
    are stamped with the local clock. *labels* receives every frame sent (all injected).
    Counters: ``received`` and, on ``sink``, ``frames_sent``/``send_errors``.
    """

    def __init__(
        self,
        bus: BusSpec | str | Any,
        attack: Attack,
        *,
        labels: SentLabelSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if attack.kind in SIMULATOR_ONLY_KINDS:
            raise UsageError(
                f"{attack.kind} cannot silence another sender on a live bus: run it inside the "
                f"simulator with 'tbox sim serve|run --attack {attack.kind}:…'"
            )
        if isinstance(bus, str):
            bus = parse_bus_url(bus)
        self._spec: BusSpec | None = bus if isinstance(bus, BusSpec) else None
        self._bus: Any = None if self._spec is not None else bus
        self.bus_name = (
            self._spec.name if self._spec is not None else str(getattr(bus, "channel", "can0"))
        )
        self.attack = attack
        self.stream = AttackStream(attack)
        self.labels = labels
        self.received = 0
        self.sink: BusSink | None = None
        self._clock = clock
        self._outbox: list[can.Message] = []
        self._done = asyncio.Event()
        self._recv_lock = threading.Lock()
        self._tasks: asyncio.TaskGroup | None = None
        self._running: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> LiveAttack:
        if self._spec is not None:
            spec = self._spec
            if spec.is_virtual:
                self._bus = open_bus(spec)
            else:
                self._bus = await asyncio.to_thread(open_bus, spec)
        self.sink = BusSink(self._bus, name=self.bus_name)
        self.stream.origin = self._clock()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._running = [
            self._tasks.create_task(self._read()),
            self._tasks.create_task(self._inject()),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._tasks is not None:
                tasks, self._tasks = self._tasks, None
                for task in self._running:
                    task.cancel()
                await tasks.__aexit__(None, None, None)
        finally:
            # A cancelled read leaves its thread in recv() for up to one timeout: wait for it
            # before the bus goes away under it.
            if await asyncio.to_thread(self._recv_lock.acquire, True, 2 * _RECV_TIMEOUT_S + 1):
                self._recv_lock.release()
            if self._spec is not None and self._bus is not None:
                bus, self._bus = self._bus, None
                if self._spec.is_virtual:
                    bus.shutdown()
                else:
                    await asyncio.to_thread(bus.shutdown)

    async def run(self) -> None:
        """Return once the attack window has passed and everything due has been sent."""
        await self._done.wait()

    def _receive(self) -> list[can.Message]:
        with self._recv_lock:
            bus = self._bus
            batch: list[can.Message] = []
            msg = bus.recv(_RECV_TIMEOUT_S)
            while msg is not None:
                batch.append(msg)
                if len(batch) >= _MAX_BATCH:
                    break
                msg = bus.recv(0.0)
            return batch

    async def _read(self) -> None:
        stream = self.stream
        name = self.bus_name
        while True:
            batch = await asyncio.to_thread(self._receive)
            now = self._clock()
            for msg in batch:
                if msg.is_error_frame:
                    continue
                self.received += 1
                msg.channel = name
                msg.timestamp = now
                self._outbox.extend(f.frame for f in stream.feed(msg) if f.attack is not None)

    async def _inject(self) -> None:
        stream = self.stream
        origin = stream.origin
        assert origin is not None
        end = origin + self.attack.end
        while True:
            now = self._clock()
            out, self._outbox = self._outbox, []
            out.extend(f.frame for f in stream.flush(now))
            if out:
                await self._send(out)
            due = stream.next_due()
            if due is None:
                if now >= end and not self._outbox:
                    self._done.set()
                wait = _MAX_WAIT_S
            else:
                wait = min(max(due - self._clock(), _MIN_WAIT_S), _MAX_WAIT_S)
            await asyncio.sleep(wait)

    async def _send(self, frames: list[can.Message]) -> None:
        assert self.sink is not None
        await self.sink.send_frames(frames)
        if self.labels is not None:
            await self.labels.send_frames(frames)
