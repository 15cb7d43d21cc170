"""bazaar.backup and `bazaar backup`: what is copied, in which order, and the clear errors."""

import sqlite3

from click.testing import CliRunner

from bazaar.backup import databases
from bazaar.commands import main


def make_db(path, table, rows):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"CREATE TABLE {table} (n INTEGER)")
    conn.executemany(f"INSERT INTO {table} VALUES (?)", [(i,) for i in range(rows)])
    conn.commit()
    return conn  # left open: the -wal stays, as beside a running service


def test_order_logs_by_id_then_the_catalog(tmp_path):
    for name in ("catalog.db", "orders-10.db", "orders-2.db", "orders-x.db", "other.db"):
        (tmp_path / name).touch()
    assert [p.name for p in databases(tmp_path)] == ["orders-2.db", "orders-10.db", "catalog.db"]


def test_backup_copies_committed_state_including_the_wal(tmp_path):
    data, dest = tmp_path / "data", tmp_path / "b"
    data.mkdir()
    held = [make_db(data / "orders-1.db", "records", 5), make_db(data / "catalog.db", "trades", 7)]
    assert (data / "orders-1.db-wal").stat().st_size > 0  # the rows are (also) in the WAL
    result = CliRunner().invoke(main, ["backup", str(dest), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "orders-1.db: 5 records" in lines[0]
    assert "catalog.db: 7 trades" in lines[1]
    for name, table, rows in (("orders-1.db", "records", 5), ("catalog.db", "trades", 7)):
        copy = sqlite3.connect(dest / name)
        assert copy.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == rows
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        copy.close()
    assert sorted(p.name for p in dest.iterdir()) == ["catalog.db", "orders-1.db"]
    for conn in held:
        conn.close()


def test_nothing_to_back_up_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(main, ["backup", str(tmp_path / "b"), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no orders-<id>.db or catalog.db to back up" in result.output


def test_backup_into_the_data_dir_itself_is_refused(tmp_path):
    make_db(tmp_path / "catalog.db", "trades", 1).close()
    result = CliRunner().invoke(main, ["backup", str(tmp_path), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "another directory" in result.output
