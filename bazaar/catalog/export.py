"""`bazaar export market`: the market in catalog.db as the seed's CSV, read while the catalog runs.

Opens catalog.db read-only (SQLite's WAL lets a reader in beside the running
catalog and shows the last committed state), so it never changes, creates or
locks anything the catalog needs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bazaar.catalog import db
from bazaar.catalog.market import Stock
from bazaar.catalog.market_csv import format_market


class ExportError(Exception):
    """The data dir holds no readable catalog.db; the message says why."""


def read_market(data_dir: Path | str) -> list[Stock]:
    """The market as last committed in `data_dir`/catalog.db, in the market's order."""
    path = Path(data_dir) / db.DB_FILE
    if not path.is_file():
        hint = " (a data dir of the CSV release is imported when the catalog first starts)"
        legacy = (Path(data_dir) / "catalog.csv").exists()
        raise ExportError(f"{path}: no such file{hint if legacy else ''}")
    try:
        conn = db.connect(path, readonly=True)
        try:
            if db.schema_version(conn) != db.SCHEMA_VERSION:
                raise ExportError(f"{path}: not initialised yet (is the catalog starting?)")
            return list(db.load_market(conn).values())
        finally:
            conn.close()
    except (sqlite3.Error, db.SchemaError) as exc:
        raise ExportError(f"{path}: cannot read: {exc}") from None


def market_csv(data_dir: Path | str) -> str:
    """`name,price,quantity,volume,max_volume` lines, header first (empty max_volume: no limit)."""
    return format_market(read_market(data_dir))
