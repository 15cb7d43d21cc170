"""The order log of one replica: `orders-<id>.db` (SQLite) in its data dir.

Owns the bytes on disk of one order replica: the records (number 0..N-1,
gapless, key unique), the runs of equal epochs along them, and the replica's
persisted state (the highest accepted epoch and its leader), all in one
SQLite database in WAL mode with `synchronous=FULL`.

Rules:
- A record is visible through this module only once it is durable: a batch of
  appends and truncations is one transaction (`write`; group commit is the
  caller's batching; `append_durable` and `truncate_from` are batches of one). A failed transaction is rolled back, so
  what readers see is always a committed prefix.
- Nothing grows in memory with the history: reads go to the database (the
  connections' page caches are bounded); the only cached facts are the last
  record's number and epoch.
- Writes come from one thread at a time (the service's group commit and its
  state saves share `_write_lock`); reads from any thread share one read
  connection, which never sees an uncommitted write.
- `epoch_runs` is a table kept beside the records (a run starts where the
  epoch changes), so answering a peer never scans the log.
- This module never decides what to write: that is `replication`'s job. The
  one-time import of the CSV files of the release before SQLite is
  `bazaar.order.legacy`'s. The record itself is `bazaar.order.record`; the
  schema, connections and outside reads are `bazaar.order.logdb`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from bazaar.errors import BazaarError
from bazaar.order.logdb import (  # noqa: F401 (re-exported: the log's readers use them)
    COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    LogCorrupt,
    db_path,
    disk_error,
    read_only_rows,
)
from bazaar.order.logdb import connect as _connect
from bazaar.order.logdb import to_record as _record
from bazaar.order.record import FIELDS, Record  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

WATERMARK_SAVE_EVERY = 10_000  # seqs: a restart recomputes at most this much


class OrderLog:
    """The durable records and state of one replica, in `orders-<id>.db`.

    It is also the read-only log view the replication machine reads through
    (`last`, `get`, `epoch_at`, `records_between`, `number_of`, `epoch_runs`).
    """

    def __init__(self, data_dir: Path, replica_id: int):
        self.data_dir = Path(data_dir)
        self.replica_id = replica_id
        self.path = db_path(self.data_dir, replica_id)
        self._db: sqlite3.Connection | None = None  # writes
        self._reader: sqlite3.Connection | None = None  # reads, any thread
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._last = (-1, 0)  # (number, epoch) of the last committed record
        # A lower bound of the trade watermark (every catalog seq <= it has a
        # record here): raised by `trade_watermark`, lowered by truncations,
        # saved now and then (`trade_watermark` table) so no start scans.
        self._wm_lock = threading.Lock()
        self._wm = self._wm_saved = 0
        self._wm_cuts = 0  # truncations that lowered it: a computation across one is void

    # ---- opening ---------------------------------------------------------
    def load(self) -> OrderLog:
        """Open (creating if missing) the database; import a pre-SQLite data dir once."""
        from bazaar.order import legacy  # the one-time upgrade, kept apart

        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._db = _connect(self.path)
            self._db.executescript(SCHEMA)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LogCorrupt(
                    f"{self.path}: schema version {version} is newer than this release's "
                    f"({SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._reader = _connect(self.path)
            self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            self.close()
            raise disk_error(f"open {self.path}", exc) from None
        self._last = self._read_last()
        legacy.import_once(self)
        row = self._query_one("SELECT seq FROM trade_watermark WHERE id = 0")
        self._wm = self._wm_saved = row[0] if row else 0
        return self

    def close(self) -> None:
        for conn in (self._db, self._reader):
            if conn is not None:
                conn.close()
        self._db = self._reader = None

    def _read_last(self) -> tuple[int, int]:
        row = self._query_one("SELECT number, epoch FROM records ORDER BY number DESC LIMIT 1")
        return (row[0], row[1]) if row else (-1, 0)

    # ---- reading (any thread) -----------------------------------------------
    def _query(self, sql: str, args=()) -> list:
        with self._read_lock:
            if self._reader is None:
                raise BazaarError("UNAVAILABLE", "order log is closed")
            try:
                return self._reader.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise disk_error("read", exc) from None

    def _query_one(self, sql: str, args=()):
        rows = self._query(sql, args)
        return rows[0] if rows else None

    @property
    def last_number(self) -> int:
        return self._last[0]

    def last(self) -> tuple[int, int]:
        """(number, epoch) of the last record; (-1, 0) when the log is empty."""
        return self._last

    def get(self, number: int) -> Record | None:
        row = self._query_one(f"SELECT {COLUMNS} FROM records WHERE number = ?", (number,))
        return _record(row) if row else None

    def epoch_at(self, number: int) -> int | None:
        if number == self._last[0]:
            return self._last[1]
        row = self._query_one("SELECT epoch FROM records WHERE number = ?", (number,))
        return row[0] if row else None

    def number_of(self, key: str) -> int | None:
        row = self._query_one("SELECT number FROM records WHERE key = ?", (key,))
        return row[0] if row else None

    def records_between(self, first: int, last: int) -> list[Record]:
        """Records first..last (inclusive) that exist, in order."""
        rows = self._query(
            f"SELECT {COLUMNS} FROM records WHERE number BETWEEN ? AND ? ORDER BY number",
            (first, last),
        )
        return [_record(r) for r in rows]

    def records_after(
        self, number: int, limit: int = 4096, max_bytes: int | None = None
    ) -> list[Record]:
        """Up to `limit` records after `number` (and about `max_bytes` on the wire)."""
        records = self.records_between(number + 1, number + limit)
        if max_bytes is None:
            return records
        size = 0
        for i, r in enumerate(records):
            size += r.wire_size()
            if size > max_bytes and i > 0:
                return records[:i]
        return records

    def epoch_runs(self, upto: int | None = None) -> list[list[int]]:
        """[[epoch, first number], ...] of the log up to `upto` (all when None)."""
        upto = self._last[0] if upto is None else min(upto, self._last[0])
        rows = self._query(
            "SELECT epoch, first_number FROM epoch_runs WHERE first_number <= ? "
            "ORDER BY first_number",
            (upto,),
        )
        return [[e, f] for e, f in rows]

    def trade_watermark(self, after: int = 0) -> int:
        """Highest S >= after such that catalog trades after+1..S all have a record here.

        Starts from the cached lower bound (kept valid across truncations,
        saved every WATERMARK_SAVE_EVERY seqs), then gallops over the
        trade_seq index with range counts (C speed, no rows fetched) and
        bisects: a few queries per call, a few dozen from zero at 10^6.
        """
        with self._wm_lock:
            cached, cuts = self._wm, self._wm_cuts
        start = max(after, cached)

        def full(lo: int, hi: int) -> bool:  # every seq in lo+1..hi present
            row = self._query_one(
                "SELECT COUNT(DISTINCT trade_seq) FROM records "
                "WHERE trade_seq > ? AND trade_seq <= ?",
                (lo, hi),
            )
            return row[0] == hi - lo

        w, step = start, 1024
        while full(w, w + step):
            w, step = w + step, min(step * 2, 1 << 20)
        lo, hi = w, w + step
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if full(lo, mid):
                lo = mid
            else:
                hi = mid
        if after <= cached:  # started from the log's own bound, not the caller's
            self._raise_watermark(lo, cuts)
        return lo

    def _raise_watermark(self, seq: int, cuts: int) -> None:
        with self._wm_lock:
            if cuts != self._wm_cuts or seq <= self._wm:
                return  # a truncation ran meanwhile: this value may be void
            self._wm = seq
            save = seq - self._wm_saved >= WATERMARK_SAVE_EVERY
        if save:

            def work(db):
                db.execute(
                    "INSERT INTO trade_watermark (id, seq) VALUES (0, ?) "
                    "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq "
                    "WHERE excluded.seq > trade_watermark.seq",
                    (seq,),
                )

            with self._wm_lock:
                if cuts != self._wm_cuts:
                    return
                # Under _wm_lock: no truncation can lower the saved value meanwhile.
                self._transaction("save the trade watermark", work)
                self._wm_saved = seq

    def __len__(self) -> int:
        return self._last[0] + 1

    # ---- writing (one thread at a time) ---------------------------------------
    def _transaction(self, action: str, work):
        with self._write_lock:
            if self._db is None:
                raise BazaarError("UNAVAILABLE", "order log is closed")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(self._db)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError as exc:
                raise BazaarError("INTERNAL", f"order log: cannot {action}: {exc}") from None
            except sqlite3.Error as exc:
                raise disk_error(action, exc) from None
        return result

    def write(self, steps: list[list[Record] | int]) -> None:
        """Apply appends (a list of consecutive records) and truncations (an int:
        drop records >= it) in order, all in one transaction: one fsync, and a
        crash sees all of them or none (a re-stamped record is never gone)."""

        def work(db):
            nonlocal wm
            last, last_epoch = self._last
            for step in steps:
                if isinstance(step, int):
                    if step > last:
                        continue
                    lowest = db.execute(
                        "SELECT MIN(trade_seq) FROM records WHERE number >= ?", (step,)
                    ).fetchone()[0]
                    if lowest is not None and lowest <= wm:  # the watermark loses seqs
                        wm = lowest - 1
                        db.execute(
                            "INSERT INTO trade_watermark (id, seq) VALUES (0, ?) "
                            "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
                            (wm,),
                        )
                    db.execute("DELETE FROM records WHERE number >= ?", (step,))
                    db.execute("DELETE FROM epoch_runs WHERE first_number >= ?", (step,))
                    row = db.execute(
                        "SELECT number, epoch FROM records ORDER BY number DESC LIMIT 1"
                    ).fetchone()
                    last, last_epoch = row if row else (-1, 0)
                    continue
                if not step:
                    continue
                if step[0].number != last + 1 or step[-1].number != last + len(step):
                    raise BazaarError("INTERNAL", f"append of {step[0].number} after {last}")
                runs = []
                for r in step:
                    if r.epoch != last_epoch or r.number == 0:
                        runs.append((r.number, r.epoch))
                        last_epoch = r.epoch
                db.executemany(
                    "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (r.number, r.epoch, r.key, r.name, r.type, r.quantity, r.trade_seq)
                        for r in step
                    ],
                )
                db.executemany("INSERT INTO epoch_runs VALUES (?, ?)", runs)
                last = step[-1].number
            return last, last_epoch, wm

        if not any(isinstance(step, int) or step for step in steps):
            return
        with self._wm_lock:  # a truncation may lower the watermark: no raise meanwhile
            wm = self._wm
            number, epoch, new_wm = self._transaction("append", work)
            if new_wm < self._wm:
                self._wm = self._wm_saved = new_wm
                self._wm_cuts += 1
        self._last = (number, epoch)

    def append_durable(self, records: list[Record]) -> None:
        """Commit a batch of consecutive records (one transaction, one fsync)."""
        self.write([records])

    def truncate_from(self, number: int) -> None:
        """Drop records >= number (a divergent, never acknowledged tail): one transaction."""
        self.write([number])

    # ---- the replica's state -----------------------------------------------------
    def load_state(self) -> tuple[int, int | None]:
        """(highest accepted epoch, its leader); (0, None) for a new replica."""
        row = self._query_one("SELECT epoch, leader FROM replica_state WHERE id = 0")
        return (row[0], row[1]) if row else (0, None)

    def save_state(self, epoch: int, leader: int | None) -> None:
        """Durably record (epoch, leader) before the caller acts on it."""

        def work(db):
            db.execute(
                "INSERT INTO replica_state (id, epoch, leader) VALUES (0, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, leader = excluded.leader",
                (epoch, leader),
            )

        self._transaction("save the epoch", work)

    def import_rows(self, records: list[Record], state: tuple[int, int | None] | None) -> None:
        """The upgrade: an empty log takes a whole old log and state in one transaction."""
        if self._last[0] != -1:
            raise BazaarError("INTERNAL", "import into a log that is not empty")
        runs, last_epoch = [], None
        for r in records:
            if r.epoch != last_epoch:
                runs.append((r.number, r.epoch))
                last_epoch = r.epoch
        rows = [
            (r.number, r.epoch, r.key, r.name, r.type, r.quantity, r.trade_seq) for r in records
        ]

        def work(db):
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("INSERT INTO epoch_runs VALUES (?, ?)", runs)
            if state is not None:
                db.execute("INSERT INTO replica_state VALUES (0, ?, ?)", state)

        self._transaction("import the old log", work)
        self._last = self._read_last()
