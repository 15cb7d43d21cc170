"""`bazaar backup DIR`: a consistent copy of every database in a data dir, while it runs.

Owns the online backup of `orders-<id>.db` and `catalog.db`. Each file is
copied with SQLite's online backup API in one step, so the copy is one
committed state of that database (a read transaction spans the whole copy;
the WAL's committed frames are included, which a `cp` or `tar` of the live
files can miss), and the service goes on writing meanwhile (WAL: a reader
never blocks the writer).

Rules:
- Order logs are copied before the catalog. Each order record's trade was
  made at the catalog before the record was written, so a catalog copied
  later holds every trade the copied logs name; a trade made after a log was
  copied is "traded, not recorded", which the next leader reconciles after a
  restore (docs/architecture.md). The other way round, a log could name a
  trade the copied catalog never saw.
- A copy is written beside its final name, checked (`PRAGMA
  quick_check`), fsynced, then renamed: DIR never holds half a database
  under a real name, and a re-run replaces the old copy whole.
- The source is opened read-only (`mode=ro`): a backup never creates,
  changes or locks a service's database.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

CATALOG_DB = "catalog.db"


class BackupError(Exception):
    """A database that cannot be copied; the message names the file."""


@dataclass(frozen=True)
class Copied:
    name: str
    bytes: int
    rows: int  # order records or catalog trades in the copy
    what: str  # "records" or "trades"


def databases(data_dir: Path) -> list[Path]:
    """The databases of `data_dir` in backup order: order logs (by id), then the catalog."""
    logs = [p for p in Path(data_dir).glob("orders-*.db") if p.stem[7:].isdigit()]
    logs.sort(key=lambda p: int(p.stem[7:]))
    catalog = Path(data_dir) / CATALOG_DB
    return logs + ([catalog] if catalog.is_file() else [])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_database(src: Path, dest_dir: Path) -> Copied:
    """Copy one live database into `dest_dir` under its own name."""
    final = dest_dir / src.name
    tmp = dest_dir / f".{src.name}.partial"
    tmp.unlink(missing_ok=True)
    what = "trades" if src.name == CATALOG_DB else "records"
    try:
        source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True)
        try:
            source.execute("PRAGMA busy_timeout = 5000")
            target = sqlite3.connect(tmp)
            try:
                source.backup(target)  # pages=-1: the whole file in one step, one snapshot
                # A single file, readable without its -wal: what a restore copies back.
                target.execute("PRAGMA journal_mode = DELETE")
                check = target.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise BackupError(f"{src}: the copy fails its check: {check}")
                rows = target.execute(f"SELECT COUNT(*) FROM {what}").fetchone()[0]
            finally:
                target.close()
        finally:
            source.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(dest_dir)
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"{src}: cannot copy: {exc}") from None
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"{final}: cannot write: {exc.strerror or exc}") from None
    return Copied(src.name, final.stat().st_size, rows, what)


def backup(data_dir: Path, dest_dir: Path) -> list[Copied]:
    """Copy every database of `data_dir` into `dest_dir` (made if missing), orders first."""
    found = databases(data_dir)
    if not found:
        raise BackupError(f"{data_dir}: no orders-<id>.db or catalog.db to back up")
    dest_dir = Path(dest_dir)
    if dest_dir.resolve() == Path(data_dir).resolve():
        raise BackupError(f"{dest_dir}: the backup must go to another directory")
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"{dest_dir}: cannot create: {exc.strerror or exc}") from None
    return [copy_database(src, dest_dir) for src in found]
