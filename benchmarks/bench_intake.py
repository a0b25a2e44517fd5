"""Frames from the simulator in another process to the decoder: tbox vs stock python-can.

A server process (the simulator's socketcand server) replays the real RAV4 log as fast as the
client takes it (TCP back-pressure: nothing may be lost). In this process, two consumers take the
same frames in turn:

* baseline — python-can's asyncio way: ``Notifier`` + ``AsyncBufferedReader`` (one loop wake-up per
  frame) and cantools' ``Database.decode_message``;
* tbox — ``FrameSource`` (batched hand-over) and the compiled ``Decoder``.

Prints frames/s for each, the ratio, and the frames lost (must be 0). Target (issue 2): tbox
≥ 50,000 frames/s without loss on a 2-core machine.

    .venv/bin/python benchmarks/bench_intake.py [--frames 300000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import can
import cantools

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "rav4-2018-comma2k19"
LOG = DATA / "rav4_60s.log"
DBC = DATA / "toyota_new_mc_pt_generated.dbc"
TARGET_FPS = 50_000


def _frames(n: int) -> list[can.Message]:
    """*n* frames of the RAV4 log, repeated as needed (bus can0 and can1 both go to can0)."""
    from agent.canlog import read_log

    base = list(read_log(LOG))
    frames: list[can.Message] = []
    while len(frames) < n:
        frames.extend(base[: n - len(frames)])
    for f in frames:
        f.channel = "can0"
    return frames


async def _serve(port_file: Path, n: int) -> None:
    from sim.socketcand import SocketcandServer

    frames = _frames(n)
    async with SocketcandServer("127.0.0.1", 0, ["can0"], lossless=True) as server:
        port_file.write_text(str(server.port))  # noqa: ASYNC240 - nothing else runs yet
        await server.wait_for_clients(1, channel="can0")
        for i in range(0, len(frames), 2000):
            await server.publish(frames[i : i + 2000])
        # Let the client read the tail before the connection closes (the parent kills us).
        await asyncio.Event().wait()


def _start_server(n: int) -> tuple[subprocess.Popen[bytes], int]:
    port_file = Path(tempfile.mkdtemp()) / "port"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port_file), "--frames", str(n)],
    )
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("benchmark server did not start")
        time.sleep(0.02)
    return proc, int(port_file.read_text())


async def _baseline(port: int, n: int, db: Any) -> tuple[int, float]:
    bus = can.Bus(interface="socketcand", channel="can0", host="127.0.0.1", port=port)
    reader = can.AsyncBufferedReader()
    notifier = can.Notifier(bus, [reader], loop=asyncio.get_running_loop())
    decode = db.decode_message
    known = {m.frame_id for m in db.messages}
    count = 0
    start = 0.0
    try:
        async with asyncio.timeout(120):
            while count < n:
                msg = await reader.get_message()
                if count == 0:
                    start = time.perf_counter()
                count += 1
                if msg.arbitration_id in known:
                    decode(msg.arbitration_id, msg.data, decode_choices=False)
    finally:
        notifier.stop()
        bus.shutdown()
    return count, time.perf_counter() - start


async def _tbox(port: int, n: int, db: Any) -> tuple[int, float]:
    from agent.busurl import parse_bus_url
    from agent.frame_source import FrameSource
    from can_dbc import Decoder

    decoder = Decoder(db)
    decode = decoder.decode
    count = 0
    start = 0.0
    async with FrameSource([parse_bus_url(f"socketcand://127.0.0.1:{port}/can0")]) as source:
        async with asyncio.timeout(120):
            async for batch in source:
                if count == 0:
                    start = time.perf_counter()
                count += len(batch)
                for frame in batch:
                    decode(frame.arbitration_id, frame.data)
                if count >= n:
                    break
    return count, time.perf_counter() - start


def _measure(
    consumer: Callable[[int, int, Any], Coroutine[Any, Any, tuple[int, float]]], n: int, db: Any
) -> tuple[float, int]:
    proc, port = _start_server(n)
    try:
        count, seconds = asyncio.run(consumer(port, n, db))
    finally:
        proc.terminate()
        proc.wait(10)
    return count / seconds, n - count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)
    if args.serve:
        asyncio.run(_serve(args.serve, args.frames))
        return 0
    db = cantools.database.load_file(DBC, strict=False)
    base_rates, tbox_rates, lost = [], [], 0
    for _ in range(args.reps):
        rate, missing = _measure(_baseline, args.frames, db)
        base_rates.append(rate)
        rate, missing2 = _measure(_tbox, args.frames, db)
        tbox_rates.append(rate)
        lost += missing2
        print(
            f"  rep: python-can Notifier+cantools {base_rates[-1]:,.0f} frames/s "
            f"(lost {missing}), tbox FrameSource+Decoder {tbox_rates[-1]:,.0f} frames/s "
            f"(lost {missing2})",
            flush=True,
        )
    base, tbox = statistics.median(base_rates), statistics.median(tbox_rates)
    print(
        f"intake+decode, simulator in another process over socketcand: tbox {tbox:,.0f} "
        f"frames/s vs python-can Notifier+cantools {base:,.0f} frames/s: {tbox / base:.2f}x; "
        f"lost {lost} of {args.frames * args.reps}; target {TARGET_FPS:,} frames/s: "
        f"{'met' if tbox >= TARGET_FPS and lost == 0 else 'NOT met'}"
    )
    return 0 if tbox >= TARGET_FPS and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
