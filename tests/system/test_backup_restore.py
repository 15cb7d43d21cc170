"""docs/deploy.md's backup, run while clients trade, restored into a fresh cluster.

The shell blocks marked `<!-- test: backup -->` and `<!-- test: restore -->`
in docs/deploy.md are run as written (bash, in the directory `make run` works
in, `.venv` the test's own), so the documented commands are the tested ones. The
cluster runs as `make run` does: five processes sharing ./data.

After the restore, SPEC section 4 holds on the new cluster: every order
acknowledged before the backup started reads back unchanged, the logs are
identical and numbered 0..N-1, no key twice, and the market is conserved
(each stock's quantity is 100 - buys + sells over the restored log).
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from bazaar.testing import STOCKS
from bazaar.testing.cluster import Cluster
from bazaar.testing.traders import Traders
from tests import docblocks
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(300)


def doc_block(marker: str) -> str:
    """The ```sh block right after `<!-- test: marker -->` in docs/deploy.md."""
    return docblocks.marked("docs/deploy.md", marker)


class MakeRunCluster(Cluster):
    """Every service in one ./data, as `make run` (bazaar run-all) lays it out."""

    def data_dir(self, name: str) -> Path:  # noqa: ARG002 (one ./data for every name)
        path = self.root / "data"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self, name: str) -> dict[str, str]:
        env = super().env(name)
        del env["BAZAAR_DATA_DIR"]  # the default, ./data, as `make run`
        return env


def run_doc(script: str, cwd: Path) -> str:
    """Run a documented block in `cwd` as a checkout: `.venv/bin/bazaar` is this test's."""
    env = dict(os.environ)
    env.pop("BAZAAR_DATA_DIR", None)
    return docblocks.run(script, cwd, env).stdout


def test_documented_backup_under_load_restores_into_a_fresh_cluster(tmp_path):
    old_root, new_root = tmp_path / "old", tmp_path / "new"
    old_root.mkdir()
    new_root.mkdir()
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    with MakeRunCluster(old_root) as old:
        old.start_all()
        traders = Traders(old, seed).start()
        try:
            traders.wait_progress(40)
            with traders.lock:
                before = dict(traders.acked)  # acknowledged before the backup began
            out = run_doc(doc_block("backup"), old_root)
            traders.wait_progress(10)  # still trading after it
        finally:
            traders.finish()
        assert not traders.dup_numbers
        print(out)
        assert re.search(r"orders-1\.db: \d+ records", out), out
        assert re.search(r"catalog\.db: \d+ trades", out), out
        old_committed = len(old.read_log(1))

    # A new host: the backup directory is all it has of the old one.
    (backup,) = [p for p in old_root.iterdir() if p.is_dir() and p.name.startswith("backup")]
    (new_root / backup.name).mkdir()
    for item in backup.iterdir():
        (new_root / backup.name / item.name).write_bytes(item.read_bytes())
    run_doc(docblocks.without_make_run(doc_block("restore")), new_root)

    with MakeRunCluster(new_root) as new:
        new.start_all(60)

        def settled():
            """The restored log once the three agree and the market matches it."""
            logs = [tuple(map(tuple, new.read_log(r))) for r in (1, 2, 3)]
            if len(set(logs)) != 1 or not logs[0]:
                return None
            rows = [list(r) for r in logs[0]]
            for stock in STOCKS:
                mine = [r for r in rows if r[1] == stock]
                buys = sum(int(r[3]) for r in mine if r[2] == "buy")
                sells = sum(int(r[3]) for r in mine if r[2] == "sell")
                status, body = new.http("GET", f"/stocks/{stock}")
                if status != 200 or body["data"]["quantity"] != 100 - buys + sells:
                    return None
                assert body["data"]["volume"] == buys + sells, f"{stock}: volume"
            return rows

        # Trades the catalog copy holds beyond the copied logs are reconciled
        # by the new leader within a second or so; then the market is conserved.
        rows = wait_until(settled, 60, 0.2, "restored logs identical and the market conserved")
        assert [int(r[0]) for r in rows] == list(range(len(rows))), "numbers are not 0..N-1"
        assert not [k for k, c in Counter(r[4] for r in rows).items() if c > 1], "a key twice"
        for number, (key, name, kind, qty) in before.items():
            assert number < len(rows), f"acknowledged order {number} lost in the restore"
            assert rows[number][1:5] == [name, kind, str(qty), key], f"order {number} changed"
            status, body = new.http("GET", f"/orders/{number}")
            assert status == 200 and body["data"]["name"] == name
        # The restored cluster trades on from where the backup left off.
        status, body = new.http("POST", "/orders", {"name": "FishCo", "type": "buy", "quantity": 1})
        assert status == 200, body
        assert body["data"]["transaction_number"] >= len(rows)
        print(
            f"{len(before)} acknowledged before the backup, {len(rows)} restored, "
            f"{old_committed} on the old cluster at the end"
        )
