"""docs/troubleshooting.md quotes the lines services really print when they cannot start.

Each case starts a real `bazaar` process into the situation (a port taken, a
data dir in use, a damaged catalog.db, a database of a newer release, a bad
variable) and checks: exit status 1, no traceback, one `Error:` line, and
that line on the page (ports, hosts and directories written there as
`<port>`, `<host>`, `<dir>`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

DOC = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()

pytestmark = pytest.mark.timeout(120)


def start(args, tmp_path, **env) -> str:
    full = dict(os.environ, BAZAAR_DATA_DIR=str(tmp_path / "data"), BAZAAR_INSECURE="1")
    full.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "bazaar.cli", *args],
        env=full,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("Error:")]
    return line


def documented(line: str, **placeholders: str) -> None:
    text = line
    for name, value in placeholders.items():
        text = text.replace(value, f"<{name}>")
    text = text.replace("`", "")
    assert text in DOC.replace("`", ""), f"docs/troubleshooting.md does not quote:\n{text}"


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield sock.getsockname()[1]


def rpc_env(catalog_port: int | None = None) -> dict[str, str]:
    return {
        "BAZAAR_CATALOG": f"tcp://127.0.0.1:{catalog_port or free_port()}",
        "BAZAAR_CATALOG_PUB": f"tcp://127.0.0.1:{free_port()}",
    }


def test_catalog_port_in_use(tmp_path, taken_port):
    line = start(["catalog"], tmp_path, **rpc_env(taken_port))
    for host in ("*", "127.0.0.1", "0.0.0.0"):
        line = line.replace(f"tcp://{host}:", "tcp://<host>:")
    documented(line, port=str(taken_port))


def test_frontend_port_in_use(tmp_path, taken_port):
    line = start(["frontend"], tmp_path, BAZAAR_HTTP_PORT=str(taken_port), **rpc_env())
    for host in ("127.0.0.1", "0.0.0.0"):
        line = line.replace(f"on {host}:", "on <host>:")
    documented(line, port=str(taken_port))


def test_second_catalog_on_one_data_dir(tmp_path):
    (tmp_path / "data").mkdir()
    lock = tmp_path / "data" / "catalog.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", (f"import fcntl,sys,time; f=open({str(lock)!r},'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        line = start(["catalog"], tmp_path, **rpc_env())
    finally:
        holder.kill()
        holder.wait()
    documented(line, dir=str(tmp_path / "data"))


def test_damaged_catalog_db(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "catalog.db").write_bytes(b"not a database at all" * 100)
    line = start(["catalog"], tmp_path, **rpc_env())
    documented(line, dir=str(tmp_path / "data"))


def test_bad_variable(tmp_path):
    documented(start(["catalog"], tmp_path, BAZAAR_CACHE_SIZE="abc"))


def test_no_keys(tmp_path):
    env = rpc_env()
    line = start(["catalog"], tmp_path, BAZAAR_INSECURE="0", BAZAAR_KEYS_DIR="", **env)
    assert "no key for catalog" in line
    documented(line.replace("catalog", "<role>", 1), dir=str(tmp_path / "data" / "keys"))


def newer_release(path: Path) -> None:
    """A database as a later release (a schema this one does not know) leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.execute("CREATE TABLE later (x)")
        conn.commit()


def test_catalog_db_of_a_newer_release(tmp_path):
    from bazaar.catalog.db import SCHEMA_VERSION

    newer_release(tmp_path / "data" / "catalog.db")
    line = start(["catalog"], tmp_path, **rpc_env())
    line = line.replace(
        f"(schema 99; this one knows {SCHEMA_VERSION})", "(schema <n>; this one knows <m>)"
    )
    documented(line, dir=str(tmp_path / "data"))
    assert (tmp_path / "data" / "catalog.db").stat().st_size > 0  # nothing was changed


def test_order_log_of_a_newer_release(tmp_path):
    from bazaar.order.log import SCHEMA_VERSION

    newer_release(tmp_path / "data" / "orders-2.db")
    replicas = ",".join(f"{r}=tcp://127.0.0.1:{free_port()}" for r in (1, 2, 3))
    line = start(["order", "--id", "2"], tmp_path, BAZAAR_ORDER_REPLICAS=replicas, **rpc_env())
    line = line.replace("orders-2.db", "orders-<id>.db")
    line = line.replace(
        f"version 99 is newer than this release's ({SCHEMA_VERSION})",
        "version <n> is newer than this release's (<m>)",
    )
    documented(line, dir=str(tmp_path / "data"))
