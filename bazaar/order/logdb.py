"""The SQLite side of an order log: schema, connections, errors, outside reads.

Owns the database file's shape (`SCHEMA`, `SCHEMA_VERSION`), how a
connection is opened (WAL, `synchronous=FULL`, a small WAL that never grows
with the history, a bounded page cache), how a SQLite failure becomes a clear
UNAVAILABLE error (`disk_error`), and reading a log from outside its replica
(`read_only_rows`: export, tests). `bazaar.order.log.OrderLog` uses these.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from bazaar.errors import BazaarError
from bazaar.order.record import Record

CACHE_KIB = 1024  # page cache per connection: bounded, whatever the history
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    number    INTEGER PRIMARY KEY,
    epoch     INTEGER NOT NULL,
    key       TEXT    NOT NULL UNIQUE,
    name      TEXT    NOT NULL,
    type      TEXT    NOT NULL CHECK (type IN ('buy', 'sell')),
    quantity  INTEGER NOT NULL CHECK (quantity > 0),
    trade_seq INTEGER
);
CREATE INDEX IF NOT EXISTS records_trade_seq ON records (trade_seq)
    WHERE trade_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS epoch_runs (
    first_number INTEGER PRIMARY KEY,
    epoch        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS trade_watermark (
    id  INTEGER PRIMARY KEY CHECK (id = 0),
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replica_state (
    id     INTEGER PRIMARY KEY CHECK (id = 0),
    epoch  INTEGER NOT NULL,
    leader INTEGER
);
"""
COLUMNS = "number, name, type, quantity, key, trade_seq, epoch"


class LogCorrupt(BazaarError):
    def __init__(self, message: str):
        super().__init__("DATA_LOSS", message)


def disk_error(action: str, exc: Exception) -> BazaarError:
    """A clear UNAVAILABLE error; a full disk says so in the words of the OS."""
    text = str(exc)
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in text:
        text = f"{os.strerror(errno.ENOSPC)} ({text})"
    elif isinstance(exc, OSError):
        text = exc.strerror or text
    return BazaarError("UNAVAILABLE", f"order log: cannot {action}: {text}")


def db_path(data_dir: Path, replica_id: int) -> Path:
    return Path(data_dir) / f"orders-{replica_id}.db"


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
        conn.execute("PRAGMA query_only = ON")
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        # A small WAL, reset after each checkpoint: a nearly full disk has room
        # for the log itself, and the file never grows with the history.
        conn.execute("PRAGMA wal_autocheckpoint = 256")
        conn.execute("PRAGMA journal_size_limit = 1048576")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def to_record(row) -> Record:
    return Record(*row)


def read_only_rows(path: Path, columns: str = COLUMNS) -> Iterator[tuple]:
    """Every record of the database at `path`, in order, through a read-only connection.

    Safe while the replica runs (WAL readers never block its writer). Raises
    BazaarError NOT_FOUND when there is no such database.
    """
    if not Path(path).exists():
        raise BazaarError("NOT_FOUND", f"no order log at {path}")
    try:
        conn = connect(Path(path), read_only=True)
    except sqlite3.Error as exc:
        raise disk_error(f"open {path}", exc) from None
    try:
        yield from conn.execute(f"SELECT {columns} FROM records ORDER BY number")
    except sqlite3.Error as exc:
        raise disk_error(f"read {path}", exc) from None
    finally:
        conn.close()
