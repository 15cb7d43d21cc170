"""The catalog's market, its files and its trade rules. No sockets here.

Owns:
- the market in memory (one `Stock` per name) and the trade rules of
  docs/architecture.md: argument validation, the epoch fence, idempotency per
  key, the quantity and `max_volume` checks, all decided under one lock;
- the files in the data dir:
  - `catalog.csv` (`name,price,quantity,volume,max_volume`): the market
    snapshot, always replaced atomically (tmp, fsync, rename, fsync dir). It is
    where prices and limits come from; it may lag the journal by a few trades.
  - `trades.csv`: the append-only journal, one line per applied trade, fsynced
    before the trade is acknowledged. A line records the stock's *absolute*
    quantity and volume after the trade, so replaying it is idempotent, and ends
    with a CRC32 of the line, so a torn last line (crash mid-write) is
    recognised and cut off rather than misread.
  - `fence.txt`: the highest epoch given to `fence`, replaced atomically.
  - `catalog.lock`: an flock, so two catalogs never share one data dir.

Durability is a group commit: a trade is decided and applied to the *working*
state under the lock and its journal line queued; the caller then waits until
that line is on disk. Whoever takes the commit lock first writes every queued
line with one write + fdatasync, so concurrent trades share a disk flush.
Lookups and `trades_since` read the *durable* state only: nobody ever sees a
trade that a crash could still undo.

Start-up: catalog.csv (or the default market, written at once), then the
journal replayed on top (the last line per stock wins); the key -> trade map
and the seq counter come from the journal; the fenced epoch is the highest of
fence.txt and every epoch in the journal (a trade at epoch E fences E too: once
a leader of epoch E has traded, an older leader must not).

Never: open a socket, or silently replace a file it cannot read. A damaged
file is a `MarketFileError` naming the file and the line.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import logging
import math
import os
import re
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from bazaar.errors import BazaarError, invalid, not_found, precondition, unavailable
from bazaar.wire import is_int

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.csv"
JOURNAL_FILE = "trades.csv"
FENCE_FILE = "fence.txt"
LOCK_FILE = "catalog.lock"

MARKET_COLUMNS = ("name", "price", "quantity", "volume", "max_volume")
JOURNAL_COLUMNS = (
    "seq",
    "key",
    "name",
    "type",
    "quantity",
    "epoch",
    "new_quantity",
    "new_volume",
    "crc",
)
JOURNAL_HEADER = (",".join(JOURNAL_COLUMNS) + "\n").encode()

TRADE_TYPES = ("buy", "sell")
MAX_KEY_LEN = 200
MAX_NAME_LEN = 100
# Far above any real order, and it keeps every count well inside msgpack's int64.
MAX_TRADE_QUANTITY = 1_000_000_000
# One reply must stay under the wire's 1 MiB limit even with 200-character keys.
MAX_TRADES_PAGE = 2000

DEFAULT_QUANTITY = 100
DEFAULT_STOCKS = (
    ("GameStart", 48.50),
    ("FishCo", 12.25),
    ("BoarCo", 27.80),
    ("MenhirCo", 33.10),
    ("PotionCo", 72.40),
    ("DruidCo", 95.00),
    ("ShieldCo", 19.95),
    ("HelmetCo", 22.60),
    ("SickleCo", 14.80),
    ("BardCo", 5.75),
    ("RoadCo", 41.30),
)

_COUNT = re.compile(r"[0-9]+")
_fdatasync = getattr(os, "fdatasync", os.fsync)


class MarketFileError(BazaarError):
    """A catalog file that cannot be used as it is; the message names the file and line."""

    def __init__(self, path: Path | str, problem: str, line: int | None = None):
        where = f"{path}" if line is None else f"{path}, line {line}"
        details: dict[str, Any] = {"file": str(path)}
        if line is not None:
            details["line"] = line
        super().__init__("DATA_LOSS", f"{where}: {problem}", details)
        self.path = Path(path)
        self.line = line


# ---- the market ------------------------------------------------------------


@dataclass(slots=True)
class Stock:
    name: str
    price: float
    quantity: int
    volume: int = 0
    max_volume: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "price": self.price,
            "quantity": self.quantity,
            "volume": self.volume,
            "max_volume": self.max_volume,
        }


def default_market() -> dict[str, Stock]:
    """The market a catalog starts with when its data dir has no catalog.csv."""
    return {name: Stock(name, price, DEFAULT_QUANTITY) for name, price in DEFAULT_STOCKS}


def copy_market(market: dict[str, Stock]) -> dict[str, Stock]:
    return {name: replace(stock) for name, stock in market.items()}


def _has_control_chars(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def _parse_count(value: str, column: str, path: Path, line: int) -> int:
    if not _COUNT.fullmatch(value):
        raise MarketFileError(path, f"{column} {value!r} is not a whole number >= 0", line)
    return int(value)


def _parse_stock_row(row: list[str], path: Path, line: int) -> Stock:
    if len(row) != len(MARKET_COLUMNS):
        raise MarketFileError(
            path,
            f"expected {len(MARKET_COLUMNS)} fields ({','.join(MARKET_COLUMNS)}), got {len(row)}",
            line,
        )
    name, price_text, quantity, volume, max_volume = (field.strip() for field in row)
    if not name or len(name) > MAX_NAME_LEN or _has_control_chars(name):
        raise MarketFileError(
            path, f"name {name!r} must be 1 to {MAX_NAME_LEN} printable characters", line
        )
    try:
        price = float(price_text)
    except ValueError:
        raise MarketFileError(path, f"price {price_text!r} is not a number", line) from None
    if not math.isfinite(price) or price < 0:
        raise MarketFileError(path, f"price {price_text!r} must be a finite number >= 0", line)
    return Stock(
        name=name,
        price=price,
        quantity=_parse_count(quantity, "quantity", path, line),
        volume=_parse_count(volume, "volume", path, line),
        max_volume=None if max_volume == "" else _parse_count(max_volume, "max_volume", path, line),
    )


def parse_market(text: str, path: Path | str = CATALOG_FILE) -> dict[str, Stock]:
    """Parse catalog.csv text; raise MarketFileError naming `path` and the line."""
    path = Path(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    market: dict[str, Stock] = {}
    header_seen = False
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise MarketFileError(path, f"malformed CSV: {exc}", reader.line_num) from None
        line = reader.line_num
        if not header_seen:
            if [column.strip() for column in row] != list(MARKET_COLUMNS):
                raise MarketFileError(
                    path, f"header is {','.join(row)!r}, expected {','.join(MARKET_COLUMNS)!r}", 1
                )
            header_seen = True
            continue
        if not any(field.strip() for field in row):
            continue  # blank lines are harmless (hand-edited files often end with some)
        stock = _parse_stock_row(row, path, line)
        if stock.name in market:
            raise MarketFileError(path, f"stock {stock.name!r} appears twice", line)
        market[stock.name] = stock
    if not header_seen:
        raise MarketFileError(
            path, f"file is empty; expected the header {','.join(MARKET_COLUMNS)}", 1
        )
    if not market:
        raise MarketFileError(path, "lists no stocks", reader.line_num or 1)
    return market


def format_market(market: dict[str, Stock]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MARKET_COLUMNS)
    for stock in market.values():
        max_volume = "" if stock.max_volume is None else stock.max_volume
        writer.writerow([stock.name, repr(stock.price), stock.quantity, stock.volume, max_volume])
    return out.getvalue()


# ---- files -----------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a crash leaves either the old or the new file, whole."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes, None if it does not exist, MarketFileError if it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MarketFileError(path, f"cannot read: {exc.strerror or exc}") from None


def read_market(path: Path) -> dict[str, Stock] | None:
    """The market in catalog.csv at `path`, or None when there is no such file."""
    data = _read_bytes(path)
    if data is None:
        return None
    try:
        text = data.decode("utf-8-sig")  # tolerate the BOM spreadsheet programs write
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MarketFileError(path, "is not UTF-8 text", line) from None
    return parse_market(text, path)


def write_market(path: Path, market: dict[str, Stock]) -> None:
    write_file_atomically(path, format_market(market).encode())


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


def write_fence(path: Path, epoch: int) -> None:
    write_file_atomically(path, f"{epoch}\n".encode())


# ---- trades and the journal ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trade:
    """One applied trade, with the stock's quantity and volume right after it."""

    seq: int
    key: str
    name: str
    type: str
    quantity: int
    epoch: int
    new_quantity: int
    new_volume: int

    def matches(self, name: str, trade_type: str, quantity: int) -> bool:
        return (self.name, self.type, self.quantity) == (name, trade_type, quantity)

    def describe(self) -> str:
        return f"{self.type} {self.quantity} {self.name}"

    def summary(self) -> dict[str, Any]:
        """The `trades_since` view of a trade."""
        return {
            "seq": self.seq,
            "key": self.key,
            "name": self.name,
            "type": self.type,
            "quantity": self.quantity,
            "epoch": self.epoch,
        }


def encode_journal_line(trade: Trade) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(
        [
            trade.seq,
            trade.key,
            trade.name,
            trade.type,
            trade.quantity,
            trade.epoch,
            trade.new_quantity,
            trade.new_volume,
        ]
    )
    body = out.getvalue().encode()
    return body + b",%08x\n" % zlib.crc32(body)


def decode_journal_line(raw: bytes) -> Trade:
    """One journal line without its newline -> Trade; ValueError if it is damaged."""
    body, sep, crc = raw.rpartition(b",")
    if not sep or crc != b"%08x" % zlib.crc32(body):
        raise ValueError("checksum does not match")
    try:
        fields = next(csv.reader([body.decode("utf-8")], strict=True))
    except csv.Error as exc:
        raise ValueError(f"malformed CSV: {exc}") from None
    if len(fields) != len(JOURNAL_COLUMNS) - 1:
        raise ValueError(f"expected {len(JOURNAL_COLUMNS)} fields, got {len(fields) + 1}")
    seq, key, name, trade_type, quantity, epoch, new_quantity, new_volume = fields
    if trade_type not in TRADE_TYPES:
        raise ValueError(f"type {trade_type!r} is not buy or sell")
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


class JournalScan(NamedTuple):
    trades: list[Trade]
    intact_bytes: int  # the journal's length up to the end of its last intact line


def parse_journal(data: bytes, path: Path, known_names: Iterable[str]) -> JournalScan:
    """Read a journal's bytes (header included).

    Damaged lines at the very end are a torn write (the process died inside
    `write`, so none of them was acknowledged): they are reported through
    `intact_bytes` for the caller to cut off. A damaged line followed by an
    intact one is real corruption and raises MarketFileError, as does an intact
    line that contradicts the others (seq out of order, key reused, unknown stock).
    """
    if not data.startswith(JOURNAL_HEADER):
        raise MarketFileError(path, f"header is not {JOURNAL_HEADER.decode().strip()!r}", 1)
    names = set(known_names)
    trades: list[Trade] = []
    keys: set[str] = set()
    first_damage: tuple[int, int, str] | None = None  # (offset, line, problem)
    pos = len(JOURNAL_HEADER)
    line = 1
    while pos < len(data):
        line += 1
        end = data.find(b"\n", pos)
        try:
            if end == -1:
                raise ValueError("line has no end (torn write)")
            trade = decode_journal_line(data[pos:end])
        except (ValueError, UnicodeDecodeError) as exc:
            if first_damage is None:
                first_damage = (pos, line, str(exc))
        else:
            if first_damage is not None:
                _, bad_line, problem = first_damage
                raise MarketFileError(
                    path, f"damaged entry ({problem}) followed by intact entries", bad_line
                )
            if trade.seq != len(trades) + 1:
                raise MarketFileError(
                    path, f"seq {trade.seq} where {len(trades) + 1} was due", line
                )
            if trade.key in keys:
                raise MarketFileError(path, f"key {trade.key!r} appears twice", line)
            if trade.name not in names:
                raise MarketFileError(path, f"stock {trade.name!r} is not in {CATALOG_FILE}", line)
            keys.add(trade.key)
            trades.append(trade)
        pos = len(data) if end == -1 else end + 1
    intact = len(data) if first_damage is None else first_damage[0]
    return JournalScan(trades, intact)


def load_journal(path: Path, known_names: Iterable[str]) -> list[Trade]:
    """The journal's trades; creates the file, or cuts off a torn tail, as needed."""
    data = _read_bytes(path)
    if data is None or (len(data) < len(JOURNAL_HEADER) and JOURNAL_HEADER.startswith(data)):
        # Missing, or a crash while creating it: no trade was ever in it.
        write_file_atomically(path, JOURNAL_HEADER)
        return []
    scan = parse_journal(data, path, known_names)
    if scan.intact_bytes < len(data):
        log.warning(
            "%s: cutting off %d bytes of a torn last entry (a crash mid-write; never acknowledged)",
            path,
            len(data) - scan.intact_bytes,
        )
        with open(path, "r+b") as fh:
            fh.truncate(scan.intact_bytes)
            os.fsync(fh.fileno())
    return scan.trades


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ---- argument checks -------------------------------------------------------


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN:
        raise invalid(f"key must be a non-empty string of at most {MAX_KEY_LEN} characters")
    if _has_control_chars(key):
        # The journal keeps one trade per line; keys come from HTTP headers or
        # UUIDs, so nothing legitimate is refused here.
        raise invalid("key must not contain control characters")
    return key


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise invalid("name must be a non-empty string")
    return name


def check_trade_type(trade_type: Any) -> str:
    if not isinstance(trade_type, str) or trade_type not in TRADE_TYPES:
        raise invalid(f"type must be 'buy' or 'sell', not {trade_type!r:.40}")
    return trade_type


def check_quantity(quantity: Any) -> int:
    if not is_int(quantity) or not 0 < quantity <= MAX_TRADE_QUANTITY:
        raise invalid(f"quantity must be an integer from 1 to {MAX_TRADE_QUANTITY}")
    return quantity


def check_epoch(epoch: Any) -> int:
    if not is_int(epoch) or epoch < 0:
        raise invalid("epoch must be an integer >= 0")
    return epoch


def _lock_data_dir(data_dir: Path) -> int:
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BazaarError(
            "FAILED_PRECONDITION", f"{data_dir}: another catalog is already using this data dir"
        ) from None
    return fd


# ---- the catalog -----------------------------------------------------------


class TradeOutcome(NamedTuple):
    result: dict[str, Any]  # the `trade` reply
    applied: bool  # False when the key had already traded (the first result is repeated)


class Catalog:
    """The market and its files; every method is thread-safe.

    Build it with `Catalog.open(data_dir)`, end it with `close()`.
    """

    def __init__(
        self,
        data_dir: Path,
        market: dict[str, Stock],
        trades: list[Trade],
        fenced_epoch: int,
        journal_fd: int,
        lock_fd: int,
    ):
        self.data_dir = data_dir
        self.market_path = data_dir / CATALOG_FILE
        self.journal_path = data_dir / JOURNAL_FILE
        self.fence_path = data_dir / FENCE_FILE
        self._journal_fd = journal_fd
        self._lock_fd = lock_fd

        # `_lock` guards every field below and is never held across disk I/O,
        # except the rare fence-file write (see `fence`). `_commit_lock` lets one
        # thread at a time write the journal.
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._durable = market  # what the files hold: what readers see
        self._working = copy_market(market)  # plus trades still waiting for fsync
        self._trades = trades  # durable trades; seq n is at index n - 1
        self._by_key = {trade.key: trade for trade in trades}  # working
        self._queued: list[Trade] = []
        self._durable_seq = len(trades)
        self._next_seq = len(trades) + 1
        self._fenced_epoch = max([fenced_epoch, *(trade.epoch for trade in trades)])
        self._failure: BazaarError | None = None
        self._closed = False

        self._snapshot_lock = threading.Lock()
        self._snapshot_due = threading.Event()

    @classmethod
    def open(cls, data_dir: Path | str) -> Catalog:
        """Load (or create) the catalog in `data_dir`; MarketFileError if a file is damaged."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock_data_dir(data_dir)
        try:
            market_path = data_dir / CATALOG_FILE
            market = read_market(market_path)
            if market is None:
                market = default_market()
                write_market(market_path, market)
                log.info("%s: created with the default market", market_path)
            trades = load_journal(data_dir / JOURNAL_FILE, market)
            snapshot = copy_market(market)
            for trade in trades:  # absolute values: the last line per stock wins
                stock = market[trade.name]
                stock.quantity, stock.volume = trade.new_quantity, trade.new_volume
            if market != snapshot:  # the last run died before its snapshot caught up
                write_market(market_path, market)
            fenced_epoch = read_fence(data_dir / FENCE_FILE)
            journal_fd = os.open(data_dir / JOURNAL_FILE, os.O_WRONLY | os.O_APPEND)
        except BaseException:
            os.close(lock_fd)
            raise
        catalog = cls(data_dir, market, trades, fenced_epoch, journal_fd, lock_fd)
        log.info(
            "catalog loaded from %s: %d stocks, %d trades, fenced epoch %d",
            data_dir,
            len(market),
            len(trades),
            catalog._fenced_epoch,
        )
        return catalog

    # ---- reads ---------------------------------------------------------
    def lookup(self, name: Any) -> dict[str, Any]:
        check_name(name)
        with self._lock:
            stock = self._durable.get(name)
            if stock is None:
                raise not_found(f"no stock named {name:.100}")
            return stock.to_dict()

    def stocks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [stock.to_dict() for stock in self._durable.values()]

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._durable_seq

    @property
    def fenced_epoch(self) -> int:
        with self._lock:
            return self._fenced_epoch

    def trades_since(self, after: Any, limit: Any = None) -> dict[str, Any]:
        """Durable trades with seq > `after`, oldest first, at most `limit` (and MAX_TRADES_PAGE).

        `last_seq` is the newest durable seq; `more` says whether trades after
        the returned ones exist (ask again with `after` = the last seq returned).
        """
        if not is_int(after):
            raise invalid("after must be an integer")
        if limit is not None and (not is_int(limit) or limit < 1):
            raise invalid("limit must be an integer >= 1 or null")
        page = MAX_TRADES_PAGE if limit is None else min(limit, MAX_TRADES_PAGE)
        start = max(after, 0)
        with self._lock:
            chunk = self._trades[start : start + page]
            last_seq = self._durable_seq
        return {
            "trades": [trade.summary() for trade in chunk],
            "last_seq": last_seq,
            "more": start + len(chunk) < last_seq,
        }

    # ---- changes -------------------------------------------------------
    def trade(
        self, key: Any, name: Any, trade_type: Any, quantity: Any, epoch: Any
    ) -> TradeOutcome:
        """Apply one trade at most once per key; durable before it returns."""
        check_key(key)
        check_name(name)
        check_trade_type(trade_type)
        check_quantity(quantity)
        check_epoch(epoch)
        with self._lock:
            self._check_serving()
            if epoch < self._fenced_epoch:
                raise BazaarError(
                    "ABORTED",
                    f"epoch {epoch} is fenced off: the catalog has seen epoch {self._fenced_epoch}",
                    {"epoch": self._fenced_epoch},
                )
            earlier = self._by_key.get(key)
            if earlier is not None:
                if not earlier.matches(name, trade_type, quantity):
                    raise BazaarError(
                        "ALREADY_EXISTS",
                        f"key {key!r} was already used for {earlier.describe()}",
                        {"seq": earlier.seq},
                    )
                trade, applied = earlier, False
            else:
                trade = self._apply(key, name, trade_type, quantity, epoch)
                applied = True
        # A repeated key may name a trade still waiting for its fsync: the first
        # result must not be repeated before it is durable either.
        self._make_durable(trade.seq)
        return TradeOutcome(self._trade_result(trade), applied)

    def _apply(self, key: str, name: str, trade_type: str, quantity: int, epoch: int) -> Trade:
        """Check and apply to the working state, queue the journal line (lock held)."""
        stock = self._working.get(name)
        if stock is None:
            raise not_found(f"no stock named {name:.100}")
        if trade_type == "buy" and quantity > stock.quantity:
            raise precondition(
                f"cannot buy {quantity} {name}: only {stock.quantity} available",
                available=stock.quantity,
            )
        if stock.max_volume is not None and stock.volume + quantity > stock.max_volume:
            raise precondition(
                f"cannot trade {quantity} {name}: volume {stock.volume} would pass "
                f"the limit of {stock.max_volume}",
                volume=stock.volume,
                max_volume=stock.max_volume,
            )
        delta = -quantity if trade_type == "buy" else quantity
        trade = Trade(
            seq=self._next_seq,
            key=key,
            name=name,
            type=trade_type,
            quantity=quantity,
            epoch=epoch,
            new_quantity=stock.quantity + delta,
            new_volume=stock.volume + quantity,
        )
        self._next_seq += 1
        stock.quantity, stock.volume = trade.new_quantity, trade.new_volume
        self._by_key[key] = trade
        self._queued.append(trade)
        self._fenced_epoch = max(self._fenced_epoch, epoch)
        return trade

    def _trade_result(self, trade: Trade) -> dict[str, Any]:
        stock = self._durable[trade.name]  # price and max_volume never change while serving
        return {
            "seq": trade.seq,
            "key": trade.key,
            "name": trade.name,
            "type": trade.type,
            "quantity": trade.quantity,
            "stock": {
                "name": trade.name,
                "price": stock.price,
                "quantity": trade.new_quantity,
                "volume": trade.new_volume,
                "max_volume": stock.max_volume,
            },
        }

    def fence(self, epoch: Any) -> dict[str, int]:
        """Refuse trades below `epoch` from now on; returns the (never falling) fenced epoch.

        When it returns, every trade accepted before it is durable, so a new
        leader's `trades_since` right after sees all of them.
        """
        check_epoch(epoch)
        with self._lock:
            self._check_serving()
            if epoch > self._fenced_epoch:
                # Written under the lock so no trade of an older epoch slips in
                # between; fences are rare (one per election), lookups barely notice.
                write_fence(self.fence_path, epoch)
                self._fenced_epoch = epoch
            current = self._fenced_epoch
            accepted = self._next_seq - 1
        self._make_durable(accepted)
        return {"epoch": current}

    def _check_serving(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise unavailable("the catalog is shutting down")

    def _make_durable(self, seq: int) -> None:
        """Return once trade `seq` is on disk, writing the queued lines if nobody else is."""
        with self._commit_lock:
            with self._lock:
                if self._durable_seq >= seq:
                    return
                if self._failure is not None:
                    raise self._failure
                batch, self._queued = self._queued, []
            try:
                _write_all(self._journal_fd, b"".join(map(encode_journal_line, batch)))
                _fdatasync(self._journal_fd)
            except OSError as exc:
                # The working state now holds trades the disk may not: stop trading
                # rather than acknowledge anything more. A restart replays the journal.
                failure = BazaarError(
                    "INTERNAL", f"{self.journal_path}: write failed ({exc}); the catalog stopped"
                )
                with self._lock:
                    self._failure = failure
                log.critical("%s", failure.message)
                raise failure from exc
            with self._lock:
                for trade in batch:
                    stock = self._durable[trade.name]
                    stock.quantity, stock.volume = trade.new_quantity, trade.new_volume
                self._trades.extend(batch)
                self._durable_seq = batch[-1].seq
        self._snapshot_due.set()

    # ---- snapshot and shutdown ------------------------------------------
    def wait_snapshot_due(self, timeout: float) -> bool:
        """True once trades became durable since the last `write_snapshot`."""
        return self._snapshot_due.wait(timeout)

    def write_snapshot(self) -> None:
        """Rewrite catalog.csv (atomically) from the durable state."""
        with self._snapshot_lock:
            self._snapshot_due.clear()  # before copying: a later commit sets it again
            with self._lock:
                market = copy_market(self._durable)
            write_market(self.market_path, market)

    def close(self) -> None:
        """Commit what is queued, write a last snapshot, release the data dir."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            accepted = self._next_seq - 1
        with contextlib.suppress(BazaarError):  # a failed write is logged; the journal rules
            self._make_durable(accepted)
        with self._commit_lock:
            os.close(self._journal_fd)
        try:
            if self._failure is None:
                self.write_snapshot()
        finally:
            os.close(self._lock_fd)
            self._snapshot_due.set()  # wakes a snapshot thread waiting on it, so it can end

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
