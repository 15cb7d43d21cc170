"""The catalog store on real files: the market CSV, the trade rules, the journal and the fence."""

from __future__ import annotations

import shutil
import threading

import pytest

from bazaar.catalog import store
from bazaar.catalog.store import Catalog, MarketFileError, Stock
from bazaar.errors import BazaarError

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


def buy(cat: Catalog, key: str, name: str, quantity: int, epoch: int = 0):
    return cat.trade(key, name, "buy", quantity, epoch)


def sell(cat: Catalog, key: str, name: str, quantity: int, epoch: int = 0):
    return cat.trade(key, name, "sell", quantity, epoch)


def held(cat: Catalog, name: str) -> tuple[int, int]:
    """(quantity, volume) of a stock."""
    stock = cat.lookup(name)
    return stock["quantity"], stock["volume"]


def crash_copy(cat: Catalog, dest):
    """The data dir as a crash would leave it: the files as they are now, no close()."""
    shutil.copytree(cat.data_dir, dest)
    return dest


# ---- the market file -------------------------------------------------------


def test_default_market_is_created_and_written(tmp_path):
    with Catalog.open(tmp_path / "fresh") as cat:
        stocks = {s["name"]: s for s in cat.stocks()}
    assert len(stocks) >= 10
    assert {"GameStart", "FishCo", "BoarCo", "MenhirCo"} <= set(stocks)
    for stock in stocks.values():
        assert stock["quantity"] == 100 and stock["volume"] == 0
        assert stock["max_volume"] is None and stock["price"] > 0
    on_disk = store.read_market(tmp_path / "fresh" / "catalog.csv")
    assert {name: s.to_dict() for name, s in on_disk.items()} == stocks


def test_market_csv_round_trip():
    market = {
        "A, Inc.": Stock("A, Inc.", 0.1, 7, 3, None),
        'Quote"Co': Stock('Quote"Co', 1234.5678, 0, 10, 10),
        "Plain": Stock("Plain", 3.0, 100, 0, 500),
    }
    text = store.format_market(market)
    assert text.splitlines()[0] == "name,price,quantity,volume,max_volume"
    assert store.parse_market(text) == market
    assert list(store.parse_market(text)) == list(market)  # order kept


def test_market_file_with_limits_loads(limited):
    assert limited.lookup("Capped") == {
        "name": "Capped",
        "price": 10.5,
        "quantity": 100,
        "volume": 0,
        "max_volume": 10,
    }
    assert limited.lookup("Open")["max_volume"] is None


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, "empty"),
        ("name,price,qty,volume,max_volume\nA,1,1,0,\n", 1, "header"),
        ("name,price,quantity,volume,max_volume\n", 1, "no stocks"),
        ("name,price,quantity,volume,max_volume\nA,1,1,0,\nB,abc,1,0,\n", 3, "price"),
        ("name,price,quantity,volume,max_volume\nA,1,1,0,\nB,nan,1,0,\n", 3, "price"),
        ("name,price,quantity,volume,max_volume\nA,1,-1,0,\n", 2, "quantity"),
        ("name,price,quantity,volume,max_volume\nA,1,1.5,0,\n", 2, "quantity"),
        ("name,price,quantity,volume,max_volume\nA,1,1,x,\n", 2, "volume"),
        ("name,price,quantity,volume,max_volume\nA,1,1,0,lots\n", 2, "max_volume"),
        ("name,price,quantity,volume,max_volume\nA,1,1,0\n", 2, "fields"),
        ("name,price,quantity,volume,max_volume\n,1,1,0,\n", 2, "name"),
        ("name,price,quantity,volume,max_volume\nA,1,1,0,\n\nA,2,2,0,\n", 4, "twice"),
        ('name,price,quantity,volume,max_volume\n"A,1,1,0,\n', 2, "CSV"),
    ],
)
def test_corrupt_market_file_names_file_and_line(tmp_path, text, line, words):
    data = tmp_path / "bad"
    data.mkdir()
    path = data / "catalog.csv"
    path.write_text(text)
    with pytest.raises(MarketFileError) as excinfo:
        Catalog.open(data)
    err = excinfo.value
    assert err.line == line
    assert str(path) in err.message and f"line {line}" in err.message
    assert words.lower() in err.message.lower()
    assert err.code == "DATA_LOSS"
    assert path.read_text() == text  # never silently replaced
    # The data dir was released: fixing the file is enough to start.
    path.write_text(LIMITED_MARKET)
    Catalog.open(data).close()


def test_market_file_not_utf8_names_line(tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    (data / "catalog.csv").write_bytes(
        b"name,price,quantity,volume,max_volume\nA,1,1,0,\n\xff,1,1,0,\n"
    )
    with pytest.raises(MarketFileError, match="line 3"):
        Catalog.open(data)


def test_unreadable_market_file_is_an_error(tmp_path):
    data = tmp_path / "bad"
    (data / "catalog.csv").mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(MarketFileError, match="catalog.csv: cannot read"):
        Catalog.open(data)


def test_one_catalog_per_data_dir(catalog):
    with pytest.raises(BazaarError) as excinfo:
        Catalog.open(catalog.data_dir)
    assert code_of(excinfo) == "FAILED_PRECONDITION"


# ---- lookups and trades ------------------------------------------------------


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


@pytest.mark.parametrize(
    "changes",
    [
        {"key": ""},
        {"key": "x" * 201},
        {"key": "line\nbreak"},
        {"key": 7},
        {"name": 5},
        {"name": ""},
        {"trade_type": "BUY"},
        {"trade_type": "short"},
        {"trade_type": None},
        {"quantity": 0},
        {"quantity": -1},
        {"quantity": True},
        {"quantity": 1.0},
        {"quantity": "1"},
        {"quantity": store.MAX_TRADE_QUANTITY + 1},
        {"epoch": True},
        {"epoch": -1},
        {"epoch": "1"},
        {"epoch": None},
    ],
)
def test_invalid_trade_arguments(catalog, changes):
    args = {"key": "k", "name": "GameStart", "trade_type": "buy", "quantity": 1, "epoch": 0}
    args.update(changes)
    with pytest.raises(BazaarError) as excinfo:
        catalog.trade(**args)
    assert code_of(excinfo) == "INVALID_ARGUMENT"
    assert catalog.last_seq == 0


def test_longest_key_is_accepted(catalog):
    assert buy(catalog, "x" * 200, "GameStart", 1).applied


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
            limited.trade("c", "Capped", trade_type, 1, 0)
        assert code_of(excinfo) == "FAILED_PRECONDITION"
        assert "limit" in excinfo.value.message
    assert held(limited, "Capped") == (102, 10)
    assert limited.last_seq == 2
    # No limit on the other stock.
    sell(limited, "d", "Open", 1000)
    assert limited.lookup("Open")["volume"] == 1000


def test_max_volume_refuses_one_trade_that_would_jump_past_it(limited):
    with pytest.raises(BazaarError) as excinfo:
        buy(limited, "k", "Capped", 11)
    assert code_of(excinfo) == "FAILED_PRECONDITION"
    assert limited.lookup("Capped")["volume"] == 0


# ---- idempotency ---------------------------------------------------------------


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
        catalog.trade("order-1", name, trade_type, quantity, 0)
    assert code_of(excinfo) == "ALREADY_EXISTS"
    assert excinfo.value.details == {"seq": 1}
    assert catalog.last_seq == 1 and catalog.lookup("FishCo")["quantity"] == 100


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


# ---- fencing ---------------------------------------------------------------------


def test_fence_only_rises_and_refuses_older_epochs(catalog):
    assert catalog.fence(3) == {"epoch": 3}
    assert catalog.fence(1) == {"epoch": 3}
    with pytest.raises(BazaarError) as excinfo:
        buy(catalog, "old-leader", "GameStart", 1, epoch=2)
    assert code_of(excinfo) == "ABORTED"
    assert excinfo.value.details == {"epoch": 3}
    assert catalog.lookup("GameStart")["quantity"] == 100
    assert buy(catalog, "new-leader", "GameStart", 1, epoch=3).applied
    # An old leader cannot even have an earlier result repeated to it.
    with pytest.raises(BazaarError) as excinfo:
        buy(catalog, "new-leader", "GameStart", 1, epoch=2)
    assert code_of(excinfo) == "ABORTED"


def test_a_trade_fences_its_own_epoch(catalog):
    buy(catalog, "k1", "GameStart", 1, epoch=5)
    assert catalog.fenced_epoch == 5
    with pytest.raises(BazaarError) as excinfo:
        buy(catalog, "k2", "GameStart", 1, epoch=4)
    assert excinfo.value.details == {"epoch": 5}
    assert catalog.fence(2) == {"epoch": 5}


def test_fence_survives_restart(tmp_path):
    data = tmp_path / "data"
    with Catalog.open(data) as cat:
        cat.fence(7)
    assert (data / "fence.txt").read_text() == "7\n"
    with Catalog.open(data) as cat:
        assert cat.fence(0) == {"epoch": 7}
        buy(cat, "k", "FishCo", 1, epoch=9)
    (data / "catalog.csv").unlink()  # the journal alone still carries epoch 9
    with Catalog.open(data) as cat:
        assert cat.fenced_epoch == 9


def test_invalid_fence_epoch(catalog):
    for bad in (-1, True, "3", None, 1.5):
        with pytest.raises(BazaarError) as excinfo:
            catalog.fence(bad)
        assert code_of(excinfo) == "INVALID_ARGUMENT"


def test_damaged_fence_file_is_an_error(tmp_path):
    data = tmp_path / "data"
    Catalog.open(data).close()
    (data / "fence.txt").write_text("seven\n")
    with pytest.raises(MarketFileError, match="fence.txt, line 1"):
        Catalog.open(data)


# ---- trades_since ------------------------------------------------------------------


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


# ---- the journal ----------------------------------------------------------------------


def test_journal_replays_over_a_stale_snapshot(catalog, tmp_path):
    buy(catalog, "a", "GameStart", 10)
    sell(catalog, 'b,with "quotes", commas', "FishCo", 4)
    buy(catalog, "c", "GameStart", 1, epoch=2)
    copy = crash_copy(catalog, tmp_path / "crashed")
    # Nobody wrote a snapshot: catalog.csv still says 100 everywhere.
    assert store.read_market(copy / "catalog.csv")["GameStart"].quantity == 100
    with Catalog.open(copy) as again:
        # The snapshot is brought up to date at once, not at the next trade.
        assert store.read_market(copy / "catalog.csv")["GameStart"].quantity == 89
        assert again.lookup("GameStart") == catalog.lookup("GameStart")
        assert again.lookup("FishCo") == catalog.lookup("FishCo")
        assert again.last_seq == 3 and again.fenced_epoch == 2
        assert again.trades_since(0) == catalog.trades_since(0)
        # Keys are remembered across the restart, and seq goes on.
        repeat = sell(again, 'b,with "quotes", commas', "FishCo", 4, epoch=2)
        assert not repeat.applied and repeat.result["seq"] == 2
        assert buy(again, "d", "BoarCo", 1, epoch=2).result["seq"] == 4


def test_snapshot_and_journal_agree_after_close(tmp_path):
    data = tmp_path / "data"
    with Catalog.open(data) as cat:
        buy(cat, "a", "DruidCo", 30)
        expected = cat.stocks()
    snapshot = store.read_market(data / "catalog.csv")
    assert [s.to_dict() for s in snapshot.values()] == expected
    with Catalog.open(data) as cat:  # replaying over an up-to-date snapshot changes nothing
        assert cat.stocks() == expected


def test_write_snapshot(catalog):
    buy(catalog, "a", "PotionCo", 2)
    assert catalog.wait_snapshot_due(0)
    catalog.write_snapshot()
    assert not catalog.wait_snapshot_due(0)
    assert store.read_market(catalog.market_path)["PotionCo"].quantity == 98
    assert not list(catalog.data_dir.glob("*.tmp"))


@pytest.mark.parametrize(
    "tail",
    [
        b"3,c,GameStart,buy,1,0,8",  # cut inside the line
        b"3,c,GameStart,buy,1,0,88,12,00000000\n",  # complete line, wrong checksum
        b"\x00\x00\x00\x00",  # zeros left by the file system
        b"3,c,GameSt",
    ],
)
def test_torn_last_journal_line_is_cut_off(catalog, tmp_path, tail):
    buy(catalog, "a", "GameStart", 10)
    buy(catalog, "b", "GameStart", 1)
    copy = crash_copy(catalog, tmp_path / "crashed")
    journal = copy / "trades.csv"
    intact = journal.read_bytes()
    journal.write_bytes(intact + tail)
    with Catalog.open(copy) as again:
        assert again.last_seq == 2
        assert again.lookup("GameStart")["quantity"] == 89
        assert journal.read_bytes() == intact  # repaired on disk
        assert buy(again, "c", "GameStart", 1).result["seq"] == 3
    with Catalog.open(copy) as again:
        assert again.last_seq == 3


def test_damaged_line_before_intact_ones_is_an_error(catalog, tmp_path):
    for i in range(3):
        buy(catalog, f"k{i}", "GameStart", 1)
    copy = crash_copy(catalog, tmp_path / "crashed")
    journal = copy / "trades.csv"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"GameStart", b"GameStarz")  # line 3 of the file
    journal.write_bytes(b"".join(lines))
    with pytest.raises(MarketFileError) as excinfo:
        Catalog.open(copy)
    assert excinfo.value.line == 3 and "trades.csv, line 3" in excinfo.value.message
    assert journal.read_bytes() == b"".join(lines)  # left alone for a human to look at


def test_journal_naming_an_unknown_stock_is_an_error(catalog, tmp_path):
    buy(catalog, "k", "BardCo", 1)
    copy = crash_copy(catalog, tmp_path / "crashed")
    market = store.read_market(copy / "catalog.csv")
    del market["BardCo"]
    store.write_market(copy / "catalog.csv", market)
    with pytest.raises(MarketFileError, match="trades.csv, line 2.*BardCo"):
        Catalog.open(copy)


def test_journal_lines_round_trip():
    trade = store.Trade(12, 'k,"1"', "A, Inc.", "sell", 5, 3, 105, 40)
    line = store.encode_journal_line(trade)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert store.decode_journal_line(line[:-1]) == trade


def test_empty_or_headless_journal_is_recreated(tmp_path):
    data = tmp_path / "data"
    Catalog.open(data).close()
    for content in (b"", b"seq,key,na"):
        (data / "trades.csv").write_bytes(content)
        with Catalog.open(data) as cat:
            assert cat.last_seq == 0
        assert (data / "trades.csv").read_bytes() == store.JOURNAL_HEADER


def test_journal_with_a_wrong_header_is_an_error(tmp_path):
    data = tmp_path / "data"
    Catalog.open(data).close()
    (data / "trades.csv").write_bytes(b"number,name\n1,x\n")
    with pytest.raises(MarketFileError, match="trades.csv, line 1"):
        Catalog.open(data)


def test_closed_catalog_refuses_trades(tmp_path):
    cat = Catalog.open(tmp_path / "data")
    cat.close()
    with pytest.raises(BazaarError) as excinfo:
        buy(cat, "k", "GameStart", 1)
    assert code_of(excinfo) == "UNAVAILABLE"
    cat.close()  # twice is fine
