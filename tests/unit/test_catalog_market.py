"""The market's rules without any I/O: trade checks, the volume limit, the fence, the CSV format."""

from __future__ import annotations

import pytest

from bazaar.catalog import market_csv
from bazaar.catalog.market import (
    MAX_EPOCH,
    Fence,
    Stock,
    Trade,
    admit,
    apply_trade,
    check_epoch,
    check_leader,
    check_trade,
    default_market,
)
from bazaar.catalog.market_csv import MarketFileError
from bazaar.errors import BazaarError
from bazaar.rules import MAX_QUANTITY


def code_of(excinfo) -> str:
    return excinfo.value.code


# ---- trades ------------------------------------------------------------------------


def test_buy_and_sell_move_quantity_and_volume():
    stock = Stock("A", 1.0, 10)
    assert apply_trade(stock, "A", "buy", 4) == (6, 4)
    assert apply_trade(stock, "A", "sell", 4) == (14, 4)
    assert apply_trade(stock, "A", "buy", 10) == (0, 10)  # all of it
    assert stock == Stock("A", 1.0, 10)  # the rules only compute; the store applies


def test_buy_more_than_available_is_refused():
    with pytest.raises(BazaarError, match="only 3 available") as excinfo:
        apply_trade(Stock("A", 1.0, 3), "A", "buy", 4)
    assert code_of(excinfo) == "FAILED_PRECONDITION"
    assert excinfo.value.details == {"available": 3}


@pytest.mark.parametrize("trade_type", ["buy", "sell"])
def test_max_volume_is_a_ceiling_for_buys_and_sells(trade_type):
    stock = Stock("Capped", 1.0, 100, volume=8, max_volume=10)
    assert apply_trade(stock, "Capped", trade_type, 2)[1] == 10  # exactly at the limit
    with pytest.raises(BazaarError, match="limit") as excinfo:
        apply_trade(stock, "Capped", trade_type, 3)
    assert code_of(excinfo) == "FAILED_PRECONDITION"
    assert excinfo.value.details == {"volume": 8, "max_volume": 10}


def test_unknown_stock_is_not_found():
    with pytest.raises(BazaarError) as excinfo:
        apply_trade(None, "Nope", "buy", 1)
    assert code_of(excinfo) == "NOT_FOUND"


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
        {"quantity": MAX_QUANTITY + 1},
        {"epoch": 0},
        {"epoch": True},
        {"epoch": -1},
        {"epoch": "1"},
        {"epoch": None},
        {"epoch": MAX_EPOCH + 1},
        {"leader": 0},
        {"leader": True},
        {"leader": "2"},
    ],
)
def test_invalid_trade_arguments(changes):
    args = {"key": "k", "name": "A", "trade_type": "buy", "quantity": 1, "epoch": 1, "leader": 3}
    check_trade(**args)  # the baseline passes
    args.update(changes)
    with pytest.raises(BazaarError) as excinfo:
        check_trade(**args)
    assert code_of(excinfo) == "INVALID_ARGUMENT"


def test_epoch_and_leader_bounds():
    assert check_epoch(1) == 1 and check_epoch(MAX_EPOCH) == MAX_EPOCH
    assert check_leader(None) is None and check_leader(3) == 3


def test_trade_result_repeats_the_stock_after_the_trade():
    trade = Trade(7, "k", "A", "sell", 2, 1, 12, 5)
    assert trade.result(Stock("A", 2.5, 99, 99, 50)) == {
        "seq": 7,
        "key": "k",
        "name": "A",
        "type": "sell",
        "quantity": 2,
        "stock": {"name": "A", "price": 2.5, "quantity": 12, "volume": 5, "max_volume": 50},
    }


def test_default_market():
    market = default_market()
    assert len(market) >= 10 and {"GameStart", "FishCo", "BoarCo", "MenhirCo"} <= set(market)
    assert all(
        s.quantity == 100 and s.volume == 0 and s.max_volume is None for s in market.values()
    )


# ---- the fence -------------------------------------------------------------------------


def test_fence_rises_and_refuses_lower_epochs():
    fence = admit(Fence(), 3, 2)
    assert fence == Fence(3, 2)
    assert admit(fence, 4, 1) == Fence(4, 1)  # a higher epoch: any leader
    with pytest.raises(BazaarError) as excinfo:
        admit(fence, 2, 2)
    assert code_of(excinfo) == "ABORTED"
    assert excinfo.value.details == {"epoch": 3, "leader": 2}


def test_one_leader_per_epoch():
    fence = Fence(5, 2)
    assert admit(fence, 5, 2) is fence
    with pytest.raises(BazaarError, match="belongs to leader 2") as excinfo:
        admit(fence, 5, 3)
    assert code_of(excinfo) == "ABORTED"
    assert excinfo.value.details == {"epoch": 5, "leader": 2}


def test_a_caller_without_leader_is_judged_by_its_epoch():
    assert admit(Fence(5, 2), 5, None) == Fence(5, 2)  # the older protocol: passes, changes nothing
    assert admit(Fence(5, None), 5, 3) == Fence(5, 3)  # an unknown holder: the first to name itself
    assert admit(Fence(5, 2), 6, None) == Fence(6, None)


# ---- the market CSV ------------------------------------------------------------------------


def test_market_csv_round_trip():
    market = {
        "A, Inc.": Stock("A, Inc.", 0.1, 7, 3, None),
        'Quote"Co': Stock('Quote"Co', 1234.5678, 0, 10, 10),
        "Plain": Stock("Plain", 3.0, 100, 0, 500),
    }
    text = market_csv.format_market(market)
    assert text.splitlines()[0] == "name,price,quantity,volume,max_volume"
    assert market_csv.parse_market(text) == market
    assert list(market_csv.parse_market(text)) == list(market)  # order kept


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
def test_bad_market_csv_names_file_and_line(text, line, words):
    with pytest.raises(MarketFileError) as excinfo:
        market_csv.parse_market(text, "some/catalog.csv")
    err = excinfo.value
    assert err.line == line and err.code == "DATA_LOSS"
    assert f"some/catalog.csv, line {line}" in err.message
    assert words.lower() in err.message.lower()


def test_market_bytes_must_be_utf8():
    with pytest.raises(MarketFileError, match="line 3"):
        market_csv.decode_market(b"name,price,quantity,volume,max_volume\nA,1,1,0,\n\xff,1,1,0,\n")
    bom = "\ufeffname,price,quantity,volume,max_volume\nA,1,1,0,\n".encode()
    assert list(market_csv.decode_market(bom)) == ["A"]
