"""The catalog's SQLite file, `catalog.db`: its schema and every statement run on it.

Tables (schema version in `PRAGMA user_version`):
- `market`: one row per stock, `id` keeps the market's order;
- `trades`: every applied trade, `seq` 1, 2, 3, ... (the primary key) and
  `key` unique, with the stock's quantity and volume right after the trade,
  so a repeated key gets its first result back;
- `fence`: one row, the highest epoch seen and its leader (NULL: unknown).

Connections run in autocommit mode (`isolation_level=None`): a write is an
explicit `BEGIN IMMEDIATE ... COMMIT`, and every read sees the latest commit.
The writer sets WAL and `synchronous=FULL`, so COMMIT returns only once the
transaction is on disk (fsync of the WAL). Readers never block the writer.

Never: keep state or decide anything (the store does); hold a transaction
open between calls.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from bazaar.catalog.market import Fence, Stock, Trade

DB_FILE = "catalog.db"
SCHEMA_VERSION = 1
# Page cache per connection (the store keeps three open): bounded, like the order
# log's; SQLite's default is 2,000 KiB each. Look-ups missing it read pages the OS
# caches anyway (docs/performance.md, "Footprint").
CACHE_KIB = 512

_SCHEMA = (
    """CREATE TABLE market (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        price REAL NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity >= 0),
        volume INTEGER NOT NULL CHECK (volume >= 0),
        max_volume INTEGER CHECK (max_volume IS NULL OR max_volume >= 0)
    )""",
    """CREATE TABLE trades (
        seq INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('buy', 'sell')),
        quantity INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        new_quantity INTEGER NOT NULL,
        new_volume INTEGER NOT NULL
    )""",
    """CREATE TABLE fence (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch INTEGER NOT NULL,
        leader INTEGER
    )""",
)

_TRADE_COLUMNS = "seq, key, name, type, quantity, epoch, new_quantity, new_volume"
_INSERT_TRADE = f"INSERT INTO trades ({_TRADE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_STOCK = "UPDATE market SET quantity = ?, volume = ? WHERE name = ?"
_SET_FENCE = "INSERT OR REPLACE INTO fence (id, epoch, leader) VALUES (1, ?, ?)"


class SchemaError(Exception):
    """catalog.db is not a catalog this release can use (e.g. written by a newer one)."""


def connect(path: Path, *, writer: bool = False, readonly: bool = False) -> sqlite3.Connection:
    """A connection to catalog.db at `path`.

    `writer`: the one connection that writes (WAL, synchronous=FULL).
    `readonly`: opened with mode=ro, for a reader outside the catalog process
    (`bazaar export`); it never creates the file.
    """
    if readonly:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    else:
        # check_same_thread=False: the store hands each connection to one thread
        # at a time under its own lock.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        if writer:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL (journal mode is {mode})")
            conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """0 for a new (empty) file; SchemaError for a version this release does not know."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"written by a newer release (schema {version}; this one knows {SCHEMA_VERSION})"
        )
    return version


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection):
    """BEGIN IMMEDIATE ... COMMIT; ROLLBACK (and re-raise) on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (disk full) may already have rolled back by itself.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def create(conn: sqlite3.Connection, market: Iterable[Stock]) -> None:
    """A new catalog with `market` and no trades, in one transaction."""
    with transaction(conn):
        create_schema(conn)
        insert_market(conn, market)
        set_fence(conn, Fence())


def create_schema(conn: sqlite3.Connection) -> None:
    """The tables and the schema version (inside the caller's transaction, so all or nothing)."""
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def insert_market(conn: sqlite3.Connection, market: Iterable[Stock]) -> None:
    conn.executemany(
        "INSERT INTO market (name, price, quantity, volume, max_volume) VALUES (?, ?, ?, ?, ?)",
        ((s.name, s.price, s.quantity, s.volume, s.max_volume) for s in market),
    )


def insert_trades(conn: sqlite3.Connection, trades: Iterable[Trade]) -> None:
    """Insert trades as they come (an iterator is consumed one row at a time)."""
    conn.executemany(_INSERT_TRADE, (_trade_row(t) for t in trades))


def set_fence(conn: sqlite3.Connection, fence: Fence) -> None:
    conn.execute(_SET_FENCE, (fence.epoch, fence.leader))


def commit_batch(
    conn: sqlite3.Connection,
    trades: list[Trade],
    stocks: Iterable[Stock],
    fence: Fence | None,
) -> None:
    """One group commit: new trades, the stocks they changed, the fence if it moved."""
    with transaction(conn):
        if trades:
            conn.executemany(_INSERT_TRADE, (_trade_row(t) for t in trades))
        conn.executemany(_UPDATE_STOCK, ((s.quantity, s.volume, s.name) for s in stocks))
        if fence is not None:
            conn.execute(_SET_FENCE, (fence.epoch, fence.leader))


def load_market(conn: sqlite3.Connection) -> dict[str, Stock]:
    rows = conn.execute(
        "SELECT name, price, quantity, volume, max_volume FROM market ORDER BY id"
    ).fetchall()
    return {row[0]: Stock(*row) for row in rows}


def load_fence(conn: sqlite3.Connection) -> Fence:
    row = conn.execute("SELECT epoch, leader FROM fence WHERE id = 1").fetchone()
    return Fence() if row is None else Fence(row[0], row[1])


def last_seq(conn: sqlite3.Connection) -> int:
    """The newest trade's seq (0 when there is none); the primary key makes it one probe."""
    return conn.execute("SELECT COALESCE(MAX(seq), 0) FROM trades").fetchone()[0]


def find_trade(conn: sqlite3.Connection, key: str) -> Trade | None:
    row = conn.execute(f"SELECT {_TRADE_COLUMNS} FROM trades WHERE key = ?", (key,)).fetchone()
    return None if row is None else Trade(*row)


def trades_after(conn: sqlite3.Connection, after: int, upto: int, limit: int) -> list[Trade]:
    """Trades with after < seq <= upto, oldest first, at most `limit`."""
    rows = conn.execute(
        f"SELECT {_TRADE_COLUMNS} FROM trades WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
        (after, upto, limit),
    ).fetchall()
    return [Trade(*row) for row in rows]


def _trade_row(t: Trade) -> tuple:
    return (t.seq, t.key, t.name, t.type, t.quantity, t.epoch, t.new_quantity, t.new_volume)
