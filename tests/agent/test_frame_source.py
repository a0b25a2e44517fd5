"""FrameSource: batches from python-can buses, filters, several buses, reopening."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import can
import pytest

from agent.busurl import parse_bus_url
from agent.errors import UsageError
from agent.frame_source import Backoff, FrameSource, id_filters

_counter = itertools.count()


def _channel() -> str:
    # virtual channels are process-global: a fresh name per test keeps tests apart
    return f"fs-test-{next(_counter)}"


async def _collect(source: FrameSource, n: int, within: float = 10.0) -> list[can.Message]:
    frames: list[can.Message] = []
    async with asyncio.timeout(within):
        async for batch in source:
            frames.extend(batch)
            if len(frames) >= n:
                return frames
    return frames


async def test_frames_arrive_in_order_with_bus_name_and_timestamp() -> None:
    ch = _channel()
    async with FrameSource([parse_bus_url(f"virtual://{ch}?name=can0")]) as source:
        assert await source.wait_open()
        tx = can.Bus(interface="virtual", channel=ch)
        n = 20_000
        before = time.time()

        def send() -> None:
            for i in range(n):
                tx.send(can.Message(arbitration_id=i % 0x800, data=i.to_bytes(4, "big")))

        sender = asyncio.create_task(asyncio.to_thread(send))
        frames = await _collect(source, n)
        await sender
        tx.shutdown()
    assert len(frames) == n
    assert [int.from_bytes(f.data, "big") for f in frames] == list(range(n))
    assert {f.channel for f in frames} == {"can0"}
    assert all(before - 1 <= f.timestamp <= time.time() + 1 for f in frames)
    assert source.stats["can0"].frames == n


async def test_subscribed_ids_only_and_filtered_frames_are_counted() -> None:
    ch = _channel()
    spec = parse_bus_url(f"virtual://{ch}")
    async with FrameSource([spec], frame_ids={ch: [0x100, 0x18DAF110]}) as source:
        assert await source.wait_open()
        tx = can.Bus(interface="virtual", channel=ch)
        for i in range(300):
            ext = i % 3 == 2
            fid = (0x100, 0x200, 0x18DAF110)[i % 3]
            tx.send(can.Message(arbitration_id=fid, is_extended_id=ext, data=b"\x00"))
        frames = await _collect(source, 200)
        tx.shutdown()
    assert {f.arbitration_id for f in frames} == {0x100, 0x18DAF110}
    assert len(frames) == 200
    assert source.stats[ch].filtered == 100


async def test_several_buses_each_frame_carries_its_bus() -> None:
    a, b = _channel(), _channel()
    specs = [parse_bus_url(f"virtual://{a}?name=can0"), parse_bus_url(f"virtual://{b}?name=can1")]
    async with FrameSource(specs) as source:
        assert await source.wait_open()
        txa, txb = can.Bus(interface="virtual", channel=a), can.Bus(interface="virtual", channel=b)
        for _ in range(100):
            txa.send(can.Message(arbitration_id=0xA))
            txb.send(can.Message(arbitration_id=0xB))
        frames = await _collect(source, 200)
        txa.shutdown()
        txb.shutdown()
    by_bus = {(f.channel, f.arbitration_id) for f in frames}
    assert by_bus == {("can0", 0xA), ("can1", 0xB)}


def test_duplicate_bus_names_and_unknown_filter_buses_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="used twice"):
        FrameSource([parse_bus_url("virtual://x?name=a"), parse_bus_url("virtual://y?name=a")])
    with pytest.raises(UsageError, match="not opened"):
        FrameSource([parse_bus_url("virtual://x")], frame_ids={"can9": [1]})
    with pytest.raises(UsageError):
        FrameSource([])


def test_id_filters_mark_extended_ids() -> None:
    assert id_filters([0x18DAF110, 0x100, 0x100]) == [
        {"can_id": 0x100, "can_mask": 0x7FF, "extended": False},
        {"can_id": 0x18DAF110, "can_mask": 0x1FFFFFFF, "extended": True},
    ]


class FlakyBus(can.BusABC):
    """A python-can interface that fails every few frames, and fails to open every other time."""

    opens = 0
    lock = threading.Lock()

    def __init__(self, channel: Any = None, **kwargs: Any) -> None:
        with FlakyBus.lock:
            FlakyBus.opens += 1
            attempt = FlakyBus.opens
        if attempt % 2 == 0:
            raise can.CanInitializationError(f"adapter unplugged (attempt {attempt})")
        self._left = 50
        self.channel_info = "flaky"
        super().__init__(channel=channel, **kwargs)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        if self._left == 0:
            raise can.CanOperationError("device disappeared")
        self._left -= 1
        return can.Message(arbitration_id=0x42, timestamp=time.time()), False

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        raise NotImplementedError


async def test_a_failing_bus_is_reopened_with_backoff_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Register a python-can interface the way a plugin package would.
    monkeypatch.setitem(can.interfaces.BACKENDS, "flaky", (__name__, "FlakyBus"))
    monkeypatch.setattr(can.util, "VALID_INTERFACES", can.VALID_INTERFACES | {"flaky"})
    FlakyBus.opens = 0
    fast = Backoff(initial=0.01, maximum=0.02)
    async with FrameSource([parse_bus_url("flaky://x")], backoff=fast) as source:
        frames = await _collect(source, 200)
        stats = source.stats["x"]
    assert len(frames) >= 200
    assert stats.reopens >= 3
    # every reopen followed a receive failure; every even attempt failed to open
    assert stats.errors >= 2 * stats.reopens - 1
    assert "device disappeared" in stats.last_error or "unplugged" in stats.last_error


async def test_a_slow_consumer_stalls_the_reader_instead_of_losing_frames() -> None:
    ch = _channel()
    async with FrameSource(
        [parse_bus_url(f"virtual://{ch}")], max_batch=10, max_pending_batches=2
    ) as source:
        assert await source.wait_open()
        tx = can.Bus(interface="virtual", channel=ch)
        n = 2_000
        for i in range(n):
            tx.send(can.Message(arbitration_id=1, data=i.to_bytes(2, "big")))
        received: list[int] = []
        async with asyncio.timeout(10):
            async for batch in source:
                await asyncio.sleep(0.001)
                received += [int.from_bytes(f.data, "big") for f in batch]
                if len(received) >= n:
                    break
        tx.shutdown()
    assert received == list(range(n))
