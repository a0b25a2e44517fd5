"""The simulation runner: pacing, durations, stopping, routing to buses, statistics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence

import can
import pytest

from agent.errors import BusError, UsageError
from sim.runner import BusSink, FrameProducer, FrameSink, SimulationRunner
from sim.socketcand import SocketcandServer
from sim.wire import estimated_bits


class Periodic:
    """A producer of one frame every *period* seconds per channel, for ever or *count* frames."""

    def __init__(
        self, period: float, channels: Sequence[str] = ("can0",), count: int | None = None
    ) -> None:
        self.period = period
        self.channels = list(channels)
        self.count = count
        self.emitted = 0
        self.asked: list[float] = []

    def frames_until(self, t: float) -> list[can.Message]:
        self.asked.append(t)
        out = []
        while self.emitted * self.period <= t and (self.count is None or self.emitted < self.count):
            n = self.emitted
            for channel in self.channels:
                out.append(
                    can.Message(
                        timestamp=n * self.period,
                        arbitration_id=0x200,
                        is_extended_id=False,
                        data=n.to_bytes(4, "big"),
                        channel=channel,
                    )
                )
            self.emitted += 1
        return out

    @property
    def finished(self) -> bool:
        return self.count is not None and self.emitted >= self.count


class Sink:
    def __init__(self, bus_name: str | None = None) -> None:
        if bus_name is not None:
            self.bus_name = bus_name
        self.arrivals: list[tuple[float, can.Message]] = []

    async def send_frames(self, frames: Sequence[can.Message]) -> None:
        now = asyncio.get_running_loop().time()
        self.arrivals.extend((now, m) for m in frames)


@pytest.fixture(autouse=True)
def _quiet_client() -> Iterator[None]:
    logger = logging.getLogger("can.interfaces.socketcand")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def test_protocols_are_satisfied() -> None:
    assert isinstance(Periodic(0.1), FrameProducer)
    assert isinstance(Sink(), FrameSink)
    assert isinstance(SocketcandServer(), FrameSink)


async def test_real_time_pacing_and_duration() -> None:
    producer = Periodic(0.02)
    sink = Sink()
    loop = asyncio.get_running_loop()
    async with SimulationRunner(producer, [sink], speed=1.0) as runner:
        started = loop.time()
        cpu_before = time.process_time()
        await runner.run(duration=0.5)
        cpu = time.process_time() - cpu_before
        elapsed = loop.time() - started
    # Pacing is behaviour, not speed: bounds are loose enough for a loaded, shared machine.
    assert 0.49 <= elapsed < 2.0
    assert len(sink.arrivals) == 26  # 0, 0.02, …, 0.50: the frame due at the end is sent
    for arrived, msg in sink.arrivals:
        due = msg.timestamp
        assert due - 0.001 <= arrived - started <= due + 0.5
    assert runner.stats.run_time == 0.5
    assert cpu < 0.8 * elapsed  # sleeps between ticks, no busy-spinning


async def test_speed_two_runs_twice_as_fast() -> None:
    producer = Periodic(0.02)
    sink = Sink()
    loop = asyncio.get_running_loop()
    async with SimulationRunner(producer, [sink], speed=2.0) as runner:
        started = loop.time()
        await runner.run(duration=0.6)
        elapsed = loop.time() - started
    assert 0.29 <= elapsed < 0.6
    assert len(sink.arrivals) == 31
    for arrived, msg in sink.arrivals:
        assert msg.timestamp / 2 - 0.001 <= arrived - started <= msg.timestamp / 2 + 0.06


async def test_fast_mode_steps_and_yields() -> None:
    producer = Periodic(0.001)
    sink = Sink()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    async with SimulationRunner(producer, [sink], speed=0, step=0.1) as runner:
        await runner.run(duration=30.0)
    task.cancel()
    assert len(sink.arrivals) == 30_001
    assert producer.asked[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert producer.asked[-1] == 30.0
    assert ticks >= 250  # the loop ran other tasks between steps
    assert runner.stats.frames == 30_001


async def test_finished_producer_ends_the_run() -> None:
    producer = Periodic(0.01, count=5)
    sink = Sink()
    async with SimulationRunner(producer, [sink], speed=0) as runner:
        await runner.run()
    assert len(sink.arrivals) == 5
    assert runner.stats.run_time == pytest.approx(0.1)


async def test_stop_and_background_start() -> None:
    producer = Periodic(0.01)
    sink = Sink()
    loop = asyncio.get_running_loop()
    async with SimulationRunner(producer, [sink], speed=1.0) as runner:
        started = loop.time()
        task = runner.start()
        await asyncio.sleep(0.2)
        runner.stop()
        await asyncio.wait_for(task, 1.0)
        assert loop.time() - started < 0.5
    assert 15 <= len(sink.arrivals) <= 30
    # Leaving the context cancels a run still going.
    async with SimulationRunner(Periodic(0.01), [Sink()]) as runner:
        task = runner.start()
        await asyncio.sleep(0.05)
    assert task.cancelled() or task.done()


async def test_routing_by_channel_and_statistics() -> None:
    producer = Periodic(0.001, channels=["pt", "body", "chassis"])
    pt, body, recorder = Sink("pt"), Sink("body"), Sink()
    async with SimulationRunner(producer, [pt, body, recorder], speed=0) as runner:
        await runner.run(duration=0.999)
    assert {m.channel for _, m in pt.arrivals} == {"pt"}
    assert {m.channel for _, m in body.arrivals} == {"body"}
    assert len(pt.arrivals) == len(body.arrivals) == 1000
    assert len(recorder.arrivals) == 3000  # sinks without bus_name see every frame
    assert runner.stats.frames_per_bus == {"pt": 1000, "body": 1000}
    assert runner.stats.unrouted == 1000
    assert runner.stats.bits_per_bus["pt"] == 1000 * (47 + 32)
    # A single bus takes every frame whatever its channel.
    only = Sink("anything")
    async with SimulationRunner(Periodic(0.1, channels=["x", "y"]), [only], speed=0) as runner:
        await runner.run(duration=0.95)
    assert len(only.arrivals) == 20 and runner.stats.unrouted == 0


async def test_rate_statistics() -> None:
    async with SimulationRunner(Periodic(0.001), [Sink("can0")], speed=1.0) as runner:
        await runner.run(duration=1.3)
    assert 700 <= runner.stats.rate <= 1300
    assert 700 <= runner.stats.bus_rates()["can0"] <= 1300
    assert runner.stats.bus_bit_rates()["can0"] == pytest.approx(
        runner.stats.bus_rates()["can0"] * (47 + 32), rel=0.01
    )


def test_estimated_bits() -> None:
    assert estimated_bits(can.Message(arbitration_id=1, is_extended_id=False, data=bytes(8))) == 111
    assert estimated_bits(can.Message(arbitration_id=1, is_extended_id=True, data=b"")) == 67
    remote = can.Message(arbitration_id=1, is_extended_id=False, is_remote_frame=True, dlc=8)
    assert estimated_bits(remote) == 47


def test_bad_arguments() -> None:
    with pytest.raises(UsageError, match="speed"):
        SimulationRunner(Periodic(0.1), [], speed=-1)
    with pytest.raises(UsageError, match="speed"):
        SimulationRunner(Periodic(0.1), [], speed=float("nan"))
    with pytest.raises(UsageError, match="named 'can0'"):
        SimulationRunner(Periodic(0.1), [Sink("can0"), Sink("can0")])


async def test_negative_duration_is_a_usage_error() -> None:
    async with SimulationRunner(Periodic(0.1), []) as runner:
        with pytest.raises(UsageError, match="duration"):
            await runner.run(-1)


async def test_bus_sink_virtual_in_loop() -> None:
    channel = f"runner-{id(object()):x}"
    receiver = can.Bus(interface="virtual", channel=channel)
    try:
        async with BusSink(f"virtual://{channel}?name=can0") as sink:
            assert sink.bus_name == "can0"
            async with SimulationRunner(Periodic(0.01, count=10), [sink], speed=0) as runner:
                await runner.run()
        got = [receiver.recv(1.0) for _ in range(10)]
    finally:
        receiver.shutdown()
    assert [int.from_bytes(m.data, "big") for m in got if m is not None] == list(range(10))
    assert sink.frames_sent == 10


async def test_bus_sink_in_a_thread_over_socketcand() -> None:
    async with SocketcandServer("127.0.0.1", 0, ["can0"]) as server:
        with server.received() as subscription:
            async with BusSink(f"socketcand://127.0.0.1:{server.port}/can0") as sink:
                async with SimulationRunner(Periodic(0.001, count=500), [sink], speed=0) as runner:
                    await runner.run()
                got = [await asyncio.wait_for(subscription.get(), 5) for _ in range(500)]
    assert [int.from_bytes(m.data, "big") for m in got] == list(range(500))
    assert sink.frames_sent == 500


async def test_bus_sink_reports_a_broken_bus() -> None:
    class Broken:
        channel = "can0"

        def send(self, msg: can.Message, timeout: float | None = None) -> None:
            raise can.CanOperationError("No buffer space available")

    sink = BusSink(Broken())
    async with sink:
        with pytest.raises(BusError, match="50 sends failed in a row"):
            await sink.send_frames([can.Message(arbitration_id=1)] * 60)
    assert sink.send_errors == 50
    unopened = BusSink("virtual://never-opened")
    with pytest.raises(BusError, match="not open"):
        await unopened.send_frames([can.Message()])
