"""Upload queue throughput: group commit against one transaction per record, same run, same disk.

Both write 200-byte records to SQLite in WAL mode with ``synchronous=FULL`` (each commit is
fsynced: durable across a power cut) in the same temporary directory. The baseline commits each
record in its own transaction, as a naive durable queue would; ``UploadQueue`` merges concurrent
puts from many producers into one transaction. Also measured: single-record puts from many
producers, a full queue where every put evicts, and draining (take 128 KiB + ack).

    .venv/bin/python benchmarks/bench_queue.py [--records 200000] [--reps 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.upload_queue import DEFAULT_MAX_BYTES, QueueItem, UploadQueue

PAYLOAD = 200
TARGET = 100_000  # records/s (issue 3)
DRAIN_BUDGET = 128 * 1024  # the uplink's default batch cap


def _items(n: int) -> list[QueueItem]:
    payload = os.urandom(PAYLOAD)
    now = time.time()
    return [QueueItem("telemetry", 5, payload, now, now + 86_400) for _ in range(n)]


async def _baseline(directory: Path, n: int) -> float:
    """Records/s committing each record in its own transaction, on the queue's own schema."""
    path = directory / "baseline.db"
    async with UploadQueue(path):
        pass  # create the same schema and indexes
    rows = [(i.kind, i.priority, i.payload, i.created, i.expires) for i in _items(n)]
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        insert = (
            "INSERT INTO items (kind, priority, payload, created, expires) VALUES (?, ?, ?, ?, ?)"
        )
        start = time.perf_counter()
        for row in rows:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(insert, row)
            conn.execute("COMMIT")
        seconds = time.perf_counter() - start
    path.unlink()
    return n / seconds


async def _producers(queue: UploadQueue, total: int, producers: int, per_put: int) -> float:
    """Records/s with *producers* tasks each putting *per_put* records at a time."""
    batch = _items(per_put)
    puts_each = max(1, total // (producers * per_put))

    async def produce() -> None:
        for _ in range(puts_each):
            await queue.put(batch)

    start = time.perf_counter()
    await asyncio.gather(*(produce() for _ in range(producers)))
    return producers * puts_each * per_put / (time.perf_counter() - start)


async def _put_rate(
    directory: Path, total: int, producers: int, per_put: int, max_bytes: int | None = None
) -> float:
    path = directory / "queue.db"
    cap = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    async with UploadQueue(path, max_bytes=cap) as queue:
        if max_bytes is not None:  # fill it first: then every put evicts
            await _producers(queue, max_bytes // (PAYLOAD + 64) + 1000, 16, 100)
            assert queue.ledger["evicted"] > 0
        rate = await _producers(queue, total, producers, per_put)
    _remove(path)
    return rate


async def _drain_rate(directory: Path, total: int) -> float:
    path = directory / "drain.db"
    async with UploadQueue(path) as queue:
        await _producers(queue, total, 64, 100)
        start = time.perf_counter()
        drained = 0
        while batch := await queue.take(DRAIN_BUDGET):
            await queue.ack([item.id for item in batch])
            drained += len(batch)
        rate = drained / (time.perf_counter() - start)
    _remove(path)
    return rate


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _median(reps: int, run: Callable[[], Awaitable[float]]) -> float:
    return statistics.median([await run() for _ in range(reps)])


async def _main(directory: Path, records: int, reps: int) -> bool:
    base = await _median(reps, lambda: _baseline(directory, 2_000))
    grouped = await _median(reps, lambda: _put_rate(directory, records, 64, 100))
    single = await _median(reps, lambda: _put_rate(directory, records // 4, 1_000, 1))
    full = await _median(
        reps, lambda: _put_rate(directory, records, 64, 100, max_bytes=16 * 1024 * 1024)
    )
    drain = await _median(reps, lambda: _drain_rate(directory, records))
    met = grouped >= TARGET

    def line(label: str, rate: float, extra: str = "") -> None:
        print(f"  {label:<46} {rate:>9,.0f} records/s = {rate / base:5.1f}x baseline{extra}")

    print(f"upload queue, {PAYLOAD}-byte records, WAL + synchronous=FULL, in {directory}:")
    print(f"  {'baseline: one transaction per record':<46} {base:>9,.0f} records/s")
    verdict = f"; >= {TARGET:,}/s: {'met' if met else 'NOT met'}"
    line("UploadQueue: 64 producers x 100-record puts", grouped, verdict)
    line("UploadQueue: 1,000 producers x 1-record puts", single)
    line("UploadQueue: full 16 MiB queue, every put evicts", full)
    line(f"drain: take({DRAIN_BUDGET // 1024} KiB) + ack", drain)
    print(f"  (median of {reps} runs each; {records:,} records per put run)")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a tmp dir)"
    )
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-queue-", dir=args.dir))
    try:
        asyncio.run(_main(directory, args.records, args.reps))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
