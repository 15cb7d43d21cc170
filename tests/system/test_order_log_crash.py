"""SIGKILL of a process committing to an order log, in a loop: nothing acknowledged is lost.

A child process appends batches through `OrderLog.append_durable` (the
replica's group-commit path) and saves its state, printing each batch's last
number once the commit returned (its acknowledgement). Each round kills it
with SIGKILL at a random moment, opens the log again (it must load), and
checks every acknowledged record is there with its content, numbers gapless,
then lets the next child carry on from where the log ends.

A replica started on a read-only data dir (root only: a tmpfs remounted
read-only) stops with one line naming the database. (A data dir cannot be
remounted read-only under a running replica: its files are open for
writing; a full disk is the runtime failure, see test_faults.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bazaar.order.log import OrderLog, Record
from tests.system.disks import remount, small_disks

REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from bazaar.order.log import OrderLog, Record
from tests.system.disks import remount, small_disks

def record(n):
    return Record(n, "GameStart", "buy" if n % 3 else "sell", n % 7 + 1, f"key-{n}", n + 1, n // 500 + 1)

log = OrderLog(sys.argv[1], 1).load()
n = log.last_number + 1
while True:
    size = 1 + n % 17
    log.append_durable([record(i) for i in range(n, n + size)])
    n += size
    log.save_state(n // 500 + 1, 1)
    print(n - 1, flush=True)
"""


def expected(n: int) -> Record:
    kind = "buy" if n % 3 else "sell"
    return Record(n, "GameStart", kind, n % 7 + 1, f"key-{n}", n + 1, n // 500 + 1)


@pytest.mark.parametrize("seed", [1])
def test_sigkill_during_commits_leaves_a_loadable_log_with_every_acknowledged_record(
    tmp_path, seed
):
    rng = random.Random(seed)
    acked = -1
    for round_ in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)],
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
            text=True,
        )
        try:
            first = child.stdout.readline()  # it commits
            assert first, f"round {round_}: the child died before committing"
            time.sleep(rng.uniform(0.0, 0.3))
            child.send_signal(signal.SIGKILL)
            out, _ = child.communicate(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
        lines = [first, *out.splitlines()]
        acked = max(acked, *(int(x) for x in lines if x.strip()))
        log = OrderLog(tmp_path, 1).load()
        try:
            assert log.last_number >= acked, f"round {round_}: acknowledged {acked} lost"
            records = log.records_between(0, log.last_number)
            assert [r.number for r in records] == list(range(log.last_number + 1))
            assert records == [expected(n) for n in range(log.last_number + 1)]
            epoch, leader = log.load_state()
            assert leader == 1 and epoch >= (acked + 1) // 500 + 1  # saved before the ack
        finally:
            log.close()
    assert acked > 100, "the children committed too little to test anything"


# ---- a data dir that turns read-only -------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A data dir on its own 8 MiB tmpfs; yields its path."""
    with small_disks(tmp_path / "order1") as (path,):
        yield path


def test_an_order_replica_on_a_read_only_data_dir_stops_with_one_clear_line(small_disk, tmp_path):
    OrderLog(small_disk, 1).load().close()
    remount(small_disk, "ro")
    env = dict(os.environ, BAZAAR_DATA_DIR=str(small_disk), BAZAAR_LOG_LEVEL="INFO")
    env["BAZAAR_ORDER_REPLICAS"] = "1=tcp://127.0.0.1:1,2=tcp://127.0.0.1:2,3=tcp://127.0.0.1:3"
    done = subprocess.run(
        [sys.executable, "-m", "bazaar.cli", "order", "--id", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "UNAVAILABLE" in done.stderr and "orders-1.db" in done.stderr, done.stderr
