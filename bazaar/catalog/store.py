"""The catalog's state on disk and its one writer: trades and fences, group-committed to SQLite.

Owns `Catalog`, thread-safe: it decides each `trade` and `fence` by the rules
of `bazaar.catalog.market` under one lock, and makes it durable in
`catalog.db` (`bazaar.catalog.db`) before it returns. Opening takes the data
dir's lock and, on a first start, fills catalog.db (`bazaar.catalog.datadir`).

Group commit: a trade is decided on the *working* market (durable state plus
decided-but-unwritten trades) and queued; its caller then waits until it is
committed. Whoever takes the commit lock first writes everything queued in
one transaction (one fsync), so concurrent trades share a disk flush. Lookups
and `trades_since` show *durable* state only: nobody sees a trade that a
crash could still undo.

In memory: the market (a few dozen stocks, a write-through copy of the
`market` table), the fence, and the trades still queued. Idempotency look-ups
read the `trades` table (its unique key index), so memory does not grow with
the history, and a start reads three small things (market, fence, last seq):
no replay.

A write that fails (disk full, read-only file system, I/O error) fails every
trade queued with it as UNAVAILABLE; the working state is reloaded from the
database (what it holds is exactly what was acknowledged) and the next trade
tries again, so trading resumes by itself once the disk has room.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from bazaar import metrics
from bazaar.catalog import db
from bazaar.catalog.datadir import initialise, lock_data_dir
from bazaar.catalog.market import (
    Fence,
    Stock,
    Trade,
    admit,
    apply_trade,
    check_epoch,
    check_leader,
    check_lookup_name,
    check_trade,
)
from bazaar.catalog.market_csv import MarketFileError
from bazaar.errors import BazaarError, invalid, not_found, unavailable
from bazaar.rules import check_key
from bazaar.wire import is_int

log = logging.getLogger(__name__)

DB_FILE = db.DB_FILE
# A full disk fails every write: log the first, then a summary this often.
LOG_EVERY = 10.0
# One reply must stay under the wire's 1 MiB limit even with 200-character keys.
MAX_TRADES_PAGE = 2000

_PENDING, _DURABLE, _FAILED = "pending", "durable", "failed"


class TradeOutcome(NamedTuple):
    result: dict[str, Any]  # the `trade` reply
    applied: bool  # False when the key had already traded (the first result is repeated)


@dataclass(slots=True)
class _Change:
    """One queued change: an applied trade, a fence move, or both."""

    trade: Trade | None
    fence: Fence | None  # the fence after this change, if it moved
    state: str = _PENDING
    error: BazaarError | None = None


def _storage_error(exc: BaseException) -> BazaarError:
    """UNAVAILABLE naming the cause; file paths and exception text go to the log only."""
    what = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    return unavailable(f"the catalog cannot store changes right now ({what}); nothing was changed")


class Catalog:
    """The market and its database; every method is thread-safe.

    Build it with `Catalog.open(data_dir)`, end it with `close()`.
    """

    def __init__(self, data_dir: Path, lock_fd: int, writer, key_reader, page_reader):
        self.data_dir = data_dir
        self.db_path = data_dir / DB_FILE
        self._lock_fd = lock_fd
        self._writer = writer  # used by the thread holding `_commit_lock` only
        self._key_reader = key_reader  # used under `_lock` only
        self._page_reader = page_reader  # used under `_page_lock` only

        # `_lock` guards every field below; `_commit_lock` lets one thread at a time write.
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._page_lock = threading.Lock()
        self._closed = False
        self._failed_writes = 0  # in a row; guarded by `_commit_lock`
        self._failure_logged = 0.0
        self._load_durable()

    def _load_durable(self) -> None:
        """(Re)read the durable state and make the working state equal to it (lock held or unshared)."""
        # What readers see: replaced, never changed in place, so `lookup` reads it
        # without the lock (the RPC I/O thread never waits for a trade's decision).
        self._durable = db.load_market(self._key_reader)
        self._durable_fence = db.load_fence(self._key_reader)
        self._durable_seq = db.last_seq(self._key_reader)
        self._working = {name: replace(stock) for name, stock in self._durable.items()}
        self._fence = self._durable_fence
        self._next_seq = self._durable_seq + 1
        self._pending_keys: dict[str, _Change] = {}  # decided, not yet committed
        self._queue: list[_Change] = []

    @classmethod
    def open(cls, data_dir: Path | str) -> Catalog:
        """Open (or create, or import) the catalog in `data_dir`.

        MarketFileError if a legacy file is damaged, UNAVAILABLE if catalog.db
        cannot be opened for writing (read-only or full disk).
        """
        started = time.monotonic()
        data_dir = Path(data_dir)
        lock_fd = lock_data_dir(data_dir)
        conns: list[sqlite3.Connection] = []
        path = data_dir / DB_FILE
        try:
            try:
                conns.append(db.connect(path, writer=True))
                initialise(conns[0], data_dir)
                conns.append(db.connect(path))
                conns.append(db.connect(path))
                catalog = cls(data_dir, lock_fd, *conns)
            except (sqlite3.Error, OSError, db.SchemaError) as exc:
                raise BazaarError(
                    "UNAVAILABLE", f"{path}: cannot open the catalog's database: {exc}"
                ) from None
        except BaseException:
            for conn in conns:
                conn.close()
            os.close(lock_fd)
            raise
        log.info(
            "catalog opened %s: %d stocks, %d trades, fence epoch %d (leader %s) in %.0f ms",
            path,
            len(catalog._durable),
            catalog._durable_seq,
            catalog._fence.epoch,
            catalog._fence.leader,
            (time.monotonic() - started) * 1000,
        )
        return catalog

    # ---- reads ---------------------------------------------------------
    def lookup(self, name: Any) -> dict[str, Any]:
        check_lookup_name(name)
        stock = self._durable.get(name)
        if stock is None:
            raise not_found(f"no stock named {name:.100}")
        return stock.to_dict()

    def stocks(self) -> list[dict[str, Any]]:
        return [stock.to_dict() for stock in self._durable.values()]

    @property
    def writable(self) -> bool:
        """False while the latest write failed (full disk, I/O error): trades are refused.

        It turns True again with the next write that commits; the front end's
        /health reports it, so a full disk shows there and not only in the log.
        """
        return self._failed_writes == 0  # an int read: no lock needed for a report

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._durable_seq

    @property
    def fenced_epoch(self) -> int:
        with self._lock:
            return self._durable_fence.epoch

    @property
    def fence_state(self) -> Fence:
        """The durable fence: (epoch, leader)."""
        with self._lock:
            return self._durable_fence

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
            self._check_open()
            last_seq = self._durable_seq  # the query stops here: nothing undurable shows
        with self._page_lock:
            try:
                chunk = db.trades_after(self._page_reader, start, last_seq, page)
            except sqlite3.Error as exc:
                raise unavailable(f"the catalog cannot read its trades ({exc})") from None
        end = chunk[-1].seq if chunk else start
        return {
            "trades": [trade.summary() for trade in chunk],
            "last_seq": last_seq,
            "more": end < last_seq,
        }

    # ---- changes -------------------------------------------------------
    def trade(self, *args: Any, **kwargs: Any) -> TradeOutcome:
        """Apply one trade at most once per key; durable before it returns.

        The arguments are `trade_later`'s (one parameter list, kept there).
        """
        return self.trade_later(*args, **kwargs)()

    def trade_later(
        self,
        key: Any,
        name: Any,
        trade_type: Any,
        quantity: Any,
        epoch: Any,
        leader: Any = None,
    ) -> Callable[[], TradeOutcome]:
        """`trade` in two steps: decided now (a bad or refused trade raises here), and
        a function that returns its outcome once durable, committing the queue if
        nobody has: a burst decided first then shares one commit.

        `leader` (optional) is the replica trading for epoch `epoch`: another
        leader of the same epoch is refused (ABORTED), as is a lower epoch.
        """
        check_trade(key, name, trade_type, quantity, epoch, leader)
        with self._lock:
            self._check_open()
            fence = admit(self._fence, epoch, leader)
            earlier, change = self._earlier(key)
            if earlier is not None:
                if not earlier.matches(name, trade_type, quantity):
                    raise BazaarError(
                        "ALREADY_EXISTS",
                        f"key {key!r} was already used for {earlier.describe()}",
                        {"seq": earlier.seq},
                    )
                applied = False
            else:
                check_key(key)  # a new key: today's rule (a retry may carry an older key)
                new_quantity, new_volume = apply_trade(
                    self._working.get(name), name, trade_type, quantity
                )
                earlier = Trade(
                    self._next_seq, key, name, trade_type, quantity, epoch, new_quantity, new_volume
                )
                self._next_seq += 1
                stock = self._working[name]
                stock.quantity, stock.volume = new_quantity, new_volume
                change = self._enqueue(earlier, fence)
                applied = True
            stock = self._durable[name]  # price and max_volume never change while serving

        def finish() -> TradeOutcome:
            # A repeated key may name a trade still waiting for its commit: the
            # first result must not be repeated before it is durable either.
            if change is not None:
                self._make_durable(change)
            return TradeOutcome(earlier.result(stock), applied)

        return finish

    def _earlier(self, key: str) -> tuple[Trade | None, _Change | None]:
        """The trade already made with `key` and its pending change, if any (lock held)."""
        change = self._pending_keys.get(key)
        if change is not None:
            return change.trade, change
        try:
            return db.find_trade(self._key_reader, key), None
        except sqlite3.Error as exc:
            raise unavailable(f"the catalog cannot read its trades ({exc})") from None

    def _enqueue(self, trade: Trade | None, fence: Fence) -> _Change:
        """Queue a change (lock held); the fence goes with it if it moved."""
        moved = fence if fence != self._fence else None
        self._fence = fence
        change = _Change(trade, moved)
        self._queue.append(change)
        if trade is not None:
            self._pending_keys[trade.key] = change
        return change

    def fence(self, epoch: Any, leader: Any = None) -> dict[str, Any]:
        """Record (epoch, leader) as the fence; returns the fence, durable, as `{epoch, leader}`.

        A lower epoch changes nothing and gets the current fence back (its
        epoch above the caller's says "you are fenced off"). The same epoch
        with another leader is ABORTED. When it returns, every trade accepted
        before it is durable, so a new leader's `trades_since` sees them all.
        """
        check_epoch(epoch)
        check_leader(leader)
        with self._lock:
            self._check_open()
            if epoch < self._fence.epoch:
                current = self._fence
            else:
                current = admit(self._fence, epoch, leader)
            change = self._enqueue(None, current)
        self._make_durable(change)
        return current.to_dict()

    def _check_open(self) -> None:
        if self._closed:
            raise unavailable("the catalog is shutting down")

    def _make_durable(self, change: _Change) -> None:
        """Return once `change` is committed, committing the queue if nobody else is."""
        with self._commit_lock:
            if change.state == _PENDING:
                self._commit_queue()
        if change.state == _FAILED:
            raise change.error or unavailable("the catalog could not write this change")

    def _commit_queue(self) -> None:
        """Write every queued change in one transaction (commit lock held)."""
        with self._lock:
            batch, self._queue = self._queue, []
            if not batch:
                return
            trades = [c.trade for c in batch if c.trade is not None]
            touched = {t.name: self._working[t.name] for t in trades}
            stocks = [replace(s) for s in touched.values()]
            fences = [c.fence for c in batch if c.fence is not None]
            fence = fences[-1] if fences else None
        try:
            with metrics.fsync_timer("catalog"):  # one COMMIT (synchronous=FULL: the fsyncs)
                db.commit_batch(self._writer, trades, stocks, fence)
        except (sqlite3.Error, OSError) as exc:
            self._log_write_failure(exc, len(trades))
            self._fail(batch, _storage_error(exc))
            return
        if self._failed_writes:
            log.warning(
                "%s: writing again after %d failed writes", self.db_path, self._failed_writes
            )
            self._failed_writes = 0
        with self._lock:
            if stocks:
                self._durable = {**self._durable, **{s.name: s for s in stocks}}
            if trades:
                self._durable_seq = trades[-1].seq
            if fence is not None:
                self._durable_fence = fence
            for change in batch:
                change.state = _DURABLE
                if change.trade is not None:
                    self._pending_keys.pop(change.trade.key, None)

    def _log_write_failure(self, exc: BaseException, trades: int) -> None:
        """The first failure of a run of them at ERROR, then one line per LOG_EVERY seconds."""
        self._failed_writes += 1
        now = time.monotonic()
        if self._failed_writes == 1 or now - self._failure_logged >= LOG_EVERY:
            self._failure_logged = now
            log.error(
                "%s: write failed: %s (%d trades refused as UNAVAILABLE; %d failed writes so far)",
                self.db_path,
                exc,
                trades,
                self._failed_writes,
            )

    def _fail(self, batch: list[_Change], error: BazaarError) -> None:
        """A commit failed: fail it and everything decided on top of it; start over from disk."""
        with self._lock:
            for change in batch + self._queue:
                change.state, change.error = _FAILED, error
            try:
                self._load_durable()
            except sqlite3.Error as exc:
                # The database cannot even be read: refuse everything from now on.
                log.critical("%s: cannot reload after a failed write: %s", self.db_path, exc)
                self._closed = True

    # ---- shutdown --------------------------------------------------------
    def close(self) -> None:
        """Commit what is queued, then release the database and the data dir."""
        with self._lock:
            if self._closed and self._lock_fd is None:
                return
            self._closed = True
        with self._commit_lock:
            self._commit_queue()
            with self._lock, self._page_lock:
                if self._lock_fd is None:
                    return
                for conn in (self._page_reader, self._key_reader, self._writer):
                    conn.close()
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Catalog", "MarketFileError", "Stock", "TradeOutcome", "DB_FILE", "MAX_TRADES_PAGE"]
