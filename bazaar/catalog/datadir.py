"""The catalog's data dir: its lock, and what a first start puts in catalog.db.

`lock_data_dir` flocks `catalog.lock` (two catalogs never share one data
dir); `initialise` gives a new catalog.db its content: the files of the CSV
release imported (`bazaar.catalog.legacy`) in one transaction, else the
default market. Used by `bazaar.catalog.store.Catalog.open`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from pathlib import Path

from bazaar.catalog import db, legacy
from bazaar.catalog.market import default_market
from bazaar.errors import BazaarError

log = logging.getLogger(__name__)

LOCK_FILE = "catalog.lock"
DB_FILE = db.DB_FILE


def initialise(conn: sqlite3.Connection, data_dir: Path) -> None:
    """Give a new catalog.db its content: the legacy files' if any, else the default market."""
    if db.schema_version(conn) == db.SCHEMA_VERSION:
        leftovers = legacy.present(data_dir)
        if leftovers:  # an import committed, then the process died before renaming them
            moved = legacy.set_aside(leftovers)
            log.warning("already imported into %s; set aside %s", DB_FILE, _names(moved))
        return
    old = legacy.import_into(conn, data_dir)
    if old is None:
        db.create(conn, default_market().values())
        log.info("%s: created with the default market", data_dir / DB_FILE)
        return
    moved = legacy.set_aside(old.files)
    log.warning(
        "imported %d stocks, %d trades and fence epoch %d from %s into %s; kept the old files as %s",
        old.stocks,
        old.trades,
        old.fence.epoch,
        _names(old.files),
        DB_FILE,
        _names(moved),
    )


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths)


def lock_data_dir(data_dir: Path) -> int:
    """flock `catalog.lock`, creating the data dir as needed; a clear error if it cannot."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BazaarError(
            "UNAVAILABLE", f"{data_dir}: cannot use the data dir: {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BazaarError(
            "FAILED_PRECONDITION", f"{data_dir}: another catalog is already using this data dir"
        ) from None
    return fd
