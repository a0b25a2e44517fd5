"""A writer for the upload queue's crash tests, run as a child process.

    python tests/agent/queue_crash_child.py DIR ROUNDS [TAKE_PER_ROUND]

Each round, on a fake clock that advances 10 s: take and acknowledge some ``data`` records, then
put numbered ``data`` records (priority 1) concurrently with low-priority ``fill`` records that
force evictions and short-lived ``ttl`` records that expire by the next round. Halfway it closes
the queue, plants a malformed row and a corrupt second queue file, and reopens both, so that
every persistence step of the queue is reached. It prints, each line flushed as soon as the call
has returned (a crash point exits without flushing Python's buffers):

    put <n>           every data record numbered ≤ n was accepted (its put returned)
    sent <n> <n> …    these data records were taken and are about to be acknowledged
    ack <n> <n> …     these data records were acknowledged (their ack returned)
    hits <name> <n>   (at the end, with CHILD_REPORT_HITS=1) how often each crash point was reached
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

from agent.crashpoints import all_crashpoints
from agent.upload_queue import QueueItem, UploadQueue

QUEUE_FILE = "queue.db"
JUNK_FILE = "junk.db"
JUNK = b"this is not an SQLite database, but someone's data all the same\n" * 64
MAX_BYTES = 96 * 1024  # room for every data record: only fill and ttl records are evicted
DATA_PER_ROUND = 20
DATA_PAYLOAD = 100
FILL_PER_ROUND = 30
FILL_PAYLOAD = 200
TAKE_PER_ROUND = 18  # data records grow by 2 a round; 20 keeps them level for long runs


def data_payload(number: int) -> bytes:
    """The payload of data record *number*: its number first, padded."""
    return f"{number:08d}".encode().ljust(DATA_PAYLOAD, b".")


def data_number(payload: bytes) -> int:
    """The record number in a data payload."""
    return int(payload[:8])


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _round(queue: UploadQueue, clock: _Clock, next_number: int, take: int) -> int:
    clock.now += 10.0
    taken = await queue.take(take * DATA_PAYLOAD, kinds={"data"})
    if taken:
        sent = " ".join(str(data_number(item.payload)) for item in taken)
        # As the uplink does: publish, then ack what the broker acknowledged. A crash in between
        # may or may not have deleted these; "sent" tells the test which ones may be gone.
        _say(f"sent {sent}")
        await queue.ack([item.id for item in taken])
        _say(f"ack {sent}")
    now = clock.now
    numbers = range(next_number, next_number + DATA_PER_ROUND)
    data = [QueueItem("data", 1, data_payload(n), now) for n in numbers]
    fill = [QueueItem("fill", 9, b"f" * FILL_PAYLOAD, now) for _ in range(FILL_PER_ROUND)]
    ttl = [QueueItem("ttl", 5, b"t" * 50, now, now + 5.0) for _ in range(5)]
    stale = [QueueItem("ttl", 5, b"s" * 50, now - 20.0, now - 10.0)]

    async def put_data() -> None:
        await queue.put(data)
        _say(f"put {numbers[-1]}")

    # Concurrent puts: the writer merges them, so crashes also hit merged transactions.
    await asyncio.gather(put_data(), queue.put(fill), queue.put(ttl + stale))
    return next_number + DATA_PER_ROUND


def _plant_malformed_row(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO items (kind, priority, payload, created) VALUES ('data', 1, NULL, 0)"
        )
    conn.close()


async def main(directory: Path, rounds: int, take: int = TAKE_PER_ROUND) -> None:
    """Run the workload in *directory* for *rounds* rounds, acknowledging *take* a round."""
    clock = _Clock()
    path = directory / QUEUE_FILE
    number = 1
    async with UploadQueue(path, max_bytes=MAX_BYTES, clock=clock) as queue:
        for _ in range(rounds // 2):
            number = await _round(queue, clock, number, take)
    _plant_malformed_row(path)
    (directory / JUNK_FILE).write_bytes(JUNK)
    async with UploadQueue(directory / JUNK_FILE, recover_corrupt=True):
        pass
    async with UploadQueue(path, max_bytes=MAX_BYTES, clock=clock) as queue:
        for _ in range(rounds - rounds // 2):
            number = await _round(queue, clock, number, take)
    if os.environ.get("CHILD_REPORT_HITS"):
        for point in all_crashpoints():
            _say(f"hits {point.name} {point.hits}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), *map(int, sys.argv[2:4])))
