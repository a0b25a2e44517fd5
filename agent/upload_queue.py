"""The persistent upload queue: records wait here, durably, until the broker acknowledges them.

:class:`UploadQueue` is one SQLite file in WAL mode, owned by one process (an exclusive lock: a
second agent on the same file gets a :class:`QueueError`) and driven by one dedicated writer
thread, so the event loop never blocks on SQLite or on an fsync.

Guarantees
    * **Durable puts.** ``await put(items)`` returns only after the items are committed with
      ``synchronous=FULL``: they survive a power cut, not just a process crash. Concurrent puts
      from many producers are merged by the writer thread into one transaction (group commit),
      so an fsync (~0.2 ms here, far more on a car's eMMC) is paid per batch, not per record.
    * **Bounded in bytes.** Each item costs ``len(payload) + ROW_OVERHEAD`` bytes against
      ``max_bytes``. When an item does not fit, stored items are evicted lowest priority first
      (numerically highest), oldest first, but never one more urgent than the incoming item: if
      evicting every item of equal or lower priority would not make room, the incoming item is
      the one dropped. "Oldest" means accepted first (row id order), which no clock can disturb.
      A cap lowered between runs is applied when the file is opened.
    * **Strict time-to-live.** An item whose ``expires`` is before the queue's clock is never
      returned by :meth:`~UploadQueue.take`; puts and takes purge expired items. The queue's clock
      is the wall clock, except that it never runs backwards: it is ``max(wall clock, highest
      wall-clock reading so far + monotonic time since)``. A clock stepped forward therefore
      expires items early (counted); a clock stepped back does not revive or prolong anything.
      The high-water mark lives in memory, so a bogus forward jump is forgotten at restart.
    * **Delivery deletes only what was acknowledged.** :meth:`~UploadQueue.take` is a peek (most
      urgent first, oldest first, up to a byte budget); :meth:`~UploadQueue.ack` deletes, and is
      idempotent because row ids are never reused (``AUTOINCREMENT``). Items taken and never
      acknowledged (the link dropped) are simply taken again; a consumer that keeps several
      batches in flight skips the ids it already holds.
    * **Drop ledger.** Every item that leaves other than by delivery is counted by reason —
      ``evicted``, ``expired``, ``malformed`` — in the same database and the same transaction
      as the deletion, so the counts survive restarts and never disagree with the data.
    * **Never crashes on bad rows.** Rows that a different version, a bug or bit rot left
      malformed (NULL payload, bad kind, priority out of range…) are deleted and counted as
      ``malformed``. Items handed to :meth:`~UploadQueue.put` that are malformed are counted the
      same way instead of failing the whole batch.
    * **Corrupt file.** A file that is not a valid SQLite database raises :class:`QueueError`
      naming it. With ``recover_corrupt=True`` (meant for the running agent: a vehicle must
      keep recording) the file and its ``-wal`` are instead renamed to
      ``<name>.corrupt-<UTC time>`` — kept, never deleted, for ``sqlite3 <file> .recover`` —
      an error is logged and the queue starts empty. A valid SQLite file that is not a queue,
      or a queue of a newer schema version, is never moved: it is a :class:`QueueError`.

Every persistence step calls a named crash point (contract C6, :mod:`agent.crashpoints`).
The schema carries a version number (table ``schema_version``) for future migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from agent import crashpoints
from agent.durable_file import fsync_dir
from agent.errors import TboxError

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
#: Bytes charged per stored item on top of its payload: the row's other columns, its two index
#: entries and page slack. Measured ~53 bytes per 200-byte record on SQLite 3.40; rounded up.
ROW_OVERHEAD: Final = 64
#: Kinds name a stream (telemetry, events, ota/status…), not data; longer text is malformed.
MAX_KIND_LENGTH: Final = 64
LOWEST_PRIORITY: Final = 9
DROP_REASONS: Final = ("evicted", "expired", "malformed")
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024

_PRIORITIES = range(LOWEST_PRIORITY + 1)
_LOCK_WAIT_S = 1.0  # another process holding the file: fail fast with a clear error
_MAX_ROWID = 2**63
_ID_CHUNK = 500  # ids per "IN (…)" statement, well under SQLite's variable limit
_JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024  # a burst may grow the WAL; shrink it back after

CP_CREATE = crashpoints.declare(
    "queue.before_create_commit", "a new queue file's schema is written but not committed"
)
CP_MOVED_ASIDE = crashpoints.declare(
    "queue.after_move_aside",
    "a corrupt queue file was renamed to <name>.corrupt-<time>; the new file is not created yet",
)
CP_AFTER_EVICT = crashpoints.declare(
    "queue.after_evict",
    "a put deleted stored items to make room, inside its transaction, before inserting its own",
)
CP_BEFORE_COMMIT = crashpoints.declare(
    "queue.before_commit",
    "a put's items, evictions and ledger counts are written but not committed",
)
CP_AFTER_COMMIT = crashpoints.declare(
    "queue.after_commit", "a put is committed durably; its callers have not been told yet"
)
CP_BEFORE_ACK = crashpoints.declare(
    "queue.before_ack_commit", "acknowledged items are deleted but the deletion is not committed"
)
CP_AFTER_ACK = crashpoints.declare(
    "queue.after_ack_commit", "an ack's deletion is committed; its caller has not been told yet"
)
CP_BEFORE_PURGE = crashpoints.declare(
    "queue.before_purge_commit",
    "expired, malformed or over-cap items are deleted outside a put and counted, not committed",
)
CP_AFTER_PURGE = crashpoints.declare(
    "queue.after_purge_commit", "a purge of expired, malformed or over-cap items is committed"
)

_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION})",
    # No NOT NULL or CHECK constraints on purpose: a row another version wrote (or bit rot) must
    # be readable so that it can be counted as malformed, not make the whole file unreadable.
    # AUTOINCREMENT: ids are never reused, so a late or repeated ack cannot hit a newer item.
    """CREATE TABLE items (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT,
        priority INTEGER,
        payload BLOB,
        created REAL,
        expires REAL
    )""",
    # (priority, rowid): delivery order and eviction order are both index scans.
    "CREATE INDEX items_by_priority ON items (priority)",
    "CREATE INDEX items_by_expiry ON items (expires) WHERE expires IS NOT NULL",
    "CREATE TABLE ledger (reason TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID",
    *(f"INSERT INTO ledger (reason, count) VALUES ('{r}', 0)" for r in DROP_REASONS),
)

_VALID_ROW_SQL = f"""
    typeof(kind) = 'text' AND length(kind) BETWEEN 1 AND {MAX_KIND_LENGTH}
    AND typeof(priority) = 'integer' AND priority BETWEEN 0 AND {LOWEST_PRIORITY}
    AND typeof(payload) = 'blob'
    AND typeof(created) IN ('integer', 'real')
    AND (expires IS NULL OR typeof(expires) IN ('integer', 'real'))
"""
_INSERT = "INSERT INTO items (kind, priority, payload, created, expires) VALUES (?, ?, ?, ?, ?)"
_COUNT_DROPS = (
    "INSERT INTO ledger (reason, count) VALUES (?, ?) "
    "ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count"
)


class QueueError(TboxError):
    """The upload queue's file cannot be used (corrupt, locked, unwritable) or is closed."""


class QueueItem(NamedTuple):
    """One record to upload.

    ``priority`` 0 is the most urgent, 9 the least; ``created`` and ``expires`` are epoch seconds
    (``expires`` ``None``: kept until delivered or evicted). A named tuple, not a dataclass:
    producers make one per record, and a tuple is built several times faster.
    """

    kind: str
    priority: int
    payload: bytes
    created: float
    expires: float | None = None


class StoredItem(NamedTuple):
    """An item as :meth:`UploadQueue.take` returns it; :meth:`~UploadQueue.ack` takes ``id``."""

    id: int
    kind: str
    priority: int
    payload: bytes
    created: float
    expires: float | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot: stored items, their accounted bytes (payload + ``ROW_OVERHEAD`` each) and
    payload bytes, the cap, and the age in seconds of the item queued first (``None``: empty)."""

    items: int
    bytes: int
    payload_bytes: int
    max_bytes: int
    oldest_age: float | None


Row = tuple[str, int, bytes, float, float | None]


class _QueueClock:
    """The wall clock, prevented from running backwards (see the module docstring)."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall
        # (highest wall-clock reading, monotonic time of that reading); the writer thread reads
        # the clock at each put and take, nobody else.
        self._high = (wall(), time.monotonic())

    def now(self) -> float:
        wall = self._wall()
        mono = time.monotonic()
        high, high_at = self._high
        floor = high + (mono - high_at)
        if wall >= floor:
            self._high = (wall, mono)
            return wall
        return floor


class _Tally:
    """Stored items and payload bytes per priority, kept by the writer thread.

    Knowing what each priority could free makes "can this item fit?" an O(10) question, so a put
    that cannot fit evicts nothing.
    """

    __slots__ = ("counts", "sizes")

    def __init__(self) -> None:
        self.counts = [0] * len(_PRIORITIES)
        self.sizes = [0] * len(_PRIORITIES)

    def copy(self) -> _Tally:
        other = _Tally()
        other.counts = self.counts.copy()
        other.sizes = self.sizes.copy()
        return other

    @property
    def items(self) -> int:
        return sum(self.counts)

    @property
    def payload(self) -> int:
        return sum(self.sizes)

    def accounted(self, priority: int) -> int:
        return self.sizes[priority] + self.counts[priority] * ROW_OVERHEAD


@dataclass(frozen=True, slots=True)
class _Snapshot:
    items: int
    payload_bytes: int
    oldest_created: float | None
    ledger: Mapping[str, int]


_NUMBER = (float, int)


def _valid_row(item: Any) -> Row | None:
    """The row for *item*, or None if it is malformed. Runs per item on the hot path."""
    try:
        kind, priority, payload, created, expires = item
    except Exception:  # not an item at all: malformed
        return None
    if type(payload) is not bytes:
        if not isinstance(payload, bytes | bytearray | memoryview):
            return None
        payload = bytes(payload)
    if (
        type(kind) is not str
        or not 0 < len(kind) <= MAX_KIND_LENGTH
        or type(priority) is not int
        or not 0 <= priority <= LOWEST_PRIORITY
        or type(created) not in _NUMBER
        or not math.isfinite(created)
        or (expires is not None and (type(expires) not in _NUMBER or math.isnan(expires)))
    ):
        return None
    return (kind, priority, payload, created, expires)


def _is_stored_item(row: tuple[Any, ...]) -> bool:
    """Whether an ``items`` row (id first) is well formed; the same rules as ``_VALID_ROW_SQL``."""
    _, kind, priority, payload, created, expires = row
    return not (
        type(payload) is not bytes
        or type(kind) is not str
        or not 0 < len(kind) <= MAX_KIND_LENGTH
        or type(priority) is not int
        or not 0 <= priority <= LOWEST_PRIORITY
        or type(created) not in _NUMBER
        or (expires is not None and type(expires) not in _NUMBER)
    )


# StoredItem from a row tuple without the keyword-parsing constructor (take's per-item cost).
_new_stored_item = tuple.__new__


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _ID_CHUNK):
        yield ids[start : start + _ID_CHUNK]


def _is_corrupt(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


def _is_locked(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Store:
    """The SQLite side: every method runs in the writer thread and owns the connection."""

    def __init__(
        self, path: Path, max_bytes: int, recover_corrupt: bool, clock: _QueueClock
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._recover = recover_corrupt
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self.tally = _Tally()
        self.ledger = dict.fromkeys(DROP_REASONS, 0)
        self.snapshot = _Snapshot(0, 0, None, MappingProxyType(dict(self.ledger)))

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise QueueError(f"upload queue {self.path} is closed")
        return self._conn

    # --- opening ----------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QueueError(f"cannot create the directory of upload queue {self.path}: {e}") from e
        try:
            self._open_file()
        except BaseException as e:
            self._drop_connection()
            if not isinstance(e, sqlite3.Error):
                raise
            if _is_locked(e):
                raise QueueError(
                    f"upload queue {self.path} is in use by another process ({e})"
                ) from e
            if not _is_corrupt(e):
                raise QueueError(f"cannot open upload queue {self.path}: {e}") from e
            if not self._recover:
                raise QueueError(
                    f"upload queue {self.path} is not a valid SQLite database ({e}); move it "
                    "aside (the agent does so itself with recover_corrupt) to start empty"
                ) from e
            aside = self._move_aside()
            log.error(
                "upload queue %s was corrupt (%s): kept as %s, starting empty", self.path, e, aside
            )
            try:
                self._open_file()
            except BaseException as e2:
                self._drop_connection()
                if isinstance(e2, sqlite3.Error):
                    raise QueueError(f"cannot create upload queue {self.path}: {e2}") from e2
                raise

    def _open_file(self) -> None:
        conn = sqlite3.connect(
            self.path, timeout=_LOCK_WAIT_S, isolation_level=None, check_same_thread=True
        )
        self._conn = conn
        # EXCLUSIVE before WAL: no shared-memory index, and a second process is locked out
        # (the writer's in-memory tally assumes it is the only writer).
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise QueueError(f"upload queue {self.path}: cannot use WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                name
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            created = not tables
            if created:
                for statement in _SCHEMA:
                    conn.execute(statement)
                CP_CREATE.hit()
            else:
                self._check_version(tables)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if created:
            fsync_dir(self.path.parent)
        self.ledger = {
            **dict.fromkeys(DROP_REASONS, 0),
            **dict(conn.execute("SELECT reason, count FROM ledger")),
        }
        self._remove_malformed_rows()
        self._recount()
        self._trim_to_cap()
        self._publish()

    def _check_version(self, tables: set[str]) -> None:
        if not {"schema_version", "items", "ledger"} <= tables:
            raise QueueError(
                f"{self.path} is an SQLite database but not an upload queue "
                f"(tables: {', '.join(sorted(tables))})"
            )
        row = self.conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] if row else None
        if not isinstance(version, int):
            raise QueueError(f"upload queue {self.path} has no schema version")
        if version > SCHEMA_VERSION:
            raise QueueError(
                f"upload queue {self.path} has schema version {version}, newer than this "
                f"agent's {SCHEMA_VERSION}: it was written by a newer agent"
            )
        # Migrations from older versions go here, one step per version, in this transaction.

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            # The -wal goes first and keeps its suffix, so `sqlite3 <aside>` still finds it;
            # the -shm is a cache that SQLite rebuilds.
            for suffix in ("-wal", ""):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    source.rename(f"{aside}{suffix}")
            Path(f"{self.path}-shm").unlink(missing_ok=True)
            fsync_dir(self.path.parent)
        except OSError as e:
            raise QueueError(f"cannot move corrupt upload queue {self.path} aside: {e}") from e
        CP_MOVED_ASIDE.hit()
        return aside

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # checkpoints the WAL into the main file

    # --- bookkeeping ------------------------------------------------------------------------

    def _recount(self) -> None:
        tally = _Tally()
        query = "SELECT priority, count(*), total(length(payload)) FROM items GROUP BY priority"
        for priority, count, size in self.conn.execute(query):
            tally.counts[priority] = count
            tally.sizes[priority] = int(size)
        self.tally = tally

    def _publish(self) -> None:
        row = self.conn.execute("SELECT created FROM items ORDER BY id LIMIT 1").fetchone()
        self.snapshot = _Snapshot(
            items=self.tally.items,
            payload_bytes=self.tally.payload,
            oldest_created=row[0] if row else None,
            ledger=MappingProxyType(dict(self.ledger)),
        )

    def _count_drops(self, drops: Mapping[str, int]) -> None:
        self.conn.executemany(_COUNT_DROPS, [(r, n) for r, n in drops.items() if n])

    def _commit(self, before: crashpoints.CrashPoint, after: crashpoints.CrashPoint) -> None:
        before.hit()
        self.conn.execute("COMMIT")
        after.hit()

    def rollback(self) -> None:
        """Undo an interrupted transaction and re-read what the file holds."""
        conn = self._conn
        if conn is None:
            return
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        self.ledger = {
            **dict.fromkeys(DROP_REASONS, 0),
            **dict(conn.execute("SELECT reason, count FROM ledger")),
        }
        self._recount()
        self._publish()

    def _delete_expired(self, now: float, tally: _Tally) -> int:
        """Delete expired items inside the open transaction; return how many."""
        rows = self.conn.execute(
            "DELETE FROM items WHERE expires < ? RETURNING priority, length(payload)", (now,)
        ).fetchall()
        for priority, size in rows:
            tally.counts[priority] -= 1
            tally.sizes[priority] -= size
        return len(rows)

    def _trim_to_cap(self) -> None:
        """Evict (lowest priority, oldest first) until the items fit a cap lowered since."""
        conn = self.conn
        tally = self.tally.copy()
        excess = sum(tally.accounted(p) for p in _PRIORITIES) - self.max_bytes
        if excess <= 0:
            return
        victims: list[int] = []
        query = "SELECT id, length(payload) FROM items WHERE priority = ? ORDER BY id"
        for priority in reversed(_PRIORITIES):
            if excess <= 0:
                break
            with contextlib.closing(conn.execute(query, (priority,))) as cursor:
                for victim_id, size in cursor:
                    if excess <= 0:
                        break
                    victims.append(victim_id)
                    tally.counts[priority] -= 1
                    tally.sizes[priority] -= size
                    excess -= size + ROW_OVERHEAD
        log.warning(
            "upload queue %s: evicting %d items to fit max_bytes=%d",
            self.path,
            len(victims),
            self.max_bytes,
        )
        conn.execute("BEGIN IMMEDIATE")
        for chunk in _chunks(victims):
            conn.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        CP_AFTER_EVICT.hit()
        self._count_drops({"evicted": len(victims)})
        self._commit(CP_BEFORE_PURGE, CP_AFTER_PURGE)
        self.tally = tally
        self.ledger["evicted"] += len(victims)

    def _remove_malformed_rows(self) -> None:
        conn = self.conn
        ids = [i for (i,) in conn.execute(f"SELECT id FROM items WHERE NOT ({_VALID_ROW_SQL})")]
        if ids:
            log.warning("upload queue %s: removing %d malformed rows", self.path, len(ids))
            self._purge_malformed(ids)

    def _purge_malformed(self, ids: Sequence[int]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        for chunk in _chunks(ids):
            conn.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        self._count_drops({"malformed": len(ids)})
        self._commit(CP_BEFORE_PURGE, CP_AFTER_PURGE)
        self.ledger["malformed"] += len(ids)
        self._recount()  # the rows' priorities were not trustworthy

    # --- operations -------------------------------------------------------------------------

    def put(self, batches: Sequence[Sequence[Any]]) -> None:
        """Store every item of *batches* in one transaction (group commit)."""
        now = self._clock.now()
        rows: list[Row] = []
        malformed = expired = 0
        for batch in batches:
            for item in batch:
                row = _valid_row(item)
                if row is None:
                    malformed += 1
                elif row[4] is not None and row[4] < now:
                    expired += 1
                else:
                    rows.append(row)
        if malformed:
            log.warning("upload queue: %d malformed items handed to put were dropped", malformed)
        conn = self.conn
        tally = self.tally.copy()
        conn.execute("BEGIN IMMEDIATE")
        expired += self._delete_expired(now, tally)
        keep, victims, evicted = self._admit(rows, tally)
        if victims:
            for chunk in _chunks(victims):
                conn.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        if evicted:
            CP_AFTER_EVICT.hit()
        conn.executemany(_INSERT, keep)
        drops = {"evicted": evicted, "expired": expired, "malformed": malformed}
        self._count_drops(drops)
        self._commit(CP_BEFORE_COMMIT, CP_AFTER_COMMIT)
        self.tally = tally
        for reason, n in drops.items():
            self.ledger[reason] += n
        self._publish()

    def _admit(self, rows: list[Row], tally: _Tally) -> tuple[list[Row], list[int], int]:
        """Decide, in memory, which rows fit and which stored items make room for them.

        Returns the rows to insert, the stored ids to delete and how many items were evicted
        (stored ones, rows of this batch evicted by later rows, and rows dropped because even
        evicting everything of their priority or lower would not make room). Updates *tally*.
        """
        cost = len(rows) * ROW_OVERHEAD + sum(len(r[2]) for r in rows)
        free = self.max_bytes - sum(tally.accounted(p) for p in _PRIORITIES)
        if cost <= free:  # the common case: no eviction, no per-row bookkeeping beyond sizes
            for row in rows:
                tally.counts[row[1]] += 1
                tally.sizes[row[1]] += len(row[2])
            return rows, [], 0
        reclaimable = [tally.accounted(p) for p in _PRIORITIES]
        stored_left = tally.counts.copy()
        cursors: dict[int, Iterator[tuple[int, int]]] = {}
        batch_rows: list[deque[int]] = [deque() for _ in _PRIORITIES]
        keep = [True] * len(rows)
        victims: list[int] = []
        evicted = 0
        try:
            for index, row in enumerate(rows):
                priority = row[1]
                need = len(row[2]) + ROW_OVERHEAD
                if need > free and need > free + sum(reclaimable[priority:]):
                    keep[index] = False  # it is the least urgent: it goes, nothing else
                    evicted += 1
                    continue
                victim_priority = LOWEST_PRIORITY
                while need > free:
                    while reclaimable[victim_priority] == 0:
                        victim_priority -= 1
                    p = victim_priority
                    # Within a priority, stored items are older than this batch's rows.
                    if stored_left[p]:
                        stored_left[p] -= 1
                        victim_id, size = next(self._victims(cursors, p))
                        victims.append(victim_id)
                        tally.counts[p] -= 1
                        tally.sizes[p] -= size
                    else:
                        j = batch_rows[p].popleft()
                        keep[j] = False
                        size = len(rows[j][2])
                        tally.counts[p] -= 1
                        tally.sizes[p] -= size
                    reclaimable[p] -= size + ROW_OVERHEAD
                    free += size + ROW_OVERHEAD
                    evicted += 1
                free -= need
                reclaimable[priority] += need
                batch_rows[priority].append(index)
                tally.counts[priority] += 1
                tally.sizes[priority] += len(row[2])
        finally:
            cursors.clear()
        return [r for r, k in zip(rows, keep, strict=True) if k], victims, evicted

    def _victims(
        self, cursors: dict[int, Iterator[tuple[int, int]]], priority: int
    ) -> Iterator[tuple[int, int]]:
        cursor = cursors.get(priority)
        if cursor is None:
            cursor = iter(
                self.conn.execute(
                    "SELECT id, length(payload) FROM items WHERE priority = ? ORDER BY id",
                    (priority,),
                )
            )
            cursors[priority] = cursor
        return cursor

    def ack(self, ids: Sequence[int]) -> set[int]:
        """Delete *ids* (those that exist); return the ids deleted."""
        conn = self.conn
        tally = self.tally.copy()
        deleted: set[int] = set()
        conn.execute("BEGIN IMMEDIATE")
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            # SELECT then DELETE: measured ~1.5x faster than DELETE … RETURNING here.
            query = f"SELECT id, priority, length(payload) FROM items WHERE id IN ({marks})"
            for item_id, priority, size in conn.execute(query, chunk).fetchall():
                deleted.add(item_id)
                tally.counts[priority] -= 1
                tally.sizes[priority] -= size
            conn.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk)
        self._commit(CP_BEFORE_ACK, CP_AFTER_ACK)
        self.tally = tally
        if deleted:
            self._publish()
        return deleted

    def take(self, budget: int, kinds: tuple[str, ...] | None) -> list[StoredItem]:
        """The most urgent, oldest items up to *budget* payload bytes (at least one)."""
        conn = self.conn
        now = self._clock.now()
        if conn.execute("SELECT 1 FROM items WHERE expires < ? LIMIT 1", (now,)).fetchone():
            tally = self.tally.copy()
            conn.execute("BEGIN IMMEDIATE")
            expired = self._delete_expired(now, tally)
            self._count_drops({"expired": expired})
            self._commit(CP_BEFORE_PURGE, CP_AFTER_PURGE)
            self.tally = tally
            self.ledger["expired"] += expired
            self._publish()
        where = "(expires IS NULL OR expires >= ?)"
        params: list[Any] = [now]
        if kinds is not None:
            where += f" AND kind IN ({','.join('?' * len(kinds))})"
            params += kinds
        query = (
            "SELECT id, kind, priority, payload, created, expires FROM items "
            f"WHERE {where} ORDER BY priority, id"
        )
        taken: list[StoredItem] = []
        malformed: list[int] = []
        used = 0
        cursor = conn.execute(query, params)
        try:
            for row in cursor:
                if not _is_stored_item(row):
                    malformed.append(row[0])
                    continue
                size = len(row[3])
                # The first item always goes, so one item larger than the budget cannot wedge
                # delivery; after it, stop at the first that does not fit (order is strict).
                if taken and used + size > budget:
                    break
                taken.append(_new_stored_item(StoredItem, row))
                used += size
                if used >= budget:
                    break
        finally:
            cursor.close()
        if malformed:
            log.warning("upload queue %s: removing %d malformed rows", self.path, len(malformed))
            self._purge_malformed(malformed)
            self._publish()
        return taken


class _Request:
    __slots__ = ("arg", "future", "op")

    def __init__(self, op: str, arg: Any, future: asyncio.Future[Any] | None) -> None:
        self.op = op
        self.arg = arg
        self.future = future


_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():  # the caller was cancelled; a put may still have been committed
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class UploadQueue:
    """The persistent upload queue (see the module docstring for its guarantees).

    Use as an async context manager; all SQLite work happens in its writer thread::

        async with UploadQueue("/var/lib/tbox/queue.db", max_bytes=512 << 20) as q:
            await q.put([QueueItem("telemetry", 5, payload, time.time(), time.time() + 86400)])
            batch = await q.take(128 * 1024)
            ...  # publish, wait for the broker's acknowledgement
            await q.ack([item.id for item in batch])

    ``clock`` returns epoch seconds (tests pass a fake one); cancelling a ``put`` does not withdraw
    its items, which may still be committed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        recover_corrupt: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= ROW_OVERHEAD:
            raise ValueError(f"max_bytes must exceed the per-item overhead ({ROW_OVERHEAD})")
        self._path = Path(path)
        self._max_bytes = max_bytes
        self._recover = recover_corrupt
        self._clock_fn = clock
        self._store: _Store | None = None
        self._inbox: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._open = False

    @property
    def path(self) -> Path:
        """The queue's database file."""
        return self._path

    @property
    def max_bytes(self) -> int:
        """The cap on stored bytes (payload + ``ROW_OVERHEAD`` per item)."""
        return self._max_bytes

    @property
    def ledger(self) -> Mapping[str, int]:
        """Items that left other than by delivery, by reason (``evicted``, ``expired``,
        ``malformed``), since the file was created: committed counts only."""
        if self._store is None:
            return MappingProxyType(dict.fromkeys(DROP_REASONS, 0))
        return self._store.snapshot.ledger

    @property
    def stats(self) -> QueueStats:
        """What the queue holds now (as of its last committed transaction)."""
        store = self._store
        if store is None:
            return QueueStats(0, 0, 0, self._max_bytes, None)
        snap = store.snapshot
        age = None
        if snap.oldest_created is not None:
            # The raw wall clock: reading the guarded one here would move its high-water mark
            # from the event loop, making expiry depend on when someone looked at the stats.
            age = max(0.0, self._clock_fn() - snap.oldest_created)
        return QueueStats(
            items=snap.items,
            bytes=snap.payload_bytes + snap.items * ROW_OVERHEAD,
            payload_bytes=snap.payload_bytes,
            max_bytes=self._max_bytes,
            oldest_age=age,
        )

    async def __aenter__(self) -> UploadQueue:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open (or create) the file and start the writer thread."""
        if self._thread is not None:
            raise QueueError(f"upload queue {self._path} is already open")
        self._store = _Store(
            self._path, self._max_bytes, self._recover, _QueueClock(self._clock_fn)
        )
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._thread = threading.Thread(
            target=self._serve, args=(opened,), name="upload-queue-writer", daemon=True
        )
        self._thread.start()
        try:
            await opened
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            raise
        self._open = True

    async def aclose(self) -> None:
        """Finish pending requests, close the file and stop the writer thread."""
        thread = self._thread
        if thread is None:
            return
        if self._open:
            self._open = False
            await self._call("close", None)
        await asyncio.to_thread(thread.join)
        self._thread = None

    async def put(self, items: Iterable[QueueItem]) -> None:
        """Store *items*; return once they are durably committed (or counted as dropped)."""
        batch = list(items)
        if batch:
            await self._call("put", batch)

    async def take(
        self, max_bytes: int, *, kinds: Collection[str] | None = None
    ) -> list[StoredItem]:
        """The most urgent, then oldest, unexpired items up to *max_bytes* of payload, without
        deleting them. The first item is returned even if it alone exceeds *max_bytes*.
        ``kinds`` restricts the items to those kinds."""
        if max_bytes <= 0:
            raise ValueError("take needs a positive byte budget")
        wanted = None if kinds is None else tuple(kinds)
        if wanted == ():
            return []
        result: list[StoredItem] = await self._call("take", (max_bytes, wanted))
        return result

    async def ack(self, ids: Iterable[int]) -> int:
        """Delete delivered items; ids already gone are ignored. Returns how many were deleted."""
        # Ids outside SQLite's rowid range cannot be stored ones; dropping them here keeps one
        # caller's bad id from failing the other acks merged into the same transaction.
        wanted = sorted({i for i in map(int, ids) if 0 < i < _MAX_ROWID})
        if not wanted:
            return 0
        deleted: set[int] = await self._call("ack", wanted)
        return sum(1 for i in wanted if i in deleted)

    async def _call(self, op: str, arg: Any) -> Any:
        if not self._open and op != "close":
            raise QueueError(f"upload queue {self._path} is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.put(_Request(op, arg, future))
        return await future

    # --- the writer thread ------------------------------------------------------------------

    def _serve(self, opened: asyncio.Future[None]) -> None:
        store = self._store
        assert store is not None
        try:
            store.open()
        except BaseException as e:
            self._post([(opened, None, e)])
            return
        self._post([(opened, None, None)])
        inbox = self._inbox
        while True:
            requests = [inbox.get()]
            # Everything that arrived meanwhile joins this round: all puts become one
            # transaction, all acks another (concurrent requests may be served in any order).
            while True:
                try:
                    requests.append(inbox.get_nowait())
                except queue.Empty:
                    break
            puts = [r for r in requests if r.op == "put"]
            acks = [r for r in requests if r.op == "ack"]
            takes = [r for r in requests if r.op == "take"]
            closes = [r for r in requests if r.op == "close"]
            outcomes: list[_Outcome] = []
            if puts:
                outcomes += self._run(store, puts, store.put, [r.arg for r in puts])
            if acks:
                outcomes += self._run(
                    store, acks, store.ack, sorted({i for r in acks for i in r.arg})
                )
            for take in takes:
                outcomes += self._run(store, [take], store.take, *take.arg)
            if closes:
                outcomes += self._run(store, closes, store.close)
            self._post(outcomes)
            if closes:
                self._fail_pending()
                return

    def _run(
        self, store: _Store, requests: list[_Request], work: Callable[..., Any], *args: Any
    ) -> list[_Outcome]:
        try:
            result = work(*args)
        except Exception as e:  # the thread must survive anything; callers get the error
            error: BaseException = e
            if isinstance(e, sqlite3.Error):
                error = QueueError(f"upload queue {store.path}: {e}")
                error.__cause__ = e
            try:
                store.rollback()
            except sqlite3.Error as e2:
                log.error("upload queue %s: rollback failed: %s", store.path, e2)
            return [(r.future, None, error) for r in requests if r.future is not None]
        return [(r.future, result, None) for r in requests if r.future is not None]

    def _fail_pending(self) -> None:
        error = QueueError(f"upload queue {self._path} is closed")
        outcomes: list[_Outcome] = []
        while True:
            try:
                request = self._inbox.get_nowait()
            except queue.Empty:
                break
            if request.future is not None:
                outcomes.append((request.future, None, error))
        self._post(outcomes)

    @staticmethod
    def _post(outcomes: list[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
        for loop, group in by_loop.items():
            # One wake-up of the loop per round, however many producers are waiting.
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, group)
