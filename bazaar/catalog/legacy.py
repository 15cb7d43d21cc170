"""Reading a data dir of the CSV release (up to commit 40bb7ee), for the one-time import.

That release kept:
- `catalog.csv`: the market (`name,price,quantity,volume,max_volume`),
  rewritten now and then, so it may lag the journal;
- `trades.csv`: the journal, `seq,key,name,type,quantity,epoch,new_quantity,
  new_volume,crc` with a header; each line ends with the CRC32 (hex) of the
  line before it and records the stock's *absolute* quantity and volume after
  the trade, so replaying it over any older market gives the right one;
- `fence.txt`: the highest epoch given to `fence`, one number.

A hand-written `catalog.csv` alone (no journal) is the way to start a new
catalog with a market of one's own; it imports the same way.

`read(data_dir)` returns what those files hold; damaged lines at the very end
of the journal are a torn write (never acknowledged) and are left out with a
warning, damage anywhere else is a `MarketFileError` naming file and line, and
the files are left untouched. `set_aside(paths)` renames the files once their
content is committed to catalog.db: `catalog.csv` -> `catalog.csv.imported`
(never deleted, never overwritten).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from bazaar.catalog.market import TRADE_TYPES, Fence, Stock, Trade
from bazaar.catalog.market_csv import MarketFileError, decode_market

log = logging.getLogger(__name__)

MARKET_FILE = "catalog.csv"
JOURNAL_FILE = "trades.csv"
FENCE_FILE = "fence.txt"
FILES = (MARKET_FILE, JOURNAL_FILE, FENCE_FILE)
IMPORTED_SUFFIX = ".imported"

JOURNAL_HEADER = b"seq,key,name,type,quantity,epoch,new_quantity,new_volume,crc\n"

_COUNT = re.compile(r"[0-9]+")


@dataclass
class LegacyData:
    market: dict[str, Stock]
    trades: list[Trade] = field(default_factory=list)
    fence: Fence = field(default_factory=Fence)
    files: list[Path] = field(default_factory=list)  # the files it came from


def present(data_dir: Path) -> list[Path]:
    """The legacy files in `data_dir`."""
    return [data_dir / name for name in FILES if (data_dir / name).exists()]


def read(data_dir: Path) -> LegacyData | None:
    """The market, trades and fence of a CSV-release data dir; None if it has no catalog.csv."""
    market_path = data_dir / MARKET_FILE
    data = _read_bytes(market_path)
    if data is None:
        if (data_dir / JOURNAL_FILE).exists():
            raise MarketFileError(market_path, f"is missing but {JOURNAL_FILE} is there")
        return None
    market = decode_market(data, market_path)
    journal_path = data_dir / JOURNAL_FILE
    trades = read_journal(journal_path, market)
    for trade in trades:  # absolute values: the last line per stock wins
        stock = market[trade.name]
        stock.quantity, stock.volume = trade.new_quantity, trade.new_volume
    epoch = max([read_fence(data_dir / FENCE_FILE), *(t.epoch for t in trades)])
    # The CSV release never recorded leaders: the epoch's leader is unknown.
    return LegacyData(market, trades, Fence(epoch, None), present(data_dir))


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


def read_journal(path: Path, market: dict[str, Stock]) -> list[Trade]:
    """The journal's intact trades, checked against each other and against `market`."""
    data = _read_bytes(path)
    if data is None or (len(data) < len(JOURNAL_HEADER) and JOURNAL_HEADER.startswith(data)):
        return []  # missing, or the release died while creating it: no trade was in it
    if not data.startswith(JOURNAL_HEADER):
        raise MarketFileError(path, f"header is not {JOURNAL_HEADER.decode().strip()!r}", 1)
    trades: list[Trade] = []
    keys: set[str] = set()
    first_damage: tuple[int, str] | None = None  # (line, problem)
    pos, line = len(JOURNAL_HEADER), 1
    while pos < len(data):
        line += 1
        end = data.find(b"\n", pos)
        try:
            if end == -1:
                raise ValueError("line has no end (torn write)")
            trade = decode_line(data[pos:end])
        except (ValueError, UnicodeDecodeError) as exc:
            if first_damage is None:
                first_damage = (line, str(exc))
        else:
            if first_damage is not None:
                bad_line, problem = first_damage
                raise MarketFileError(
                    path, f"damaged entry ({problem}) followed by intact entries", bad_line
                )
            if trade.seq != len(trades) + 1:
                raise MarketFileError(
                    path, f"seq {trade.seq} where {len(trades) + 1} was due", line
                )
            if trade.key in keys:
                raise MarketFileError(path, f"key {trade.key!r} appears twice", line)
            if trade.name not in market:
                raise MarketFileError(path, f"stock {trade.name!r} is not in {MARKET_FILE}", line)
            keys.add(trade.key)
            trades.append(trade)
        pos = len(data) if end == -1 else end + 1
    if first_damage is not None:
        log.warning(
            "%s, line %d on: a torn last entry (a crash mid-write, never acknowledged) "
            "is left out of the import: %s",
            path,
            *first_damage,
        )
    return trades


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
    if trade_type not in TRADE_TYPES:
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
