"""End to end: the simulator in another process → socketcand → FrameSource → Decoder.

Real parts only: `tbox sim serve` as a subprocess (killed with SIGKILL to make the bus vanish),
python-can's socketcand client inside FrameSource, the compiled decoder over the sample DBC.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.busurl import parse_bus_url
from agent.frame_source import Backoff, FrameSource
from can_dbc import SAMPLE_VEHICLE_DBC, Decoder, load_dbc
from tests.sim_server import start_sim_server, stop_sim_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc, port = start_sim_server(tmp_path, "--duration", "60", "--quiet")
    yield proc, port
    stop_sim_server(proc)


async def test_simulated_traffic_decodes_with_cycle_times(
    server: tuple[subprocess.Popen[str], int],
) -> None:
    _, port = server
    db = load_dbc(SAMPLE_VEHICLE_DBC).database
    decoder = Decoder(db)
    times: dict[str, list[float]] = defaultdict(list)
    speeds: list[float] = []
    async with FrameSource([parse_bus_url(f"socketcand://127.0.0.1:{port}/can0")]) as source:
        async with asyncio.timeout(30):
            start = None
            async for batch in source:
                for frame in batch:
                    assert frame.channel == "can0"
                    decoded = decoder.decode(frame.arbitration_id, frame.data)
                    if decoded is None:
                        continue
                    times[decoded.message].append(frame.timestamp)
                    speed = decoded.signals.get("ESC_VehSpd")
                    if speed is not None:
                        speeds.append(float(speed))
                start = start or batch[0].timestamp
                if batch[-1].timestamp - start > 4.0:
                    break
    periodic = {m.name: m.cycle_time for m in db.messages if m.cycle_time and m.cycle_time <= 200}
    assert len(periodic) >= 20
    missing = sorted(set(periodic) - set(times))
    assert not missing, f"periodic messages never seen: {missing}"
    for name, cycle_ms in periodic.items():
        stamps = times[name]
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        assert rate == pytest.approx(1000.0 / cycle_ms, rel=0.25), name
    assert speeds, "no ESC_VehSpd decoded"
    assert all(0.0 <= s <= 250.0 for s in speeds)


RAV4_LOG = Path(__file__).parents[1] / "data" / "rav4-2018-comma2k19" / "rav4_60s.log"


async def test_bus_that_disappears_is_reopened(tmp_path: Path) -> None:
    replay = ("--replay", str(RAV4_LOG), "--loop", "--map", "can1=can0", "--quiet")
    proc, port = start_sim_server(tmp_path, *replay)
    fast = Backoff(initial=0.05, maximum=0.2)
    got: Counter[str] = Counter()
    try:
        spec = parse_bus_url(f"socketcand://127.0.0.1:{port}/can0")
        async with FrameSource([spec], backoff=fast) as source:
            async with asyncio.timeout(40):
                phase = "before"
                async for batch in source:
                    got[phase] += len(batch)
                    if phase == "before" and got[phase] > 200:
                        # A power cut of the other side: no FIN handshake niceties.
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait(10)
                        await asyncio.sleep(0.5)
                        proc, _ = start_sim_server(tmp_path, *replay, port=port)
                        phase = "after"
                    elif phase == "after" and got[phase] > 200:
                        break
            stats = source.stats["can0"]
    finally:
        stop_sim_server(proc)
    assert got["after"] > 200
    assert stats.reopens >= 1
    assert stats.errors >= 1
