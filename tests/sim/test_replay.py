"""Log replay: original timing, scaled, as fast as possible, looping, channel mapping."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import can
import pytest

from agent.errors import UsageError
from sim.record import format_candump_line
from sim.replay import LogReplay
from sim.runner import BusSink, SimulationRunner


class CollectingSink:
    """A frame sink that keeps every batch with the loop time it arrived at."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[can.Message]]] = []

    async def send_frames(self, frames: Sequence[can.Message]) -> None:
        self.batches.append((asyncio.get_running_loop().time(), list(frames)))

    @property
    def frames(self) -> list[can.Message]:
        return [m for _, batch in self.batches for m in batch]

    def arrivals(self) -> list[tuple[float, can.Message]]:
        return [(t, m) for t, batch in self.batches for m in batch]


def write_log(path: Path, frames: Sequence[can.Message]) -> Path:
    path.write_text("".join(format_candump_line(m) for m in frames))
    return path


def periodic_frames(
    count: int, period: float, *, channel: str = "can0", start: float = 1_600_000_000.0
) -> list[can.Message]:
    """*count* frames *period* seconds apart; the data is the frame's index."""
    return [
        can.Message(
            timestamp=start + i * period,
            arbitration_id=0x100 + i % 8,
            is_extended_id=False,
            data=i.to_bytes(4, "big"),
            channel=channel,
        )
        for i in range(count)
    ]


def _index(msg: can.Message) -> int:
    return int.from_bytes(msg.data, "big")


async def _replay(
    path: Path, speed: float, **kwargs: object
) -> tuple[CollectingSink, float, float]:
    sink = CollectingSink()
    replay = LogReplay(path, **kwargs)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    async with SimulationRunner(replay, [sink], speed=speed) as runner:
        started = loop.time()
        await runner.run()
        elapsed = loop.time() - started
    return sink, started, elapsed


async def test_original_timing(tmp_path: Path) -> None:
    log = write_log(tmp_path / "a.log", periodic_frames(41, 0.01))  # 0.4 s of traffic
    wall_before = time.time()
    sink, started, elapsed = await _replay(log, 1.0)
    assert [_index(m) for m in sink.frames] == list(range(41))
    assert 0.38 <= elapsed < 0.8
    for arrived, msg in sink.arrivals():
        due = _index(msg) * 0.01
        # Never early; late by at most a few ticks (loaded CI machines: generous).
        assert due - 0.001 <= arrived - started <= due + 0.06
        # Live timestamps: the wall clock of the run, not the log's 2020 times.
        assert msg.timestamp == pytest.approx(wall_before + due, abs=0.05)


async def test_scaled_ten_times(tmp_path: Path) -> None:
    log = write_log(tmp_path / "a.log", periodic_frames(51, 0.04))  # 2 s of traffic
    sink, started, elapsed = await _replay(log, 10.0)
    assert len(sink.frames) == 51
    assert 0.19 <= elapsed < 0.6
    for arrived, msg in sink.arrivals():
        due = _index(msg) * 0.04 / 10
        assert due - 0.001 <= arrived - started <= due + 0.06
    # Timestamps are run time (log spacing), not wall time: 40 ms apart.
    stamps = [m.timestamp for m in sink.frames]
    assert stamps[1] - stamps[0] == pytest.approx(0.04, abs=1e-6)


async def test_as_fast_as_possible(tmp_path: Path) -> None:
    log = write_log(tmp_path / "a.log", periodic_frames(20_000, 0.001))  # 20 s of traffic
    sink, _, elapsed = await _replay(log, 0.0)
    assert [_index(m) for m in sink.frames] == list(range(20_000))
    assert elapsed < 5.0
    # Asked in steps of 0.1 s of log time: about 100 frames a batch.
    assert max(len(batch) for _, batch in sink.batches) <= 101


async def test_loop_repeats_with_time_offset(tmp_path: Path) -> None:
    log = write_log(tmp_path / "a.log", periodic_frames(10, 0.01))  # 0.09 s long
    replay = LogReplay(log, loop=True)
    sink = CollectingSink()
    async with SimulationRunner(replay, [sink], speed=0) as runner:
        await runner.run(duration=0.995)
    frames = sink.frames
    assert [_index(m) for m in frames] == list(range(10)) * 10  # a pass every 0.1 s
    stamps = [m.timestamp for m in frames]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(g == pytest.approx(0.01, abs=1e-6) for g in gaps)  # one mean gap between passes
    assert replay.passes == 11 and not replay.finished
    assert replay.read_stats.frames == 10 * 10 + 1  # the 11th pass has read its first frame


async def test_channel_map_routes_to_buses(tmp_path: Path) -> None:
    frames = periodic_frames(10, 0.001, channel="can0") + periodic_frames(
        5, 0.001, channel="can1", start=1_600_000_000.0005
    )
    frames.sort(key=lambda m: m.timestamp)
    frames.append(can.Message(timestamp=1_600_000_000.02, arbitration_id=1, channel="can9"))
    log = write_log(tmp_path / "two.log", frames)
    suffix = f"{id(frames):x}"
    receivers = {
        name: can.Bus(interface="virtual", channel=f"{name}-{suffix}", receive_own_messages=False)
        for name in ("pt", "body")
    }
    try:
        replay = LogReplay(log, channel_map={"can0": "pt", "can1": "body"})
        async with (
            BusSink(f"virtual://pt-{suffix}?name=pt") as pt,
            BusSink(f"virtual://body-{suffix}?name=body") as body,
            SimulationRunner(replay, [pt, body], speed=0) as runner,
        ):
            await runner.run()
        got = {name: _drain(bus) for name, bus in receivers.items()}
    finally:
        for bus in receivers.values():
            bus.shutdown()
    assert len(got["pt"]) == 10 and len(got["body"]) == 5
    assert runner.stats.frames_per_bus == {"pt": 10, "body": 5}
    assert runner.stats.unrouted == 1  # can9 names no bus


def _drain(bus: can.BusABC) -> list[can.Message]:
    frames = []
    while (msg := bus.recv(0.05)) is not None:
        frames.append(msg)
    return frames


def _finished(replay: LogReplay) -> bool:
    return replay.finished  # a call, so that mypy does not narrow the property


def test_next_frame_time_and_finish(tmp_path: Path) -> None:
    log = write_log(tmp_path / "a.log", periodic_frames(3, 0.5))
    replay = LogReplay(log, start_time=100.0)
    assert replay.next_frame_time() == 0.0
    assert [m.timestamp for m in replay.frames_until(0.6)] == [100.0, 100.5]
    assert replay.next_frame_time() == pytest.approx(1.0)
    assert not _finished(replay)
    assert [m.timestamp for m in replay.frames_until(5.0)] == [101.0]
    assert _finished(replay) and replay.next_frame_time() is None
    assert replay.frames_until(10.0) == []


def test_empty_and_missing_logs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("not a frame\n")
    replay = LogReplay(empty, loop=True)
    assert replay.empty and replay.finished
    assert replay.read_stats.malformed == 1
    with pytest.raises(UsageError):
        LogReplay(tmp_path / "missing.log")
    with pytest.raises(UsageError, match="standard input"):
        LogReplay("-", loop=True)
