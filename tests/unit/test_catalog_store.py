"""The catalog store on a real SQLite file: trades, idempotency, the fence, restarts, write failures."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time

import pytest

from bazaar.catalog import db, store
from bazaar.catalog.market import Fence, Stock, Trade
from bazaar.catalog.market_csv import MarketFileError
from bazaar.catalog.store import Catalog
from bazaar.errors import BazaarError
from tests.conftest import wait_until, wall_budget

LIMITED_MARKET = """name,price,quantity,volume,max_volume
Capped,10.5,100,0,10
Open,2.0,100,0,
Scarce,1.0,3,0,
"""


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog.open(tmp_path / "data")
    yield cat
    cat.close()


@pytest.fixture
def limited(tmp_path):
    """A catalog over a hand-written market with a volume limit and a scarce stock."""
    data = tmp_path / "limited"
    data.mkdir()
    (data / "catalog.csv").write_text(LIMITED_MARKET)
    cat = Catalog.open(data)
    yield cat
    cat.close()


def code_of(excinfo) -> str:
    return excinfo.value.code


def buy(cat: Catalog, key: str, name: str, quantity: int, epoch: int = 1, leader=None):
    return cat.trade(key, name, "buy", quantity, epoch, leader)


def sell(cat: Catalog, key: str, name: str, quantity: int, epoch: int = 1, leader=None):
    return cat.trade(key, name, "sell", quantity, epoch, leader)


def held(cat: Catalog, name: str) -> tuple[int, int]:
    """(quantity, volume) of a stock."""
    stock = cat.lookup(name)
    return stock["quantity"], stock["volume"]


def on_disk(data_dir) -> tuple[dict[str, Stock], Fence, int]:
    """(market, fence, last seq) as catalog.db holds them, read by a connection of our own."""
    conn = db.connect(data_dir / "catalog.db", readonly=True)
    try:
        return db.load_market(conn), db.load_fence(conn), db.last_seq(conn)
    finally:
        conn.close()


def crash_copy(cat: Catalog, dest):
    """The data dir as a crash would leave it: the files as they are now, no close()."""
    shutil.copytree(cat.data_dir, dest)
    (dest / "catalog.lock").unlink()
    return dest


# ---- the market -------------------------------------------------------------------------


def test_default_market_is_created_in_the_database(tmp_path):
    with Catalog.open(tmp_path / "fresh") as cat:
        stocks = {s["name"]: s for s in cat.stocks()}
    assert len(stocks) >= 10
    assert {"GameStart", "FishCo", "BoarCo", "MenhirCo"} <= set(stocks)
    for stock in stocks.values():
        assert stock["quantity"] == 100 and stock["volume"] == 0
        assert stock["max_volume"] is None and stock["price"] > 0
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["catalog.db", "catalog.lock"]
    market, fence, last = on_disk(tmp_path / "fresh")
    assert {name: s.to_dict() for name, s in market.items()} == stocks
    assert (fence, last) == (Fence(0, None), 0)


def test_database_is_wal_with_full_sync(catalog):
    conn = sqlite3.connect(catalog.db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert catalog._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_every_connection_has_a_bounded_page_cache(catalog):
    # SQLite's default (2,000 KiB) would let each of the three grow to ~2 MB of RSS.
    for conn in (catalog._writer, catalog._key_reader, catalog._page_reader):
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -db.CACHE_KIB
    assert db.CACHE_KIB <= 512


def test_hand_written_market_file_is_imported(limited):
    assert limited.lookup("Capped") == {
        "name": "Capped",
        "price": 10.5,
        "quantity": 100,
        "volume": 0,
        "max_volume": 10,
    }
    assert limited.lookup("Open")["max_volume"] is None
    assert [s["name"] for s in limited.stocks()] == ["Capped", "Open", "Scarce"]  # file order
    assert not (limited.data_dir / "catalog.csv").exists()
    assert (limited.data_dir / "catalog.csv.imported").read_text() == LIMITED_MARKET


def test_corrupt_market_file_stops_the_start_and_stays(tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    path = data / "catalog.csv"
    text = "name,price,quantity,volume,max_volume\nA,1,1,0,\nB,abc,1,0,\n"
    path.write_text(text)
    with pytest.raises(MarketFileError) as excinfo:
        Catalog.open(data)
    assert excinfo.value.line == 3 and f"{path}, line 3" in excinfo.value.message
    assert path.read_text() == text  # never silently replaced
    # The data dir was released and nothing half-made is left: fixing the file is enough.
    path.write_text(LIMITED_MARKET)
    with Catalog.open(data) as cat:
        assert cat.lookup("Scarce")["quantity"] == 3


def test_unreadable_market_file_is_an_error(tmp_path):
    data = tmp_path / "bad"
    (data / "catalog.csv").mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(MarketFileError, match="catalog.csv: cannot read"):
        Catalog.open(data)


def test_one_catalog_per_data_dir(catalog):
    with pytest.raises(BazaarError) as excinfo:
        Catalog.open(catalog.data_dir)
    assert code_of(excinfo) == "FAILED_PRECONDITION"


def test_database_of_a_newer_release_is_refused(tmp_path):
    data = tmp_path / "data"
    Catalog.open(data).close()
    conn = sqlite3.connect(data / "catalog.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(BazaarError, match="newer release") as excinfo:
        Catalog.open(data)
    assert code_of(excinfo) == "UNAVAILABLE"


def test_a_file_that_is_not_a_database_is_a_clear_error_and_stays(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    junk = b"name,price\n" * 500
    (data / "catalog.db").write_bytes(junk)
    with pytest.raises(BazaarError, match="not a database") as excinfo:
        Catalog.open(data)
    assert code_of(excinfo) == "UNAVAILABLE"
    assert (data / "catalog.db").read_bytes() == junk


def test_unwritable_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    real = db.connect

    def read_only(path, **kw):
        if kw.get("writer"):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real(path, **kw)

    monkeypatch.setattr(db, "connect", read_only)
    with pytest.raises(BazaarError, match="cannot open the catalog's database") as excinfo:
        Catalog.open(data)
    assert code_of(excinfo) == "UNAVAILABLE" and "readonly" in excinfo.value.message
    monkeypatch.undo()
    Catalog.open(data).close()  # the lock was released


# ---- lookups and trades -----------------------------------------------------------------


def test_lookup(catalog):
    assert catalog.lookup("FishCo")["quantity"] == 100
    with pytest.raises(BazaarError) as excinfo:
        catalog.lookup("NoSuchCo")
    assert code_of(excinfo) == "NOT_FOUND"
    for bad in (None, 3, "", ["FishCo"]):
        with pytest.raises(BazaarError) as excinfo:
            catalog.lookup(bad)
        assert code_of(excinfo) == "INVALID_ARGUMENT"


def test_buy_and_sell_change_quantity_and_volume(catalog):
    first = buy(catalog, "k1", "GameStart", 5)
    assert first.applied
    assert first.result == {
        "seq": 1,
        "key": "k1",
        "name": "GameStart",
        "type": "buy",
        "quantity": 5,
        "stock": {**catalog.lookup("GameStart"), "quantity": 95, "volume": 5},
    }
    second = sell(catalog, "k2", "GameStart", 2)
    assert second.result["seq"] == 2
    assert held(catalog, "GameStart") == (97, 7)
    assert catalog.last_seq == 2
    market, _, last = on_disk(catalog.data_dir)  # committed, not only in memory
    assert (market["GameStart"].quantity, market["GameStart"].volume, last) == (97, 7, 2)


@pytest.mark.parametrize(
    "changes",
    [
        {"key": ""},
        {"key": "line\nbreak"},
        {"name": ""},
        {"trade_type": "short"},
        {"quantity": 0},
        {"quantity": True},
        {"epoch": 0},
        {"epoch": 2**53},
        {"leader": 0},
    ],
)
def test_invalid_trade_arguments_change_nothing(catalog, changes):
    args = {"key": "k", "name": "GameStart", "trade_type": "buy", "quantity": 1, "epoch": 1}
    args.update(changes)
    with pytest.raises(BazaarError) as excinfo:
        catalog.trade(**args)
    assert code_of(excinfo) == "INVALID_ARGUMENT"
    assert catalog.last_seq == 0 and catalog.fenced_epoch == 0


def test_longest_key_and_largest_epoch_are_accepted(catalog):
    assert buy(catalog, "x" * 200, "GameStart", 1, epoch=2**53 - 1).applied
    assert catalog.fenced_epoch == 2**53 - 1


def test_unknown_stock_is_not_found(catalog):
    with pytest.raises(BazaarError) as excinfo:
        buy(catalog, "k", "NoSuchCo", 1)
    assert code_of(excinfo) == "NOT_FOUND"


def test_buy_more_than_available_changes_nothing(limited):
    with pytest.raises(BazaarError) as excinfo:
        buy(limited, "k", "Scarce", 4)
    assert code_of(excinfo) == "FAILED_PRECONDITION"
    assert limited.lookup("Scarce")["quantity"] == 3 and limited.last_seq == 0
    # A failed trade is not remembered: the key is still free.
    assert buy(limited, "k", "Scarce", 3).result["stock"]["quantity"] == 0
    with pytest.raises(BazaarError, match="only 0 available"):
        buy(limited, "k2", "Scarce", 1)


def test_max_volume_limit(limited):
    buy(limited, "a", "Capped", 4)
    sell(limited, "b", "Capped", 6)  # volume counts sells too: now exactly at the limit
    assert limited.lookup("Capped")["volume"] == 10
    for trade_type in ("buy", "sell"):
        with pytest.raises(BazaarError) as excinfo:
            limited.trade("c", "Capped", trade_type, 1, 1)
        assert code_of(excinfo) == "FAILED_PRECONDITION"
        assert "limit" in excinfo.value.message
    assert held(limited, "Capped") == (102, 10)
    assert limited.last_seq == 2
    sell(limited, "d", "Open", 1000)  # no limit on the other stock
    assert limited.lookup("Open")["volume"] == 1000


# ---- idempotency ----------------------------------------------------------------------------


def test_same_key_same_trade_returns_first_result(catalog):
    first = buy(catalog, "order-1", "BoarCo", 3)
    sell(catalog, "order-2", "BoarCo", 10)  # the stock moves on meanwhile
    again = buy(catalog, "order-1", "BoarCo", 3, epoch=2)  # a new leader retrying
    assert not again.applied
    assert again.result == first.result  # same seq, same stock-after-trade
    assert catalog.lookup("BoarCo")["quantity"] == 107
    assert catalog.last_seq == 2


@pytest.mark.parametrize(
    ("name", "trade_type", "quantity"),
    [("FishCo", "buy", 3), ("BoarCo", "sell", 3), ("BoarCo", "buy", 4)],
)
def test_same_key_different_trade_is_already_exists(catalog, name, trade_type, quantity):
    buy(catalog, "order-1", "BoarCo", 3)
    with pytest.raises(BazaarError) as excinfo:
        catalog.trade("order-1", name, trade_type, quantity, 1)
    assert code_of(excinfo) == "ALREADY_EXISTS"
    assert excinfo.value.details == {"seq": 1}
    assert catalog.last_seq == 1 and catalog.lookup("FishCo")["quantity"] == 100


def test_keys_are_looked_up_in_the_database_not_kept_in_memory(catalog):
    for i in range(50):
        sell(catalog, f"k{i}", "BardCo", 1)
    assert catalog._pending_keys == {} and catalog._queue == []
    assert sell(catalog, "k7", "BardCo", 1).result["seq"] == 8  # found on disk


def test_concurrent_buys_never_oversell(limited):
    sold = []
    refused = []

    def buyer(thread: int):
        for attempt in range(5):
            try:
                buy(limited, f"t{thread}-{attempt}", "Scarce", 1)
                sold.append(1)
            except BazaarError as err:
                refused.append(err.code)

    threads = [threading.Thread(target=buyer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(sold) == 3
    assert set(refused) == {"FAILED_PRECONDITION"} and len(refused) == 16 * 5 - 3
    assert held(limited, "Scarce") == (0, 3)
    assert [t["seq"] for t in limited.trades_since(0)["trades"]] == [1, 2, 3]


def test_concurrent_trades_share_commits(catalog, monkeypatch):
    commits = []
    real = db.commit_batch

    def counting(conn, trades, stocks, fence):
        commits.append(len(trades))
        time.sleep(0.002)  # a disk flush: others queue behind it meanwhile
        real(conn, trades, stocks, fence)

    monkeypatch.setattr(db, "commit_batch", counting)

    def seller(thread: int):
        for i in range(20):
            sell(catalog, f"s{thread}-{i}", "RoadCo", 1)

    threads = [threading.Thread(target=seller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(commits) == 160 and catalog.last_seq == 160
    assert len(commits) < 160  # group commit: some transactions carried several trades
    assert held(catalog, "RoadCo") == (260, 160)


# ---- fencing ----------------------------------------------------------------------------------


def test_fence_only_rises_and_refuses_older_epochs(catalog):
    assert catalog.fence(3) == {"epoch": 3, "leader": None}
    assert catalog.fence(1) == {"epoch": 3, "leader": None}
    with pytest.raises(BazaarError) as excinfo:
        buy(catalog, "old-leader", "GameStart", 1, epoch=2)
    assert code_of(excinfo) == "ABORTED"
    assert excinfo.value.details == {"epoch": 3, "leader": None}
    assert catalog.lookup("GameStart")["quantity"] == 100
    assert buy(catalog, "new-leader", "GameStart", 1, epoch=3).applied
    # An old leader cannot even have an earlier result repeated to it.
    with pytest.raises(BazaarError) as excinfo:
        buy(catalog, "new-leader", "GameStart", 1, epoch=2)
    assert code_of(excinfo) == "ABORTED"


def test_fence_records_the_leader_and_refuses_another_in_that_epoch(catalog):
    assert catalog.fence(4, leader=3) == {"epoch": 4, "leader": 3}
    assert catalog.fence(4, leader=3) == {"epoch": 4, "leader": 3}  # repeating is fine
    with pytest.raises(BazaarError) as excinfo:
        catalog.fence(4, leader=2)
    assert code_of(excinfo) == "ABORTED"
    assert excinfo.value.details == {"epoch": 4, "leader": 3}
    with pytest.raises(BazaarError) as excinfo:
        buy(catalog, "k", "FishCo", 1, epoch=4, leader=2)
    assert code_of(excinfo) == "ABORTED"
    assert buy(catalog, "k", "FishCo", 1, epoch=4, leader=3).applied
    assert buy(catalog, "k2", "FishCo", 1, epoch=4).applied  # no leader named: epoch alone
    assert catalog.fence(5, leader=2) == {"epoch": 5, "leader": 2}
    assert on_disk(catalog.data_dir)[1] == Fence(5, 2)


def test_a_trade_fences_its_own_epoch_durably(tmp_path):
    data = tmp_path / "data"
    with Catalog.open(data) as cat:
        buy(cat, "k1", "GameStart", 1, epoch=5, leader=2)
        assert cat.fence_state == Fence(5, 2)
        with pytest.raises(BazaarError) as excinfo:
            buy(cat, "k2", "GameStart", 1, epoch=4)
        assert excinfo.value.details == {"epoch": 5, "leader": 2}
        assert cat.fence(2) == {"epoch": 5, "leader": 2}
    with Catalog.open(data) as cat:
        assert cat.fence_state == Fence(5, 2)
        with pytest.raises(BazaarError):
            buy(cat, "k3", "GameStart", 1, epoch=5, leader=1)


def test_fence_survives_restart(tmp_path):
    data = tmp_path / "data"
    with Catalog.open(data) as cat:
        cat.fence(7, 1)
    with Catalog.open(data) as cat:
        assert cat.fence(1) == {"epoch": 7, "leader": 1}


def test_invalid_fence_arguments(catalog):
    for bad in (-1, 0, 2**53, True, "3", None, 1.5):
        with pytest.raises(BazaarError) as excinfo:
            catalog.fence(bad)
        assert code_of(excinfo) == "INVALID_ARGUMENT"
    for bad in (0, -2, True, "1", 1.0):
        with pytest.raises(BazaarError) as excinfo:
            catalog.fence(1, bad)
        assert code_of(excinfo) == "INVALID_ARGUMENT"
    assert catalog.fenced_epoch == 0


# ---- trades_since ----------------------------------------------------------------------------


def test_trades_since(catalog):
    for i in range(5):
        catalog.trade(f"k{i}", "MenhirCo", "buy" if i % 2 else "sell", i + 1, 1)
    everything = catalog.trades_since(0)
    assert everything["last_seq"] == 5 and not everything["more"]
    assert everything["trades"][0] == {
        "seq": 1,
        "key": "k0",
        "name": "MenhirCo",
        "type": "sell",
        "quantity": 1,
        "epoch": 1,
    }
    assert catalog.trades_since(-1) == everything
    assert [t["seq"] for t in catalog.trades_since(3)["trades"]] == [4, 5]
    page = catalog.trades_since(1, limit=2)
    assert [t["seq"] for t in page["trades"]] == [2, 3] and page["more"]
    assert catalog.trades_since(5) == {"trades": [], "last_seq": 5, "more": False}
    assert catalog.trades_since(99)["trades"] == []
    for after, limit in ((True, None), ("0", None), (0, 0), (0, True), (0, "2")):
        with pytest.raises(BazaarError) as excinfo:
            catalog.trades_since(after, limit)
        assert code_of(excinfo) == "INVALID_ARGUMENT"


def test_trades_since_pages_are_bounded(catalog, monkeypatch):
    monkeypatch.setattr(store, "MAX_TRADES_PAGE", 3)
    for i in range(5):
        sell(catalog, f"k{i}", "BardCo", 1)
    page = catalog.trades_since(0, limit=100)
    assert len(page["trades"]) == 3 and page["more"]


# ---- restarts and crashes ----------------------------------------------------------------------


def test_state_survives_a_crash(catalog, tmp_path):
    buy(catalog, "a", "GameStart", 10)
    sell(catalog, 'b,with"quotes",commas', "FishCo", 4)
    buy(catalog, "c", "GameStart", 1, epoch=2)
    copy = crash_copy(catalog, tmp_path / "crashed")
    with Catalog.open(copy) as again:
        assert again.lookup("GameStart") == catalog.lookup("GameStart")
        assert again.lookup("FishCo") == catalog.lookup("FishCo")
        assert again.last_seq == 3 and again.fenced_epoch == 2
        assert again.trades_since(0) == catalog.trades_since(0)
        # Keys are remembered across the restart, and seq goes on.
        repeat = sell(again, 'b,with"quotes",commas', "FishCo", 4, epoch=2)
        assert not repeat.applied and repeat.result["seq"] == 2
        assert buy(again, "d", "BoarCo", 1, epoch=2).result["seq"] == 4


def test_start_is_fast_and_does_not_replay_a_long_history(tmp_path):
    data = tmp_path / "data"
    Catalog.open(data).close()
    conn = db.connect(data / "catalog.db", writer=True)
    quantity = 100
    for start in range(1, 50_001, 10_000):  # bulk, through the store's own commit statement
        trades = []
        for seq in range(start, start + 10_000):
            quantity += 1
            trades.append(Trade(seq, f"key-{seq}", "FishCo", "sell", 1, 1, quantity, seq))
        db.commit_batch(conn, trades, [Stock("FishCo", 12.25, quantity, 50_000)], None)
    conn.close()
    began = time.monotonic()
    with Catalog.open(data) as cat:
        took = time.monotonic() - began
        assert cat.last_seq == 50_000 and cat.lookup("FishCo")["quantity"] == 50_100
        assert sell(cat, "key-777", "FishCo", 1).result["seq"] == 777
    assert took < wall_budget(1.0), f"open took {took:.3f} s"


def test_closed_catalog_refuses_trades(tmp_path):
    cat = Catalog.open(tmp_path / "data")
    cat.close()
    with pytest.raises(BazaarError) as excinfo:
        buy(cat, "k", "GameStart", 1)
    assert code_of(excinfo) == "UNAVAILABLE"
    cat.close()  # twice is fine


# ---- write failures --------------------------------------------------------------------------


def test_failed_write_is_unavailable_and_trading_resumes(catalog, monkeypatch):
    buy(catalog, "before", "DruidCo", 1)
    real = db.commit_batch

    def full(*_args):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(db, "commit_batch", full)
    with pytest.raises(BazaarError) as excinfo:
        buy(catalog, "during", "DruidCo", 5)
    assert code_of(excinfo) == "UNAVAILABLE"
    assert "catalog.db" not in excinfo.value.message  # no file paths for users
    with pytest.raises(BazaarError) as excinfo:
        catalog.fence(9)
    assert code_of(excinfo) == "UNAVAILABLE"
    # Nothing of the failed writes shows, in memory or on disk.
    assert held(catalog, "DruidCo") == (99, 1) and catalog.last_seq == 1
    assert catalog.fenced_epoch == 1
    assert on_disk(catalog.data_dir)[2] == 1
    monkeypatch.setattr(db, "commit_batch", real)
    # The disk has room again: the same key now trades, with the next seq.
    assert buy(catalog, "during", "DruidCo", 5).result["seq"] == 2
    assert held(catalog, "DruidCo") == (94, 6)
    assert catalog.fence(9) == {"epoch": 9, "leader": None}


def test_trades_decided_on_top_of_a_failed_write_fail_too(catalog, monkeypatch):
    real = db.commit_batch
    entered, release = threading.Event(), threading.Event()

    def slow_then_full(*_args):
        entered.set()
        release.wait(10)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(db, "commit_batch", slow_then_full)
    outcomes = {}

    def trade(key, quantity):
        try:
            outcomes[key] = buy(catalog, key, "HelmetCo", quantity).result["stock"]["quantity"]
        except BazaarError as err:
            outcomes[key] = err.code

    first = threading.Thread(target=trade, args=("first", 10))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=trade, args=("second", 90))  # decided on 90 left
    second.start()
    # Decided (on the 90 the failing commit would leave) and queued behind it.
    wait_until(lambda: "second" in catalog._pending_keys, 30, msg="second trade queued")
    monkeypatch.setattr(db, "commit_batch", real)
    release.set()
    first.join(10)
    second.join(10)
    assert outcomes == {"first": "UNAVAILABLE", "second": "UNAVAILABLE"}
    assert held(catalog, "HelmetCo") == (100, 0)
    assert buy(catalog, "third", "HelmetCo", 100).result["seq"] == 1


def test_lookups_never_wait_for_a_trade_being_decided(catalog):
    """The RPC I/O thread answers lookups inline: they must not queue behind the store's lock."""
    sell(catalog, "k", "SickleCo", 3)
    answers = []
    with catalog._lock:  # as while a trade is being decided (a key look-up on disk)
        reader = threading.Thread(
            target=lambda: answers.append((catalog.lookup("SickleCo"), len(catalog.stocks())))
        )
        reader.start()
        reader.join(5)
        assert not reader.is_alive(), "lookup waited for the store's lock"
    assert answers[0][0]["quantity"] == 103 and answers[0][1] >= 10
