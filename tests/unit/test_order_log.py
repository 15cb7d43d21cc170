"""OrderLog and the replica state file on real files in a tmp dir."""

from __future__ import annotations

import os

import pytest

from bazaar.errors import BazaarError
from bazaar.order import log as orderlog
from bazaar.order.log import HEADER_LINE, OrderLog, Record, ReplicaState


def rec(n: int, key: str | None = None, epoch: int = 1) -> Record:
    return Record(n, "GameStart", "buy" if n % 2 else "sell", n + 1, key or f"k{n}", n + 1, epoch)


def test_new_log_has_the_header(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    assert log.path.read_bytes() == HEADER_LINE
    assert log.last_number == -1 and log.records_after(-1) == []


def test_append_load_roundtrip_and_index(tmp_path):
    log = OrderLog(tmp_path, 2).load()
    log.append_durable([rec(0), rec(1, key='odd,"key"')])
    log.append_durable([rec(2)])
    log.close()
    again = OrderLog(tmp_path, 2).load()
    assert again.records == [rec(0), rec(1, key='odd,"key"'), rec(2)]
    assert again.number_of('odd,"key"') == 1 and again.number_of("nope") is None
    assert [r.number for r in again.records_after(0)] == [1, 2]
    assert again.records_after(0, limit=1) == [rec(1, key='odd,"key"')]
    assert again.get(2) == rec(2) and again.get(3) is None and again.get(-1) is None
    assert again.path.read_bytes().splitlines()[1] == b"0,GameStart,sell,1,k0,1,1"


def test_append_must_be_consecutive(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    with pytest.raises(BazaarError):
        log.append_durable([rec(1)])


@pytest.mark.parametrize("tail", [b"3,GameSt", b"3,GameStart,buy,4,k3,4,1", b"\x00\x00\x00\n"])
def test_torn_tail_is_cut(tmp_path, tail):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(0), rec(1), rec(2)])
    log.close()
    good = log.path.read_bytes()
    with log.path.open("ab") as fh:
        fh.write(tail)
    again = OrderLog(tmp_path, 1).load()
    assert again.repaired and again.last_number == 2
    assert log.path.read_bytes() == good
    again.append_durable([rec(3)])
    assert OrderLog(tmp_path, 1).load().last_number == 3


def test_torn_header_is_rewritten(tmp_path):
    (tmp_path / "orders-1.csv").write_bytes(HEADER_LINE[:7])
    log = OrderLog(tmp_path, 1).load()
    assert log.path.read_bytes() == HEADER_LINE


def test_corruption_in_the_middle_is_an_error_naming_the_line(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(0), rec(1), rec(2)])
    log.close()
    lines = log.path.read_bytes().split(b"\n")
    lines[2] = b"garbage"
    log.path.write_bytes(b"\n".join(lines))
    with pytest.raises(BazaarError) as err:
        OrderLog(tmp_path, 1).load()
    assert "orders-1.csv:3" in err.value.message


def test_failed_write_is_cut_back_and_not_visible(tmp_path, monkeypatch):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(0)])
    before = log.path.read_bytes()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(orderlog.os, "fdatasync", full)
    with pytest.raises(BazaarError) as err:
        log.append_durable([rec(1)])
    assert err.value.code == "UNAVAILABLE" and "No space left" in err.value.message
    monkeypatch.undo()
    assert log.path.read_bytes() == before and log.last_number == 0
    log.append_durable([rec(1)])
    assert OrderLog(tmp_path, 1).load().last_number == 1


def test_truncate_from(tmp_path):
    log = OrderLog(tmp_path, 1).load()
    log.append_durable([rec(0), rec(1), rec(2)])
    log.truncate_from(1)
    assert log.last_number == 0 and log.number_of("k1") is None
    log.append_durable([rec(1, key="other", epoch=2)])
    assert OrderLog(tmp_path, 1).load().records == [rec(0), rec(1, key="other", epoch=2)]


def test_state_file_roundtrip_is_atomic(tmp_path):
    state = ReplicaState(tmp_path, 3)
    assert state.load() == (0, None)
    state.save(4, 2)
    assert state.load() == (4, 2)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_state_file_on_a_read_only_dir_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    state = ReplicaState(tmp_path, 1)
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(BazaarError) as err:
            state.save(1, 1)
        assert "epoch" in err.value.message
    finally:
        tmp_path.chmod(0o700)


def test_record_from_wire_is_strict():
    good = rec(0).to_wire()
    assert Record.from_wire(good) == rec(0)
    for bad in ({**good, "number": True}, {**good, "extra": 1}, {**good, "key": 3}, []):
        with pytest.raises(ValueError):
            Record.from_wire(bad)
