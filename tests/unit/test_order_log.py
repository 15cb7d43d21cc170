"""OrderLog (`orders-<id>.db`) on real SQLite files in a tmp dir."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from bazaar.errors import BazaarError
from bazaar.order.log import OrderLog, Record, db_path, read_only_rows


def rec(n: int, key: str | None = None, epoch: int = 1, seq: int | None = -1) -> Record:
    seq = n + 1 if seq == -1 else seq
    return Record(n, "GameStart", "buy" if n % 2 else "sell", n + 1, key or f"k{n}", seq, epoch)


def all_records(log: OrderLog) -> list[Record]:
    return log.records_between(0, log.last_number)


def test_new_log_is_empty_and_in_wal_mode(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    assert log.path == tmp_path / "orders-1.db"
    assert log.last_number == -1 and log.last() == (-1, 0) and log.records_after(-1) == []
    assert log.epoch_runs() == [] and log.load_state() == (0, None)
    conn = sqlite3.connect(log.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_append_reopen_roundtrip_and_lookups(tmp_path):
    log = OrderLog(tmp_path, 2).load()
    log.append_durable([rec(0), rec(1, key='odd,"key"')])
    log.append_durable([rec(2, seq=None)])
    log.close()
    again = OrderLog(tmp_path, 2).load()
    assert all_records(again) == [rec(0), rec(1, key='odd,"key"'), rec(2, seq=None)]
    assert again.last() == (2, 1)
    assert again.number_of('odd,"key"') == 1 and again.number_of("nope") is None
    assert [r.number for r in again.records_after(0)] == [1, 2]
    assert again.records_after(0, limit=1) == [rec(1, key='odd,"key"')]
    assert again.get(2) == rec(2, seq=None) and again.get(3) is None and again.get(-1) is None
    assert again.epoch_at(0) == 1 and again.epoch_at(9) is None


def test_records_after_pages_by_size(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(n, key="k" * 200 + str(n)) for n in range(50)])
    page = log.records_after(-1, limit=40, max_bytes=2000)
    assert 1 <= len(page) < 40 and sum(r.wire_size() for r in page) <= 2000
    assert [r.number for r in page] == list(range(len(page)))
    assert len(log.records_after(-1, limit=1, max_bytes=1)) == 1  # always progress


def test_append_must_be_consecutive(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    with pytest.raises(BazaarError):
        log.append_durable([rec(1)])


def test_epoch_runs_follow_appends_and_truncations(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(0), rec(1)])
    log.append_durable([rec(2, epoch=3), rec(3, epoch=3), rec(4, epoch=4)])
    assert log.epoch_runs() == [[1, 0], [3, 2], [4, 4]]
    assert log.epoch_runs(upto=3) == [[1, 0], [3, 2]]
    log.truncate_from(3)
    assert log.epoch_runs() == [[1, 0], [3, 2]]
    log.truncate_from(2)
    assert log.epoch_runs() == [[1, 0]]
    log.append_durable([rec(2, key="other", epoch=5)])
    log.close()
    assert OrderLog(tmp_path, 1).load().epoch_runs() == [[1, 0], [5, 2]]


def test_truncate_from(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(0), rec(1), rec(2)])
    log.truncate_from(1)
    assert log.last() == (0, 1) and log.number_of("k1") is None and log.get(1) is None
    log.truncate_from(5)  # nothing there: nothing happens
    log.append_durable([rec(1, key="other", epoch=2)])
    log.close()
    assert all_records(OrderLog(tmp_path, 1).load()) == [rec(0), rec(1, key="other", epoch=2)]


def test_a_full_database_is_a_clear_error_and_changes_nothing(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(0)])
    pages = log._db.execute("PRAGMA page_count").fetchone()[0]
    log._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL on the next page
    big = [rec(n, key=f"{n}-" + "x" * 200) for n in range(1, 200)]
    with pytest.raises(BazaarError) as err:
        log.append_durable(big)
    assert err.value.code == "UNAVAILABLE" and "No space left on device" in err.value.message
    assert log.last_number == 0 and log.get(1) is None
    log._db.execute("PRAGMA max_page_count = 1073741823")
    log.append_durable(big)
    log.close()
    assert OrderLog(tmp_path, 1).load().last_number == 199


def test_a_duplicate_key_is_refused_and_changes_nothing(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(0)])
    with pytest.raises(BazaarError) as err:
        log.append_durable([rec(1), rec(2, key="k0")])
    assert "UNIQUE" in err.value.message and log.last_number == 0 and log.get(1) is None


def test_state_roundtrip(tmp_path):
    log = OrderLog(tmp_path, 3).load()
    assert log.load_state() == (0, None)
    log.save_state(4, 2)
    log.save_state(5, None)
    log.close()
    assert OrderLog(tmp_path, 3).load().load_state() == (5, None)


def test_a_read_only_data_dir_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(BazaarError) as err:
            OrderLog(tmp_path, 1).load()
        assert err.value.code == "UNAVAILABLE" and "orders-1.db" in err.value.message
    finally:
        tmp_path.chmod(0o700)


def test_trade_watermark_is_the_end_of_the_gapless_prefix(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    assert log.trade_watermark() == 0
    seqs = [*range(1, 3001), 3002, 3001, None, 3004]  # 3003 missing
    log.append_durable([rec(n, seq=s) for n, s in enumerate(seqs)])
    assert log.trade_watermark() == 3002
    assert log.trade_watermark(after=2000) == 3002
    log.append_durable([rec(len(seqs), seq=3003)])
    assert log.trade_watermark(after=3002) == 3004


def test_readers_see_only_committed_records_while_the_writer_runs(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    stop = threading.Event()

    def write():
        n = 0
        while not stop.is_set() and n < 2000:
            log.append_durable([rec(i) for i in range(n, n + 50)])
            n += 50

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(20):
            rows = list(read_only_rows(db_path(tmp_path, 1)))  # as `bazaar export` reads
            assert [r[0] for r in rows] == list(range(len(rows)))
            assert len(rows) % 50 == 0  # whole batches only
    finally:
        stop.set()
        writer.join()


def test_read_only_rows_of_a_missing_log_is_not_found(tmp_path):
    with pytest.raises(BazaarError) as err:
        list(read_only_rows(db_path(tmp_path, 1)))
    assert err.value.code == "NOT_FOUND"


def test_record_from_wire_is_strict():
    good = rec(0).to_wire()
    assert Record.from_wire(good) == rec(0)
    for bad in ({**good, "number": True}, {**good, "extra": 1}, {**good, "key": 3}, []):
        with pytest.raises(ValueError):
            Record.from_wire(bad)


def test_write_cuts_and_appends_in_one_transaction(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(0), rec(1)])
    restamped = rec(1, epoch=2)  # a new leader's re-stamp: same order, its epoch
    with pytest.raises(BazaarError):  # the append fails: the cut must not land either
        log.write([1, [restamped, rec(2, key="k0", epoch=2)]])  # a duplicate key
    assert all_records(log) == [rec(0), rec(1)] and log.last() == (1, 1)
    log.write([1, [restamped], [rec(2, epoch=2)]])
    assert all_records(log) == [rec(0), restamped, rec(2, epoch=2)]
    assert log.last() == (2, 2) and log.epoch_runs() == [[1, 0], [2, 1]]


def test_the_trade_watermark_is_kept_lowered_by_truncations_and_saved(tmp_path, monkeypatch):
    from bazaar.order import log as orderlog

    monkeypatch.setattr(orderlog, "WATERMARK_SAVE_EVERY", 100)
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(n) for n in range(500)])  # seqs 1..500
    assert log.trade_watermark() == 500 and log._wm == 500
    log.truncate_from(300)  # seqs 301..500 gone
    assert log._wm == 300 and log.trade_watermark() == 300
    log.append_durable([rec(300, key="x", seq=None), rec(301, key="y", seq=302)])
    assert log.trade_watermark() == 300  # 301 missing
    log.close()
    again = OrderLog(tmp_path, 1).load()
    assert again._wm == 300  # saved: a start does not count from zero
    again.append_durable([rec(302, key="z", seq=301)])
    assert again.trade_watermark() == 302


def test_a_caller_bound_never_poisons_the_kept_watermark(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(n) for n in range(10)])  # seqs 1..10
    assert log.trade_watermark(after=50) == 50  # the caller vouches for 1..50
    assert log.trade_watermark() == 10


def test_record_to_wire_has_every_field():
    import dataclasses

    record = Record(3, "GameStart", "sell", 7, "k-3", 12, 2)
    assert record.to_wire() == dataclasses.asdict(record)  # spelled out, none forgotten
    assert Record.from_wire(record.to_wire()) == record
