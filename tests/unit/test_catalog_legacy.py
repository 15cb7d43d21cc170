"""Upgrading a data dir of the CSV release: imported once, in one transaction, old files kept."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import pytest

from bazaar.catalog import legacy
from bazaar.catalog.market_csv import MarketFileError
from bazaar.catalog.store import Catalog
from bazaar.errors import BazaarError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "catalog-40bb7ee"
MARKET = "name,price,quantity,volume,max_volume\nA,1.5,100,0,\nB,2.0,50,0,30\n"


@pytest.fixture
def upgraded(tmp_path):
    """A copy of the 40bb7ee data dir."""
    data = tmp_path / "old"
    shutil.copytree(FIXTURE, data)
    return data


def expected() -> dict:
    return json.loads((FIXTURES / "catalog-40bb7ee.expected.json").read_text())


def journal_line(seq, key, name, kind, quantity, epoch, new_quantity, new_volume) -> bytes:
    """A line as the CSV release wrote it (key and name here need no quoting)."""
    body = f"{seq},{key},{name},{kind},{quantity},{epoch},{new_quantity},{new_volume}".encode()
    return body + b",%08x\n" % zlib.crc32(body)


def old_dir(tmp_path, lines: list[bytes], fence: str | None = None) -> Path:
    data = tmp_path / "csv"
    data.mkdir()
    (data / "catalog.csv").write_text(MARKET)
    (data / "trades.csv").write_bytes(legacy.JOURNAL_HEADER + b"".join(lines))
    if fence is not None:
        (data / "fence.txt").write_text(fence)
    return data


def test_data_dir_of_commit_40bb7ee_is_imported(upgraded):
    originals = {p.name: p.read_bytes() for p in upgraded.iterdir()}
    want = expected()
    with Catalog.open(upgraded) as cat:
        assert {s["name"]: s for s in cat.stocks()} == want["market"]
        assert cat.last_seq == len(want["acknowledged"]) == 63
        assert cat.fenced_epoch == want["fence"]["epoch"] == 3
        listed = cat.trades_since(0)["trades"]
        assert [t["seq"] for t in listed] == list(range(1, 64))
        assert {t["key"] for t in listed} == set(want["acknowledged"])
        # Every imported key, retried, gets its original result and trades nothing,
        # also 'e3-"quoted", key', whose space today's rule refuses in a new key.
        for key, result in want["acknowledged"].items():
            outcome = cat.trade(key, result["name"], result["type"], result["quantity"], 3)
            assert not outcome.applied and outcome.result == result, key
        assert 'e3-"quoted", key' in want["acknowledged"]
        with pytest.raises(BazaarError) as excinfo:
            cat.trade('e3-"quoted", new', "GameStart", "buy", 1, 3)
        assert excinfo.value.code == "INVALID_ARGUMENT"
        assert {s["name"]: s for s in cat.stocks()} == want["market"]
        # The fence came along: the epoch-2 leader stays fenced off.
        with pytest.raises(BazaarError) as excinfo:
            cat.trade("stale", "GameStart", "buy", 1, 2)
        assert excinfo.value.code == "ABORTED"
        assert cat.trade("new", "GameStart", "buy", 1, 3).result["seq"] == 64  # seq goes on
    # The old files are kept aside, byte for byte, and never read again.
    names = sorted(p.name for p in upgraded.iterdir())
    assert names == [
        "catalog.csv.imported",
        "catalog.db",
        "catalog.lock",
        "fence.txt.imported",
        "trades.csv.imported",
    ]
    for name, data in originals.items():
        assert (upgraded / f"{name}.imported").read_bytes() == data
    with Catalog.open(upgraded) as cat:
        assert cat.last_seq == 64


def test_capped_stock_keeps_its_limit_after_import(upgraded):
    with Catalog.open(upgraded) as cat:
        assert cat.lookup("CappedCo")["volume"] == cat.lookup("CappedCo")["max_volume"] == 20
        with pytest.raises(BazaarError) as excinfo:
            cat.trade("more", "CappedCo", "sell", 1, 3)
        assert excinfo.value.code == "FAILED_PRECONDITION"


def test_torn_last_journal_line_is_left_out(tmp_path):
    lines = [
        journal_line(1, "a", "A", "buy", 10, 1, 90, 10),
        journal_line(2, "b", "B", "sell", 5, 2, 55, 5),
    ]
    for tail in (b"3,c,A,buy,1,0,8", b"3,c,A,buy,1,2,89,11,00000000\n", b"\x00\x00\x00"):
        data = old_dir(tmp_path, [*lines, tail])
        with Catalog.open(data) as cat:
            assert cat.last_seq == 2 and cat.fenced_epoch == 2
            assert (cat.lookup("A")["quantity"], cat.lookup("B")["volume"]) == (90, 5)
            assert cat.trade("c", "A", "buy", 1, 2).result["seq"] == 3  # the key is free
        # The torn file is kept as it was, for a human to look at.
        assert (data / "trades.csv.imported").read_bytes().endswith(tail)
        shutil.rmtree(data)


@pytest.mark.parametrize(
    ("lines", "line", "words"),
    [
        (
            [
                journal_line(1, "a", "A", "buy", 1, 1, 99, 1).replace(b"buy", b"buz"),
                journal_line(2, "b", "A", "buy", 1, 1, 98, 2),
            ],
            2,
            "followed by intact",
        ),
        ([journal_line(2, "a", "A", "buy", 1, 1, 99, 1)], 2, "seq 2 where 1"),
        (
            [
                journal_line(1, "a", "A", "buy", 1, 1, 99, 1),
                journal_line(2, "a", "A", "buy", 1, 1, 98, 2),
            ],
            3,
            "appears twice",
        ),
        ([journal_line(1, "a", "Gone", "buy", 1, 1, 99, 1)], 2, "'Gone' is not in"),
    ],
)
def test_damaged_journal_stops_the_start_and_is_left_alone(tmp_path, lines, line, words):
    data = old_dir(tmp_path, lines)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    with pytest.raises(MarketFileError) as excinfo:
        Catalog.open(data)
    assert excinfo.value.line == line and words in excinfo.value.message
    assert f"trades.csv, line {line}" in excinfo.value.message
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.name in before} == before


def test_bad_header_or_fence_file_is_an_error(tmp_path):
    data = old_dir(tmp_path, [], fence="seven\n")
    with pytest.raises(MarketFileError, match="fence.txt, line 1"):
        Catalog.open(data)
    (data / "fence.txt").write_text("4\n")
    (data / "trades.csv").write_bytes(b"number,name\n1,x\n")
    with pytest.raises(MarketFileError, match="trades.csv, line 1"):
        Catalog.open(data)


def test_empty_journal_and_fence_file(tmp_path):
    data = old_dir(tmp_path, [], fence="4\n")
    (data / "trades.csv").write_bytes(b"seq,key,na")  # the release died creating it
    with Catalog.open(data) as cat:
        assert cat.last_seq == 0 and cat.fenced_epoch == 4


def test_journal_without_market_file_is_an_error(tmp_path):
    data = old_dir(tmp_path, [])
    (data / "catalog.csv").unlink()
    with pytest.raises(MarketFileError, match="catalog.csv: is missing"):
        Catalog.open(data)


def test_crash_between_import_and_rename_does_not_import_twice(tmp_path):
    data = old_dir(tmp_path, [journal_line(1, "a", "A", "buy", 10, 1, 90, 10)])
    with Catalog.open(data) as cat:
        cat.trade("b", "A", "buy", 5, 1)
    # As if the import had committed but the process died before the renames.
    shutil.copy(data / "catalog.csv.imported", data / "catalog.csv")
    shutil.copy(data / "trades.csv.imported", data / "trades.csv")
    with Catalog.open(data) as cat:
        assert cat.last_seq == 2 and cat.lookup("A")["quantity"] == 85
    assert not (data / "catalog.csv").exists()
    assert (data / "catalog.csv.imported.1").read_text() == MARKET  # nothing overwritten


def test_a_long_journal_is_imported_in_bounded_memory(tmp_path):
    import tracemalloc

    count = 10_000
    lines = [
        journal_line(seq, f"key-{seq:06d}-{'x' * 30}", "A", "sell", 1, 1, 100 + seq, seq)
        for seq in range(1, count + 1)
    ]
    data = old_dir(tmp_path, lines)
    del lines
    tracemalloc.start()
    try:
        with Catalog.open(data) as cat:
            _, peak = tracemalloc.get_traced_memory()
            assert cat.last_seq == count and cat.lookup("A")["quantity"] == 100 + count
    finally:
        tracemalloc.stop()
    # Streamed: a list of 10,000 trades and a set of their keys alone would take ~4 MB.
    assert peak < 2**20, f"import peaked at {peak / 2**20:.1f} MB of Python objects"
