"""The upgrade from the pre-SQLite data dir (fixtures made by commit 40bb7ee)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from bazaar.errors import BazaarError
from bazaar.order import legacy
from bazaar.order.log import OrderLog, Record

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "orders-40bb7ee"


def old_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))[1:]


@pytest.mark.parametrize("rid", [1, 2, 3])
def test_an_old_data_dir_is_imported_whole_and_kept_aside(tmp_path, rid):
    shutil.copytree(FIXTURES / f"order{rid}", tmp_path, dirs_exist_ok=True)
    rows = old_rows(tmp_path / f"orders-{rid}.csv")
    state = json.loads((tmp_path / f"state-{rid}.json").read_text())
    log = OrderLog(tmp_path, rid).load()
    records = log.records_between(0, log.last_number)
    assert len(records) == len(rows) == 70
    assert [r.number for r in records] == list(range(70))
    for record, row in zip(records, rows, strict=True):
        seq = "" if record.trade_seq is None else str(record.trade_seq)
        assert [str(record.number), record.name, record.type, str(record.quantity),
                record.key, seq, str(record.epoch)] == row  # fmt: skip
    assert log.number_of('odd,"key"-7') == 7
    assert log.epoch_runs() == [[1, 0], [2, 30]]
    assert log.load_state() == (state["epoch"], state["leader"]) == (2, 2)
    assert log.trade_watermark() == 70
    names = sorted(p.name for p in tmp_path.iterdir())
    assert f"orders-{rid}.csv.imported" in names and f"state-{rid}.json.imported" in names
    assert f"orders-{rid}.csv" not in names and f"state-{rid}.json" not in names
    log.close()
    again = OrderLog(tmp_path, rid).load()  # the second start imports nothing
    assert again.last_number == 69 and again.load_state() == (2, 2)


def test_a_crash_between_import_and_rename_imports_once(tmp_path):
    shutil.copytree(FIXTURES / "order1", tmp_path, dirs_exist_ok=True)
    log = OrderLog(tmp_path, 1).load()
    log.close()
    for p in tmp_path.glob("*.imported"):  # as if the renames had not happened
        p.rename(p.with_name(p.name.removesuffix(legacy.ASIDE)))
    again = OrderLog(tmp_path, 1).load()
    assert again.last_number == 69 and not (tmp_path / "orders-1.csv").exists()


def test_an_unterminated_last_line_was_never_acknowledged_and_is_skipped(tmp_path):
    shutil.copytree(FIXTURES / "order1", tmp_path, dirs_exist_ok=True)
    with (tmp_path / "orders-1.csv").open("a") as fh:
        fh.write("70,GameStart,bu")
    assert OrderLog(tmp_path, 1).load().last_number == 69


def test_a_bad_line_in_the_middle_is_an_error_naming_it_and_imports_nothing(tmp_path):
    shutil.copytree(FIXTURES / "order1", tmp_path, dirs_exist_ok=True)
    path = tmp_path / "orders-1.csv"
    lines = path.read_text().split("\n")
    lines[5] = "garbage"
    path.write_text("\n".join(lines))
    with pytest.raises(BazaarError) as err:
        OrderLog(tmp_path, 1).load()
    assert err.value.code == "DATA_LOSS" and "orders-1.csv:6" in err.value.message
    assert path.exists()  # left in place for the operator


def test_a_state_file_alone_is_imported(tmp_path):
    (tmp_path / "state-2.json").write_text('{"epoch": 7, "leader": 3}')
    log = OrderLog(tmp_path, 2).load()
    assert log.load_state() == (7, 3) and log.last_number == -1


def test_parse_csv_of_an_empty_or_torn_header(tmp_path):
    path = tmp_path / "orders-1.csv"
    path.write_text("number,na")
    assert legacy.parse_csv(path) == []
    path.write_text(legacy.HEADER_LINE + "0,GameStart,buy,3,k,,1\n")
    assert legacy.parse_csv(path) == [Record(0, "GameStart", "buy", 3, "k", None, 1)]
