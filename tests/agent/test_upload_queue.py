"""UploadQueue: priorities, byte cap and eviction, TTL, the drop ledger, take/ack, bad data.

A model-based test compares the queue with a plain in-memory model over random operation
sequences; the crash tests run a writer in a child process and end it at every crash point
(and once with SIGKILL at a random moment), then check that nothing accepted was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent import crashpoints
from agent.crashpoints import all_crashpoints
from agent.upload_queue import (
    CP_BEFORE_COMMIT,
    DROP_REASONS,
    ROW_OVERHEAD,
    SCHEMA_VERSION,
    QueueError,
    QueueItem,
    StoredItem,
    UploadQueue,
)
from tests.agent import queue_crash_child as child

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(child.__file__)


class FakeClock:
    """Epoch seconds that a test sets by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def item(
    priority: int = 5,
    payload: bytes = b"x" * 100,
    *,
    kind: str = "telemetry",
    created: float = 1_000_000.0,
    expires: float | None = None,
) -> QueueItem:
    return QueueItem(kind, priority, payload, created, expires)


def tagged(tag: int, priority: int = 5, size: int = 100, **kw: object) -> QueueItem:
    """An item whose payload starts with *tag*, so tests can tell items apart."""
    payload = f"{tag:06d}".encode().ljust(size, b".")
    return item(priority, payload, **kw)  # type: ignore[arg-type]


def tags(items: Iterable[StoredItem]) -> list[int]:
    return [int(i.payload[:6]) for i in items]


async def take_all(queue: UploadQueue, **kw: object) -> list[StoredItem]:
    return await queue.take(1 << 40, **kw)  # type: ignore[arg-type]


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def cost(payload_size: int) -> int:
    return payload_size + ROW_OVERHEAD


# --- basics ------------------------------------------------------------------------------------


async def test_put_take_ack_round_trip_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with UploadQueue(path) as queue:
        await queue.put([tagged(1), tagged(2, expires=2e9)])
        taken = await take_all(queue)
        assert tags(taken) == [1, 2]
        assert taken[0].kind == "telemetry" and taken[0].priority == 5
        assert taken[0].created == 1_000_000.0 and taken[0].expires is None
        assert taken[1].expires == 2e9
        assert isinstance(taken[0], StoredItem) and taken[0].id < taken[1].id
    async with UploadQueue(path) as queue:
        again = await take_all(queue)
        assert again == taken  # take does not delete; the file keeps everything
        assert await queue.ack([taken[0].id]) == 1
        assert tags(await take_all(queue)) == [2]
    async with UploadQueue(path) as queue:
        assert tags(await take_all(queue)) == [2]


async def test_most_urgent_first_then_oldest(tmp_path: Path) -> None:
    async with UploadQueue(tmp_path / "q.db") as queue:
        await queue.put([tagged(1, 5), tagged(2, 9), tagged(3, 0)])
        await queue.put([tagged(4, 5), tagged(5, 0)])
        assert tags(await take_all(queue)) == [3, 5, 1, 4, 2]


async def test_take_stops_at_the_byte_budget_but_returns_at_least_one(tmp_path: Path) -> None:
    async with UploadQueue(tmp_path / "q.db") as queue:
        await queue.put([tagged(1, size=100), tagged(2, size=100), tagged(3, size=50)])
        assert tags(await queue.take(250)) == [1, 2, 3]
        assert tags(await queue.take(249)) == [1, 2]  # stops at the first that does not fit
        assert tags(await queue.take(200)) == [1, 2]
        assert tags(await queue.take(199)) == [1]
        assert tags(await queue.take(10)) == [1]  # larger than the budget, yet never wedged
        with pytest.raises(ValueError, match="positive"):
            await queue.take(0)


async def test_take_filters_kinds(tmp_path: Path) -> None:
    async with UploadQueue(tmp_path / "q.db") as queue:
        await queue.put([tagged(1, kind="events"), tagged(2), tagged(3, 0, kind="state")])
        assert tags(await take_all(queue, kinds={"telemetry", "events"})) == [1, 2]
        assert tags(await take_all(queue, kinds=["state"])) == [3]
        assert await take_all(queue, kinds=()) == []


async def test_items_taken_but_not_acknowledged_are_taken_again(tmp_path: Path) -> None:
    async with UploadQueue(tmp_path / "q.db") as queue:
        await queue.put([tagged(n) for n in range(5)])
        first = await queue.take(250)
        # the link drops before the broker acknowledges: nothing is deleted
        assert await queue.take(250) == first
        await queue.ack([first[0].id])
        assert tags(await queue.take(250)) == [1, 2]


async def test_ack_is_idempotent_and_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with UploadQueue(path) as queue:
        await queue.put([tagged(1), tagged(2)])
        taken = await take_all(queue)
        ids = [i.id for i in taken]
        assert await queue.ack(ids) == 2
        assert await queue.ack(ids) == 0  # a repeated acknowledgement changes nothing
        assert await queue.ack([]) == 0
        assert await queue.ack([10**6, -1, 2**70]) == 0  # unknown or impossible ids
        await queue.put([tagged(3)])
        newest = await take_all(queue)
    async with UploadQueue(path) as queue:
        await queue.put([tagged(4)])
        latest = await take_all(queue)
        # the highest id was deleted, yet later items get new ids: a late ack of an old id
        # can never delete a newer item
        assert min(i.id for i in latest) > max(ids)
        assert await queue.ack(ids) == 0
        assert tags(await take_all(queue)) == [3, 4]
        assert newest[0].id in {i.id for i in latest}
    assert queue.ledger == dict.fromkeys(DROP_REASONS, 0)


async def test_concurrent_puts_are_merged_into_few_transactions(tmp_path: Path) -> None:
    async with UploadQueue(tmp_path / "q.db") as queue:
        before = CP_BEFORE_COMMIT.hits
        await asyncio.gather(*(queue.put([tagged(n)]) for n in range(200)))
        commits = CP_BEFORE_COMMIT.hits - before
        assert len(await take_all(queue)) == 200
    assert 1 <= commits < 50, commits


async def test_put_take_ack_need_an_open_queue(tmp_path: Path) -> None:
    queue = UploadQueue(tmp_path / "q.db")
    with pytest.raises(QueueError, match="not open"):
        await queue.put([item()])
    async with queue:
        with pytest.raises(QueueError, match="already open"):
            await queue.open()
    with pytest.raises(QueueError, match="not open"):
        await queue.take(100)
    await queue.aclose()  # closing twice is harmless
    with pytest.raises(ValueError, match="overhead"):
        UploadQueue(tmp_path / "q.db", max_bytes=ROW_OVERHEAD)


# --- the byte cap ------------------------------------------------------------------------------


async def test_full_queue_evicts_least_urgent_then_oldest(tmp_path: Path) -> None:
    async with UploadQueue(tmp_path / "q.db", max_bytes=5 * cost(100)) as queue:
        await queue.put([tagged(1, 3), tagged(2, 7), tagged(3, 7), tagged(4, 1), tagged(5, 3)])
        assert queue.stats.bytes == 5 * cost(100)
        await queue.put([tagged(6, 5)])  # evicts the oldest priority-7 item
        assert tags(await take_all(queue)) == [4, 1, 5, 6, 3]
        await queue.put([tagged(7, 0), tagged(8, 0)])  # evicts 3 then 6
        assert tags(await take_all(queue)) == [7, 8, 4, 1, 5]
        assert queue.ledger["evicted"] == 3


async def test_an_item_less_urgent_than_everything_stored_is_the_one_dropped(
    tmp_path: Path,
) -> None:
    async with UploadQueue(tmp_path / "q.db", max_bytes=3 * cost(100)) as queue:
        await queue.put([tagged(1, 2), tagged(2, 4), tagged(3, 4)])
        await queue.put([tagged(4, 6)])
        assert tags(await take_all(queue)) == [1, 2, 3]
        # same priority as the least urgent stored: the older one goes instead
        await queue.put([tagged(5, 4)])
        assert tags(await take_all(queue)) == [1, 3, 5]
        assert queue.ledger["evicted"] == 2


async def test_nothing_more_urgent_is_evicted_for_an_item_that_cannot_fit(tmp_path: Path) -> None:
    async with UploadQueue(tmp_path / "q.db", max_bytes=3 * cost(100)) as queue:
        await queue.put([tagged(1, 1), tagged(2, 1), tagged(3, 8)])
        # room only if a priority-1 item went too: drop the incoming item, evict nothing
        await queue.put([tagged(4, 5, size=250)])
        assert tags(await take_all(queue)) == [1, 2, 3]
        # larger than the whole cap: dropped
        await queue.put([tagged(5, 0, size=3 * cost(100))])
        assert tags(await take_all(queue)) == [1, 2, 3]
        assert queue.ledger["evicted"] == 2


async def test_items_of_one_batch_evict_each_other_oldest_first(tmp_path: Path) -> None:
    async with UploadQueue(tmp_path / "q.db", max_bytes=3 * cost(100)) as queue:
        await queue.put([tagged(n, 9) for n in range(10)])
        assert tags(await take_all(queue)) == [7, 8, 9]
        await queue.put([tagged(10, 9), tagged(11, 0), tagged(12, 9)])
        assert tags(await take_all(queue)) == [11, 10, 12]
        assert queue.ledger["evicted"] == 7 + 3
        assert queue.stats.items == 3


async def test_reopening_with_a_smaller_cap_evicts_down_to_it(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with UploadQueue(path) as queue:
        await queue.put([tagged(n, n % 3) for n in range(9)])
    async with UploadQueue(path, max_bytes=4 * cost(100)) as queue:
        assert tags(await take_all(queue)) == [0, 3, 6, 7]  # 1 and 4 were older than 7
        assert queue.ledger["evicted"] == 5
        assert queue.stats.bytes == 4 * cost(100)


# --- time to live ------------------------------------------------------------------------------


async def test_expired_items_are_never_returned_and_are_counted(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    async with UploadQueue(tmp_path / "q.db", clock=clock) as queue:
        await queue.put(
            [tagged(1, expires=1010.0), tagged(2, expires=1020.0), tagged(3), tagged(4, 0)]
        )
        await queue.put([tagged(5, expires=999.0)])  # already expired: counted, not stored
        assert queue.ledger["expired"] == 1
        assert tags(await take_all(queue)) == [4, 1, 2, 3]
        clock.now = 1010.0
        assert tags(await take_all(queue)) == [4, 1, 2, 3]  # expires == now is still valid
        clock.now = 1015.0
        assert tags(await take_all(queue)) == [4, 2, 3]
        assert queue.ledger["expired"] == 2
        assert queue.stats.items == 3
        clock.now = 5000.0
        await queue.put([tagged(6)])  # puts purge too
        assert queue.ledger["expired"] == 3
        assert queue.stats.items == 3


async def test_a_clock_stepped_back_does_not_revive_or_prolong_items(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    async with UploadQueue(tmp_path / "q.db", clock=clock) as queue:
        await queue.put([tagged(1, expires=1500.0), tagged(2, expires=3000.0)])
        clock.now = 2000.0
        assert tags(await take_all(queue)) == [2]
        clock.now = 1000.0  # stepped back (e.g. a bad GNSS fix corrected)
        await queue.put([tagged(3, expires=1800.0)])  # would look alive to the wall clock
        assert tags(await take_all(queue)) == [2]
        assert queue.ledger["expired"] == 2
        clock.now = 2500.0
        assert tags(await take_all(queue)) == [2]


async def test_stats_report_items_bytes_and_oldest_age(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    async with UploadQueue(tmp_path / "q.db", max_bytes=10_000, clock=clock) as queue:
        stats = queue.stats
        assert (stats.items, stats.bytes, stats.oldest_age, stats.max_bytes) == (0, 0, None, 10_000)
        await queue.put([tagged(1, size=100, created=990.0), tagged(2, size=50, created=995.0)])
        clock.now = 1100.0
        stats = queue.stats
        assert (stats.items, stats.payload_bytes) == (2, 150)
        assert stats.bytes == 150 + 2 * ROW_OVERHEAD
        assert stats.oldest_age is not None and 110.0 <= stats.oldest_age < 111.0


# --- the ledger --------------------------------------------------------------------------------


async def test_the_ledger_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    clock = FakeClock(1000.0)
    async with UploadQueue(path, max_bytes=2 * cost(100), clock=clock) as queue:
        assert queue.ledger == {"evicted": 0, "expired": 0, "malformed": 0}
        await queue.put([tagged(n) for n in range(4)])
        await queue.put([tagged(9, expires=10.0), item(payload=None)])  # type: ignore[arg-type]
        ledger = dict(queue.ledger)
    assert ledger == {"evicted": 2, "expired": 1, "malformed": 1}
    async with UploadQueue(path, max_bytes=2 * cost(100), clock=clock) as queue:
        assert queue.ledger == ledger
        await queue.put([tagged(10)])
        assert queue.ledger["evicted"] == 3
    assert queue.ledger["evicted"] == 3  # still readable after closing


# --- bad data ----------------------------------------------------------------------------------


async def test_malformed_items_handed_to_put_are_counted_not_fatal(tmp_path: Path) -> None:
    bad: list[object] = [
        item(payload="text"),  # type: ignore[arg-type]
        item(priority=10),
        item(priority=-1),
        item(priority=True),
        item(kind=""),
        item(kind="k" * 65),
        item(created=float("nan")),
        item(expires=float("nan")),
        ("too", "short"),
        None,
    ]
    async with UploadQueue(tmp_path / "q.db") as queue:
        await queue.put([tagged(1), *bad, tagged(2)])  # type: ignore[list-item]
        await queue.put([item(payload=bytearray(b"abc"))])  # type: ignore[arg-type]
        assert tags((await take_all(queue))[:2]) == [1, 2]
        assert queue.ledger["malformed"] == len(bad)
        assert queue.stats.items == 3


async def test_malformed_rows_are_removed_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with UploadQueue(path) as queue:
        await queue.put([tagged(1), tagged(2)])
    rows = [
        ("telemetry", 5, None, 1.0, None),  # a NULL payload (an older version)
        ("", 5, b"x", 1.0, None),  # empty kind
        (None, 5, b"x", 1.0, None),
        (b"blob-kind", 5, b"x", 1.0, None),
        ("telemetry", 12, b"x", 1.0, None),
        ("telemetry", "high", b"x", 1.0, None),
        ("telemetry", 5, "text payload", 1.0, None),
        ("telemetry", 5, b"x", "yesterday", None),
        ("telemetry", 5, b"x", 1.0, "never"),
    ]
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO items (kind, priority, payload, created, expires) VALUES (?,?,?,?,?)",
            rows,
        )
    async with UploadQueue(path) as queue:
        assert tags(await take_all(queue)) == [1, 2]
        assert queue.ledger["malformed"] == len(rows)
        assert queue.stats.items == 2
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 2


async def test_a_file_that_is_not_sqlite_is_a_clear_error_and_is_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "queue.db"
    junk = b"\x00garbage, not a database" * 100
    path.write_bytes(junk)
    with pytest.raises(QueueError, match=r"queue\.db is not a valid SQLite database"):
        async with UploadQueue(path):
            pass
    assert path.read_bytes() == junk
    assert _listing(tmp_path) == ["queue.db"]


async def test_recover_corrupt_keeps_the_old_file_and_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    junk = b"garbage" * 1000
    path.write_bytes(junk)
    async with UploadQueue(path, recover_corrupt=True) as queue:
        assert queue.stats.items == 0
        await queue.put([tagged(1)])
    asides = [name for name in _listing(tmp_path) if name.startswith("queue.db.corrupt-")]
    assert len(asides) == 1 and (tmp_path / asides[0]).read_bytes() == junk
    async with UploadQueue(path) as queue:
        assert tags(await take_all(queue)) == [1]


async def test_an_sqlite_file_that_is_not_a_queue_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(QueueError, match="not an upload queue"):
        async with UploadQueue(path, recover_corrupt=True):
            pass
    assert _listing(tmp_path) == ["other.db"]  # never moved aside


async def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with UploadQueue(path):
        pass
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(QueueError, match="newer"):
        async with UploadQueue(path):
            pass


async def test_a_second_owner_of_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    async with UploadQueue(path) as queue:
        await queue.put([tagged(1)])
        with pytest.raises(QueueError, match="in use by another process"):
            async with UploadQueue(path, recover_corrupt=True):
                pass
        assert tags(await take_all(queue)) == [1]


async def test_an_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(QueueError, match=r"file/q\.db"):
        async with UploadQueue(blocker / "q.db"):
            pass


# --- model-based test ----------------------------------------------------------------------------


@dataclass
class _ModelItem:
    uid: int
    kind: str
    priority: int
    size: int
    expires: float | None


class _Model:
    """The queue's rules, written as plainly as possible."""

    def __init__(self, cap: int, now: float) -> None:
        self.cap = cap
        self.items: list[_ModelItem] = []
        self.ledger: Counter[str] = Counter(dict.fromkeys(DROP_REASONS, 0))
        self.wall = now
        self.high = now

    def now(self) -> float:
        # the queue's clock never runs backwards while open
        self.high = max(self.high, self.wall)
        return self.high

    def accounted(self) -> int:
        return sum(i.size + ROW_OVERHEAD for i in self.items)

    def purge(self, now: float) -> None:
        gone = [i for i in self.items if i.expires is not None and i.expires < now]
        self.items = [i for i in self.items if i not in gone]
        self.ledger["expired"] += len(gone)

    def evict_order(self, at_least: int) -> list[_ModelItem]:
        return sorted(
            (i for i in self.items if i.priority >= at_least), key=lambda i: (-i.priority, i.uid)
        )

    def put(self, batch: Sequence[_ModelItem]) -> None:
        if not batch:
            return  # an empty put does not reach the queue's writer at all
        now = self.now()
        self.purge(now)
        for new in batch:
            if new.expires is not None and new.expires < now:
                self.ledger["expired"] += 1
                continue
            need = new.size + ROW_OVERHEAD
            free = self.cap - self.accounted()
            victims = self.evict_order(new.priority)
            if need > free + sum(v.size + ROW_OVERHEAD for v in victims):
                self.ledger["evicted"] += 1
                continue
            for victim in victims:
                if need <= free:
                    break
                self.items.remove(victim)
                free += victim.size + ROW_OVERHEAD
                self.ledger["evicted"] += 1
            self.items.append(new)

    def take(self, budget: int, kinds: frozenset[str] | None) -> list[int]:
        self.purge(self.now())
        out: list[int] = []
        used = 0
        for i in sorted(self.items, key=lambda i: (i.priority, i.uid)):
            if kinds is not None and i.kind not in kinds:
                continue
            if out and used + i.size > budget:
                break
            out.append(i.uid)
            used += i.size
            if used >= budget:
                break
        return out

    def ack(self, uids: set[int]) -> int:
        before = len(self.items)
        self.items = [i for i in self.items if i.uid not in uids]
        return before - len(self.items)

    def reopen(self, cap: int) -> None:
        self.cap = cap
        self.high = self.wall
        while self.accounted() > cap:
            self.items.remove(self.evict_order(0)[0])
            self.ledger["evicted"] += 1


_item_specs = st.tuples(
    st.sampled_from(["a", "b"]),
    st.integers(0, 9),
    st.integers(8, 400),
    st.one_of(st.none(), st.integers(-1, 3)),  # expiry in clock steps from now (-1: expired)
)
_STEP = 100.0  # clock steps; expiries sit halfway between, far from the monotonic guard's drift


class QueueMachine(RuleBasedStateMachine):
    """Random put/take/ack/clock/reopen sequences: the queue must agree with the model."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="queue-model-"))
        self.clock = FakeClock(1_000_000.0)
        self.cap = 3000
        self.model = _Model(self.cap, self.clock.now)
        self.runner = asyncio.Runner()
        self.queue = self._open()
        self.next_uid = 1
        self.known_ids: dict[int, int] = {}  # queue id -> model uid

    def _open(self) -> UploadQueue:
        queue = UploadQueue(self.dir / "q.db", max_bytes=self.cap, clock=self.clock)
        self.runner.run(queue.open())
        return queue

    @rule(specs=st.lists(_item_specs, max_size=12))
    def put(self, specs: list[tuple[str, int, int, int | None]]) -> None:
        batch: list[_ModelItem] = []
        items: list[QueueItem] = []
        for kind, priority, size, steps in specs:
            expires = None if steps is None else self.clock.now + steps * _STEP + _STEP / 2
            uid = self.next_uid
            self.next_uid += 1
            batch.append(_ModelItem(uid, kind, priority, size, expires))
            payload = struct.pack(">Q", uid).ljust(size, b"-")
            items.append(QueueItem(kind, priority, payload, self.clock.now, expires))
        self.model.put(batch)
        self.runner.run(self.queue.put(items))

    @rule(
        budget=st.integers(1, 2000),
        kinds=st.sampled_from([None, frozenset("a"), frozenset("b"), frozenset("ab")]),
    )
    def take(self, budget: int, kinds: frozenset[str] | None) -> None:
        expected = self.model.take(budget, kinds)
        taken = self.runner.run(self.queue.take(budget, kinds=kinds))
        uids = [struct.unpack(">Q", i.payload[:8])[0] for i in taken]
        assert uids == expected
        self.known_ids.update(zip([i.id for i in taken], uids, strict=True))

    @precondition(lambda self: bool(self.known_ids))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.known_ids)), max_size=20))
        ids += data.draw(st.lists(st.integers(10**6, 10**7), max_size=2))  # never stored
        expected = self.model.ack({self.known_ids[i] for i in ids if i in self.known_ids})
        assert self.runner.run(self.queue.ack(ids)) == expected

    @rule(steps=st.integers(-3, 3))
    def move_clock(self, steps: int) -> None:
        self.clock.now += steps * _STEP
        self.model.wall = self.clock.now

    @rule(cap=st.sampled_from([1500, 3000, 6000]))
    def reopen(self, cap: int) -> None:
        self.runner.run(self.queue.aclose())
        self.cap = cap
        self.model.reopen(cap)
        self.queue = self._open()

    @invariant()
    def agrees_with_the_model(self) -> None:
        stats = self.queue.stats
        assert stats.items == len(self.model.items)
        assert stats.bytes == self.model.accounted() <= self.cap
        assert dict(self.queue.ledger) == dict(self.model.ledger)

    def teardown(self) -> None:
        import shutil

        self.runner.run(self.queue.aclose())
        self.runner.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestQueueAgainstModel = QueueMachine.TestCase
TestQueueAgainstModel.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- crash tests -------------------------------------------------------------------------------

QUEUE_POINTS = [p.name for p in all_crashpoints() if p.name.startswith("queue.")]
CRASH_ROUNDS = 24


def _run_child(directory: Path, rounds: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHILD), str(directory), str(rounds)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )


def _child_claims(stdout: str) -> tuple[int, set[int], set[int]]:
    """(highest data record whose put returned, data records sent for acknowledgement, data
    records whose ack returned)."""
    accepted = 0
    sent: set[int] = set()
    acked: set[int] = set()
    for line in stdout.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # a line cut by the crash was not reported
        word, *numbers = line.split()
        if word == "put":
            accepted = max(accepted, int(numbers[0]))
        elif word == "sent":
            sent.update(map(int, numbers))
        elif word == "ack":
            acked.update(map(int, numbers))
    return accepted, sent, acked


async def _check_nothing_accepted_was_lost(directory: Path, stdout: str) -> None:
    accepted, sent, acked = _child_claims(stdout)
    path = directory / child.QUEUE_FILE
    if path.exists():
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    async with UploadQueue(path, max_bytes=child.MAX_BYTES) as queue:
        everything = await take_all(queue)
        data = [child.data_number(i.payload) for i in everything if i.kind == "data"]
        copies = Counter(data)
        assert not [n for n, c in copies.items() if c > 1], "a record is stored twice"
        # records sent but whose ack had not returned may be there or not; all others must be
        lost = set(range(1, accepted + 1)) - sent - set(copies)
        assert not lost, f"accepted records lost: {sorted(lost)[:10]}"
        assert not set(copies) & acked, "an acknowledged record came back"
        assert max(copies, default=0) <= accepted + child.DATA_PER_ROUND
        stats = queue.stats
        assert stats.items == len(everything)
        assert stats.payload_bytes == sum(len(i.payload) for i in everything)
        assert stats.bytes <= child.MAX_BYTES
        assert all(n >= 0 for n in queue.ledger.values())
        await queue.put([QueueItem("data", 1, b"after the crash", 0.0)])  # still usable
        assert await queue.take(1 << 20, kinds={"data"})


@pytest.fixture(scope="module")
def baseline_hits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    directory = tmp_path_factory.mktemp("baseline")
    run = _run_child(directory, CRASH_ROUNDS, CHILD_REPORT_HITS="1")
    assert run.returncode == 0, run.stderr
    hits = {}
    for line in run.stdout.splitlines():
        if line.startswith("hits "):
            _, name, n = line.split()
            hits[name] = int(n)
    asyncio.run(_check_nothing_accepted_was_lost(directory, run.stdout))
    return hits


def test_the_crash_workload_reaches_every_queue_crash_point(
    baseline_hits: dict[str, int],
) -> None:
    assert QUEUE_POINTS, "no queue crash points declared"
    unreached = [name for name in QUEUE_POINTS if baseline_hits.get(name, 0) == 0]
    assert not unreached, f"extend tests/agent/queue_crash_child.py to reach {unreached}"


@pytest.mark.slow
@pytest.mark.parametrize("name", QUEUE_POINTS)
def test_no_crash_point_loses_an_accepted_record(
    name: str, baseline_hits: dict[str, int], tmp_path: Path
) -> None:
    hits = baseline_hits.get(name, 0)
    if hits == 0:
        pytest.fail(f"the crash workload never reaches {name}")
    for n in sorted({1, max(1, hits // 2), hits}):  # its first, a middle and its last arrival
        directory = tmp_path / f"at-{n}"
        directory.mkdir()
        run = _run_child(directory, CRASH_ROUNDS, TBOX_CRASHPOINT=f"{name}:{n}")
        assert run.returncode == crashpoints.EXIT_STATUS, (n, run.returncode, run.stderr)
        assert f"crash point {name} reached {n}" in run.stderr
        asyncio.run(_check_nothing_accepted_was_lost(directory, run.stdout))
        # the corrupt file moved aside is never lost either
        junk = [p for p in directory.iterdir() if p.name.startswith(child.JUNK_FILE)]
        if junk:
            assert any(p.read_bytes() == child.JUNK for p in junk), [p.name for p in junk]


@pytest.mark.slow
def test_sigkill_at_a_random_moment_loses_no_accepted_record(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    stop_after = rng.randrange(5, 300)  # "put" lines seen before the kill
    # far more rounds than it can finish; acknowledging 20 a round keeps the data level
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(tmp_path), "1000000", str(child.DATA_PER_ROUND)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    puts = 0
    for line in proc.stdout:
        lines.append(line)
        puts += line.startswith("put ")
        if puts >= stop_after:
            proc.send_signal(signal.SIGKILL)
            break
    lines += proc.stdout.readlines()  # whatever it wrote before the signal landed
    assert proc.wait(timeout=30) == -signal.SIGKILL, f"the child finished first (seed {seed})"
    try:
        asyncio.run(_check_nothing_accepted_was_lost(tmp_path, "".join(lines)))
    except AssertionError as e:
        raise AssertionError(f"seed {seed}, killed after {stop_after} puts: {e}") from e
