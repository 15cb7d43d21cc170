"""`bazaar export orders`: the seed's CSV of a replica's log, read-only."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from click.testing import CliRunner

from bazaar.commands import main
from bazaar.order.log import OrderLog, Record

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "orders-40bb7ee"


def test_export_prints_the_seed_csv_while_the_log_is_open(tmp_path):
    log = OrderLog(tmp_path, 2).load()  # stays open, as in a running replica
    log.append_durable([Record(0, "FishCo", "sell", 5, 'k,"0"', 1, 1)])
    log.append_durable([Record(1, "GameStart", "buy", 2, "k1", 2, 1)])
    res = CliRunner().invoke(main, ["export", "orders", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.output == "number,name,type,quantity\n0,FishCo,sell,5\n1,GameStart,buy,2\n"
    log.close()


def test_export_of_an_upgraded_data_dir_has_every_old_order(tmp_path):
    shutil.copytree(FIXTURES / "order3", tmp_path, dirs_exist_ok=True)
    with (tmp_path / "orders-3.csv").open(newline="") as fh:
        old = [row[:4] for row in csv.reader(fh)]
    OrderLog(tmp_path, 3).load().close()
    res = CliRunner().invoke(main, ["export", "orders", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert list(csv.reader(io.StringIO(res.output))) == old


def test_export_needs_a_replica_when_the_dir_is_ambiguous_or_empty(tmp_path):
    res = CliRunner().invoke(main, ["export", "orders", "--data-dir", str(tmp_path)])
    assert res.exit_code != 0 and "--replica" in res.output
    res = CliRunner().invoke(
        main, ["export", "orders", "--data-dir", str(tmp_path), "--replica", "2"]
    )
    assert res.exit_code != 0 and "no order log" in res.output and "number" not in res.output
