"""Importing a data dir of the CSV release (up to commit 40bb7ee) into catalog.db, once.

That release kept:
- `catalog.csv`: the market (`name,price,quantity,volume,max_volume`),
  rewritten now and then, so it may lag the journal;
- `trades.csv`: the journal, `seq,key,name,type,quantity,epoch,new_quantity,
  new_volume,crc` with a header; each line ends with the CRC32 (hex) of the
  rest of the line and records the stock's *absolute* quantity and volume after
  the trade, so replaying it over any older market gives the right one;
- `fence.txt`: the highest epoch given to `fence`, one number.

A hand-written `catalog.csv` alone (no journal) is the way to start a new
catalog with a market of one's own; it imports the same way.

`import_into(conn, data_dir)` copies them into a new catalog.db in one
transaction, streaming the journal (memory does not grow with its length).
Damaged lines at the very end of the journal are a torn write (never
acknowledged) and are left out with a warning; damage anywhere else is a
`MarketFileError` naming file and line, the transaction rolls back and the
files are left untouched. `set_aside(paths)` then renames them:
`catalog.csv` -> `catalog.csv.imported` (never deleted, never overwritten).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import sqlite3
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bazaar.catalog import db
from bazaar.catalog.market import Fence, Stock, Trade
from bazaar.catalog.market_csv import MarketFileError, decode_market
from bazaar.rules import ORDER_TYPES

log = logging.getLogger(__name__)

MARKET_FILE = "catalog.csv"
JOURNAL_FILE = "trades.csv"
FENCE_FILE = "fence.txt"
FILES = (MARKET_FILE, JOURNAL_FILE, FENCE_FILE)
IMPORTED_SUFFIX = ".imported"

JOURNAL_HEADER = b"seq,key,name,type,quantity,epoch,new_quantity,new_volume,crc\n"

_COUNT = re.compile(r"[0-9]+")


@dataclass
class Imported:
    """What an import brought in, for the log."""

    stocks: int
    trades: int
    fence: Fence
    files: list[Path] = field(default_factory=list)  # the files it came from


def present(data_dir: Path) -> list[Path]:
    """The legacy files in `data_dir`."""
    return [data_dir / name for name in FILES if (data_dir / name).exists()]


def import_into(conn: sqlite3.Connection, data_dir: Path) -> Imported | None:
    """Copy a CSV-release data dir into `conn`'s new, empty catalog.db, in one transaction.

    None (and nothing written) when there is no catalog.csv. The files are
    not touched: `set_aside` them once this returned.
    """
    market_path = data_dir / MARKET_FILE
    data = _read_bytes(market_path)
    if data is None:
        if (data_dir / JOURNAL_FILE).exists():
            raise MarketFileError(market_path, f"is missing but {JOURNAL_FILE} is there")
        return None
    market = decode_market(data, market_path)
    fenced = read_fence(data_dir / FENCE_FILE)
    journal = JournalReader(data_dir / JOURNAL_FILE, market)
    with db.transaction(conn):
        db.create_schema(conn)
        try:
            db.insert_trades(conn, journal)  # replays onto `market` as it goes
        except sqlite3.IntegrityError:
            raise MarketFileError(
                journal.path, f"key {journal.key!r} appears twice", journal.line
            ) from None
        db.insert_market(conn, market.values())
        # The CSV release never recorded leaders: the epoch's leader is unknown.
        fence = Fence(max(fenced, journal.max_epoch), None)
        db.set_fence(conn, fence)
    return Imported(len(market), journal.count, fence, present(data_dir))


def read_fence(path: Path) -> int:
    data = _read_bytes(path)
    if data is None:
        return 0
    text = data.decode("ascii", errors="replace").strip()
    if not _COUNT.fullmatch(text):
        raise MarketFileError(
            path, f"expected one whole number (the fenced epoch), got {text!r}", 1
        )
    return int(text)


class JournalReader:
    """The journal's intact trades, one at a time, checked against each other and the market.

    Iterating replays each trade onto `market` (absolute values: the last line
    per stock wins) and raises MarketFileError for damage that is not a torn
    tail. `line` and `key` name the trade last read, `count` and `max_epoch`
    sum up what was read.
    """

    def __init__(self, path: Path, market: dict[str, Stock]):
        self.path = path
        self.market = market
        self.line = 1
        self.key = ""
        self.count = 0
        self.max_epoch = 0

    def __iter__(self) -> Iterator[Trade]:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below, also on an early stop
        except FileNotFoundError:
            return
        except OSError as exc:
            raise MarketFileError(self.path, f"cannot read: {exc.strerror or exc}") from None
        with fh:
            header = fh.read(len(JOURNAL_HEADER))
            if len(header) < len(JOURNAL_HEADER) and JOURNAL_HEADER.startswith(header):
                return  # empty, or the release died while creating it: no trade was in it
            if header != JOURNAL_HEADER:
                raise MarketFileError(
                    self.path, f"header is not {JOURNAL_HEADER.decode().strip()!r}", 1
                )
            yield from self._trades(fh)

    def _trades(self, fh: BinaryIO) -> Iterator[Trade]:
        first_damage: tuple[int, str] | None = None  # (line, problem)
        line = 1
        for raw in fh:
            line += 1
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("line has no end (torn write)")
                trade = decode_line(raw[:-1])
            except (ValueError, UnicodeDecodeError) as exc:
                first_damage = first_damage or (line, str(exc))
                continue
            if first_damage is not None:
                bad_line, problem = first_damage
                raise MarketFileError(
                    self.path, f"damaged entry ({problem}) followed by intact entries", bad_line
                )
            if trade.seq != self.count + 1:
                raise MarketFileError(
                    self.path, f"seq {trade.seq} where {self.count + 1} was due", line
                )
            stock = self.market.get(trade.name)
            if stock is None:
                raise MarketFileError(
                    self.path, f"stock {trade.name!r} is not in {MARKET_FILE}", line
                )
            stock.quantity, stock.volume = trade.new_quantity, trade.new_volume
            self.line, self.key = line, trade.key
            self.count += 1
            self.max_epoch = max(self.max_epoch, trade.epoch)
            yield trade
        if first_damage is not None:
            log.warning(
                "%s, line %d on: a torn last entry (a crash mid-write, never acknowledged) "
                "is left out of the import: %s",
                self.path,
                *first_damage,
            )


def decode_line(raw: bytes) -> Trade:
    """One journal line without its newline -> Trade; ValueError if it is damaged."""
    body, sep, crc = raw.rpartition(b",")
    if not sep or crc != b"%08x" % zlib.crc32(body):
        raise ValueError("checksum does not match")
    try:
        fields = next(csv.reader([body.decode("utf-8")], strict=True))
    except csv.Error as exc:
        raise ValueError(f"malformed CSV: {exc}") from None
    if len(fields) != 8:
        raise ValueError(f"expected 9 fields, got {len(fields) + 1}")
    seq, key, name, trade_type, quantity, epoch, new_quantity, new_volume = fields
    if trade_type not in ORDER_TYPES:
        raise ValueError(f"type {trade_type!r} is not buy or sell")
    numbers = (seq, quantity, epoch, new_quantity, new_volume)
    if not all(_COUNT.fullmatch(n) for n in numbers):
        raise ValueError("a number field is not a whole number >= 0")
    return Trade(
        int(seq),
        key,
        name,
        trade_type,
        int(quantity),
        int(epoch),
        int(new_quantity),
        int(new_volume),
    )


def set_aside(paths: list[Path]) -> list[Path]:
    """Rename each file to `<name>.imported` (or `.imported.N` if taken); returns the new paths."""
    moved = []
    for path in paths:
        target = path.with_name(path.name + IMPORTED_SUFFIX)
        n = 1
        while target.exists():
            target = path.with_name(f"{path.name}{IMPORTED_SUFFIX}.{n}")
            n += 1
        os.rename(path, target)
        moved.append(target)
    if paths:
        fd = os.open(paths[0].parent, os.O_RDONLY)  # make the renames themselves durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return moved


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes, None if it does not exist, MarketFileError if it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MarketFileError(path, f"cannot read: {exc.strerror or exc}") from None
