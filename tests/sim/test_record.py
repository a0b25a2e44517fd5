"""Recording frames as candump -L, read back through read_log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import can
import pytest

from agent.canlog import LogReadStats, read_log
from agent.errors import UsageError
from sim.record import LogRecorder, format_candump_line, record_buses

FRAMES = [
    can.Message(
        timestamp=1.5, arbitration_id=0x123, is_extended_id=False, data=b"\xde\xad\xbe\xef"
    ),
    can.Message(timestamp=2.0, arbitration_id=0x1ABCDEF0, is_extended_id=True, data=b"\x01"),
    can.Message(timestamp=2.25, arbitration_id=0x00000005, is_extended_id=True, data=b""),
    can.Message(
        timestamp=3.0, arbitration_id=0x321, is_extended_id=False, is_remote_frame=True, dlc=5
    ),
    can.Message(
        timestamp=4.0,
        arbitration_id=0x456,
        is_extended_id=False,
        is_fd=True,
        bitrate_switch=True,
        error_state_indicator=True,
        data=bytes(range(16)),
        channel="can1",
    ),
    can.Message(timestamp=5.0, arbitration_id=0x80, is_error_frame=True, data=bytes(8)),
    can.Message(timestamp=1_700_000_000.123456, arbitration_id=0x7FF, data=b"\x00", channel=2),
]


def test_candump_lines() -> None:
    assert [format_candump_line(m) for m in FRAMES] == [
        "(1.500000) can0 123#DEADBEEF\n",
        "(2.000000) can0 1ABCDEF0#01\n",
        "(2.250000) can0 00000005#\n",
        "(3.000000) can0 321#R5\n",
        "(4.000000) can1 456##3000102030405060708090A0B0C0D0E0F\n",
        "(5.000000) can0 20000080#0000000000000000\n",
        "(1700000000.123456) can2 000007FF#00\n",
    ]


async def test_round_trip_through_read_log(tmp_path: Path) -> None:
    path = tmp_path / "rec.log"
    async with LogRecorder(path) as recorder:
        await recorder.send_frames(FRAMES)
    assert recorder.frames == len(FRAMES)
    stats = LogReadStats()
    got = list(read_log(path, stats))
    assert stats.malformed == 0
    assert len(got) == len(FRAMES)
    for want, have in zip(FRAMES, got, strict=True):
        assert have.timestamp == pytest.approx(want.timestamp, abs=1e-6)
        for name in ("arbitration_id", "is_extended_id", "is_remote_frame", "is_error_frame"):
            assert getattr(have, name) == getattr(want, name), name
        assert have.dlc == want.dlc
        assert bytes(have.data) == bytes(want.data)
        assert have.is_fd == want.is_fd and have.bitrate_switch == want.bitrate_switch
    assert [m.channel for m in got] == ["can0"] * 4 + ["can1", "can0", "can2"]


async def test_flushes_regularly_and_closes_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "rec.log"
    async with LogRecorder(path, flush_interval=0.05) as recorder:
        await recorder.send_frames(FRAMES[:1])
        await asyncio.sleep(0.06)
        await recorder.send_frames(FRAMES[1:2])
        assert path.read_text().count("\n") == 2  # on disk while still recording
        await recorder.send_frames(FRAMES[2:3])
        assert path.read_text().count("\n") == 2  # the third is pending
    assert path.read_text().count("\n") == 3
    with pytest.raises(UsageError, match="not open"):
        await recorder.send_frames(FRAMES)


async def test_unwritable_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot write"):
        async with LogRecorder(tmp_path / "no" / "such" / "dir.log"):
            pass


async def test_record_buses_until_max_frames(tmp_path: Path) -> None:
    from agent.busurl import parse_bus_url

    channel = f"record-{id(tmp_path):x}"
    spec = parse_bus_url(f"virtual://{channel}?name=can3")
    sender = can.Bus(interface="virtual", channel=channel)
    path = tmp_path / "rec.log"
    try:
        async with LogRecorder(path) as recorder:
            task = asyncio.create_task(record_buses([spec], recorder, max_frames=50))
            i = 0
            while not task.done():
                sender.send(can.Message(arbitration_id=0x10, data=i.to_bytes(2, "big")))
                i += 1
                await asyncio.sleep(0.002)
            recorded = await task
    finally:
        sender.shutdown()
    assert recorded == 50
    got = list(read_log(path))
    assert len(got) == 50
    assert {m.channel for m in got} == {"can3"}
    values = [int.from_bytes(m.data, "big") for m in got]
    assert values == sorted(values)


async def test_record_buses_until_duration(tmp_path: Path) -> None:
    from agent.busurl import parse_bus_url

    spec = parse_bus_url(f"virtual://quiet-{id(tmp_path):x}")
    async with LogRecorder(tmp_path / "rec.log") as recorder:
        started = asyncio.get_running_loop().time()
        assert await record_buses([spec], recorder, duration=0.2) == 0
        assert asyncio.get_running_loop().time() - started < 2.0
