"""Three order replicas in-process on random ports, real files, a fake catalog.

The fake catalog (bazaar.testing.fake_catalog) is a real `rpc.Server` with
the catalog's contract (docs/architecture.md): `trade` idempotent by key and
refused below the fenced epoch, `fence`, `trades_since`.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from bazaar import rpc
from bazaar.config import Config
from bazaar.errors import BazaarError
from bazaar.order.log import db_path, disk_error, read_only_rows
from bazaar.order.service import OrderReplica
from bazaar.testing.fake_catalog import FakeCatalog
from tests.conftest import KEYS_DIR, free_port, keys_for, wait_until

FOLLOWER_TIMEOUT = 2.0


class Trio:
    """Three replicas sharing one replica map; each can be stopped and restarted."""

    def __init__(self, root: Path, catalog: FakeCatalog):
        self.root = root
        self.catalog = catalog
        self.endpoints = {rid: f"tcp://127.0.0.1:{free_port()}" for rid in (1, 2, 3)}
        self.replicas: dict[int, OrderReplica] = {}
        self.clients = {  # the front end's role: order, set_leader, status, get_order
            rid: rpc.Client(e, timeout=5, keys=keys_for("frontend"), server_role=f"order{rid}")
            for rid, e in self.endpoints.items()
        }
        self.epoch = 0

    def config(self, rid: int) -> Config:
        return Config(
            catalog=self.catalog.endpoint,
            order_replicas=self.endpoints,
            order_id=rid,
            data_dir=self.root / f"order{rid}",
            keys_dir=KEYS_DIR,
        )

    def start(self, rid: int) -> OrderReplica:
        # A follower is declared silent after 2 s: no test here is about that
        # timeout, and on a starved machine a shorter one made the leader
        # refuse orders for want of a majority (seen at load average ~50).
        replica = OrderReplica(self.config(rid), follower_timeout=FOLLOWER_TIMEOUT)
        self.replicas[rid] = replica.start()
        return self.replicas[rid]

    def stop(self, rid: int) -> None:
        self.replicas.pop(rid).stop()

    def elect(self, leader: int) -> int:
        self.epoch += 1
        for rid in self.replicas:
            self.clients[rid].call("set_leader", leader=leader, epoch=self.epoch)
        return self.epoch

    def order(self, leader: int, key=None, name="GameStart", type="buy", quantity=1):
        key = key or uuid.uuid4().hex
        res = self.clients[leader].call(
            "order", key=key, name=name, type=type, quantity=quantity, timeout=10
        )
        return res["transaction_number"]

    def log_rows(self, rid: int) -> tuple:
        return tuple(read_only_rows(db_path(self.root / f"order{rid}", rid)))

    def wait_identical(self, rids=(1, 2, 3)):
        def same():
            data = {self.log_rows(r) for r in rids}
            return len(data) == 1

        wait_until(same, 10, msg="identical logs")

    def close(self):
        for rid in list(self.replicas):
            self.stop(rid)
        for c in self.clients.values():
            c.close()


@pytest.fixture
def catalog():
    c = FakeCatalog().start()
    yield c
    c.stop()


@pytest.fixture
def trio(tmp_path, catalog):
    t = Trio(tmp_path, catalog)
    for rid in (1, 2, 3):
        t.start(rid)
    yield t
    t.close()


def test_order_replicates_and_logs_are_identical(trio):
    trio.elect(3)
    numbers = [trio.order(3) for _ in range(20)]
    assert numbers == list(range(20))
    trio.wait_identical()
    rows = trio.log_rows(1)
    assert [r[0] for r in rows] == list(range(20)) and rows[0][1:4] == ("GameStart", "buy", 1)
    for rid in (1, 2, 3):
        assert trio.clients[rid].call("get_order", number=5)["number"] == 5
    status = trio.clients[3].call("status")
    assert status["role"] == "leader" and status["last_number"] == 19


def test_same_key_returns_first_number_and_trades_once(trio, catalog):
    trio.elect(3)
    first = trio.order(3, key="k-1", quantity=3)
    again = trio.order(3, key="k-1", quantity=3)
    assert first == again
    assert len(catalog.trades) == 1 and catalog.quantity["GameStart"] == 97
    with pytest.raises(BazaarError) as err:
        trio.order(3, key="k-1", quantity=4)
    assert err.value.code == "ALREADY_EXISTS"


def test_follower_refuses_orders_with_not_leader(trio):
    trio.elect(3)
    with pytest.raises(BazaarError) as err:
        trio.order(1)
    assert err.value.code == "UNAVAILABLE"
    assert err.value.details == {"not_leader": True, "leader": 3, "epoch": 1}


def test_stale_epoch_is_aborted(trio):
    trio.elect(3)
    trio.elect(3)
    with pytest.raises(BazaarError) as err:
        trio.clients[2].call("set_leader", leader=2, epoch=1)
    assert err.value.code == "ABORTED" and err.value.details == {"epoch": 2}
    with pytest.raises(BazaarError) as err:
        trio.clients[2].call("set_leader", leader=1, epoch=2)
    assert err.value.code == "ABORTED"
    with (
        rpc.Client(
            trio.endpoints[2], timeout=5, keys=keys_for("order3"), server_role="order2"
        ) as leader3,
        pytest.raises(BazaarError) as err,
    ):
        leader3.call("replicate", epoch=1, leader=3, records=[])
    assert err.value.code == "ABORTED"


def test_restarted_follower_catches_up(trio):
    trio.elect(3)
    for _ in range(5):
        trio.order(3)
    trio.stop(1)
    for _ in range(30):
        trio.order(3)
    trio.start(1)
    status = trio.clients[1].call("status", idempotent=True)  # it may still be reconnecting
    assert status["last_number"] == 34  # caught up before serving
    trio.order(3)
    trio.wait_identical()


@pytest.mark.usefixtures("catalog")
def test_failover_keeps_every_acknowledged_order(trio):
    trio.elect(3)
    acked = {trio.order(3, key=f"a{i}"): f"a{i}" for i in range(10)}
    trio.stop(3)
    trio.elect(2)
    acked.update({trio.order(2, key=f"b{i}"): f"b{i}" for i in range(10)})
    assert sorted(acked) == list(range(20))
    assert trio.order(2, key="a4") == 4  # a retry after failover: same number
    trio.start(3)
    trio.order(2)
    trio.wait_identical()


def test_orphaned_catalog_trade_is_committed_by_the_next_leader(trio, catalog):
    trio.elect(3)
    trio.order(3)
    catalog.trade("orphan", "FishCo", "sell", 7, epoch=1, leader=3)  # a leader traded, then died
    trio.stop(3)
    trio.elect(2)
    trio.order(2)
    records = [trio.clients[2].call("get_order", number=n) for n in range(3)]
    assert {"number": 1, "name": "FishCo", "type": "sell", "quantity": 7} in records
    assert trio.order(2, key="orphan", name="FishCo", type="sell", quantity=7) == 1


def test_a_leader_reconciles_on_one_thread_not_a_new_one_each_second(trio, catalog, monkeypatch):
    """The reconcile runs (every second while leading) share a request pool."""
    trio.elect(3)
    trio.order(3)
    # A run has asked the catalog (the lead run's own, or a first reconcile run):
    # the reconcile pool may have its thread already, and needs no other.
    wait_until(lambda: catalog.trades_since_calls >= 1, 10, msg="a first trades_since")
    started: list[str] = []  # names of the threads started from now on
    real_start = threading.Thread.start

    def start(thread):
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    catalog.trade("orphan", "FishCo", "sell", 7, epoch=1, leader=3)  # a leader traded, then died
    orphan = {"number": 1, "name": "FishCo", "type": "sell", "quantity": 7}

    def reconciled():  # by a run on the shared pool, not by an order with its key
        try:
            return trio.clients[3].call("get_order", number=1) == orphan
        except BazaarError:
            return False

    wait_until(reconciled, 10, msg="the orphaned trade in the log")
    runs = catalog.trades_since_calls
    wait_until(lambda: catalog.trades_since_calls >= runs + 4, 10, msg="four more reconcile runs")
    # A pool per run: one new thread per run (4 or more here). Shared: at most
    # its first (when only the lead run had asked before), or a second one
    # when a run's request outlives the run.
    request_threads = [n for n in started if n.startswith("order3-rec")]
    assert len(request_threads) <= 2, request_threads


@pytest.mark.usefixtures("catalog")
def test_deposed_leader_cannot_commit(trio):
    trio.elect(3)
    trio.order(3)
    # Elect 2 behind 3's back (3 does not hear of it): 3 is now a stale leader.
    trio.epoch += 1
    for rid in (1, 2):
        trio.clients[rid].call("set_leader", leader=2, epoch=trio.epoch)
    trio.order(2)
    with pytest.raises(BazaarError) as err:
        trio.order(3)
    assert err.value.code == "UNAVAILABLE" and err.value.details["not_leader"]
    assert trio.clients[3].call("status")["role"] == "follower"
    trio.order(2)
    trio.wait_identical()


def test_a_replica_down_for_many_orders_catches_up_in_pages(trio, monkeypatch):
    from bazaar.order import handlers

    monkeypatch.setattr(handlers, "CATCH_UP_LIMIT", 7)  # pages of 7 records
    trio.elect(3)
    trio.order(3)
    trio.wait_identical()
    trio.stop(1)
    for _ in range(40):
        trio.order(3)
    trio.start(1)  # catches up before it serves, 7 records per reply
    assert trio.replicas[1].log.last_number == 40
    peer = rpc.Client(trio.endpoints[1], timeout=5, keys=keys_for("order2"), server_role="order1")
    with peer:  # catch_up is for replicas only
        first = wait_until(lambda: peer.call("catch_up", after=-1), 30)
    assert first["more"] is True and len(first["records"]) == 7
    trio.wait_identical()


def break_disk(replica: OrderReplica):
    """Make every log write of one replica fail like a full disk; returns the undo."""
    original = replica.log.write

    def full(steps):
        if any(isinstance(step, list) and step for step in steps):
            raise disk_error("append", OSError(28, "No space left on device"))
        return original(steps)

    replica.log.write = full
    return lambda: setattr(replica.log, "write", original)


def test_follower_disk_failure_does_not_stop_orders(trio):
    trio.elect(3)
    trio.order(3)
    repair = break_disk(trio.replicas[1])
    numbers = [trio.order(3) for _ in range(10)]  # acknowledged with follower 2
    assert numbers == list(range(1, 11))
    status = trio.clients[1].call("status")
    assert "No space left" in status["disk_error"] and status["last_number"] == 0
    repair()
    trio.order(3)
    trio.wait_identical()
    assert trio.clients[1].call("status")["disk_error"] is None


def test_leader_disk_failure_is_a_clear_error_and_leadership_moves(trio):
    trio.elect(3)
    acked = [trio.order(3, key=f"a{i}") for i in range(5)]
    repair = break_disk(trio.replicas[3])
    with pytest.raises(BazaarError) as err:
        trio.order(3, key="during")
    assert err.value.code == "UNAVAILABLE" and "No space left" in err.value.message
    status = trio.clients[3].call("status")
    assert status["role"] == "follower" and status["leader"] is None
    with pytest.raises(BazaarError) as err:
        trio.clients[3].call("set_leader", leader=3, epoch=trio.epoch + 1)
    assert "cannot lead" in err.value.message
    trio.epoch += 1
    trio.elect(2)
    # The failed order was traded: the new leader reconciled it, a retry finds it.
    assert trio.order(2, key="during") == 5
    assert [trio.order(2, key=f"a{i}") for i in range(5)] == acked
    repair()
    trio.order(2)
    trio.wait_identical()


def test_concurrent_orders_share_fsyncs_and_stay_gapless(trio):
    trio.elect(3)
    leader = trio.replicas[3]
    writes = []
    original = leader.log.write

    def counting(steps):
        appended = sum(len(step) for step in steps if isinstance(step, list))
        if appended:
            writes.append(appended)
        return original(steps)

    leader.log.write = counting
    numbers, errors = [], []

    def session():
        try:
            for _ in range(25):
                numbers.append(trio.order(3, type="sell"))
        except BazaarError as err:
            errors.append(err)

    threads = [threading.Thread(target=session) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(numbers) == list(range(400))
    assert sum(writes) == 400 and len(writes) < 400  # group commit: fewer fsyncs than orders
    trio.wait_identical()


def test_heartbeats_keep_an_idle_leader_heard_and_write_nothing(trio):
    """An idle leader's heartbeats reach both followers, which answer them with no
    transaction and no fsync (no `OrderLog.write`)."""
    trio.elect(3)
    trio.order(3)
    trio.wait_identical()
    beats = {1: 0, 2: 0}
    writes = {1: 0, 2: 0}
    for rid in (1, 2):  # spies around the real calls
        follower = trio.replicas[rid]
        on_replicate, write = follower.machine.on_replicate, follower.log.write

        def counted_replicate(msg, rid=rid, on_replicate=on_replicate):
            beats[rid] += not msg.records
            return on_replicate(msg)

        def counted_write(steps, rid=rid, write=write):
            writes[rid] += 1
            return write(steps)

        follower.machine.on_replicate = counted_replicate
        follower.log.write = counted_write
    wait_until(lambda: min(beats.values()) >= 5, 30, msg="five heartbeats at each follower")
    assert writes == {1: 0, 2: 0}
    status = trio.clients[3].call("status")
    assert status["majority"] is True and status["role"] == "leader"


def test_an_idle_leader_whose_followers_stop_loses_its_majority(trio):
    """No order in flight: the unanswered heartbeats show the silence, `status` says
    no majority and orders are refused at once; one follower back restores it."""
    trio.elect(3)
    trio.order(3)
    trio.stop(1)
    trio.stop(2)

    def majority():
        return trio.clients[3].call("status", idempotent=True)["majority"]

    wait_until(lambda: majority() is False, 30, 0.1, "the idle leader's majority gone")
    with pytest.raises(BazaarError) as err:
        trio.order(3)
    assert err.value.code == "UNAVAILABLE" and err.value.details.get("no_majority")
    trio.start(1)
    wait_until(lambda: majority() is True, 30, 0.1, "the majority back with follower 1")
    assert trio.order(3) == 1
