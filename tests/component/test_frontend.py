"""The real front end (granian, real RPC clients, real SUB socket) against fake services.

The fake catalog and fake order replicas are small `rpc.Server`s that follow
docs/architecture.md: `lookup`, `order`/`get_order`/`set_leader`/`status`, the
catalog PUB feed. The fake replicas share one log, standing in for
replication, so a retried order key finds its first number on the new leader.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import msgpack
import pytest
import zmq

from bazaar import security
from bazaar.config import Config
from bazaar.errors import BazaarError
from bazaar.frontend.app import create_app
from bazaar.frontend.cache import InvalidationFeed, LookupCache
from bazaar.frontend.leader import OrderRouter
from bazaar.frontend.server import serve
from bazaar.rpc import Client, Server
from bazaar.testing.fake_catalog import FakeCatalog as BaseFakeCatalog
from bazaar.testing.http_client import http_json
from tests.conftest import free_port, keys_for, wait_until, wall_budget


# ---- fakes ------------------------------------------------------------------
class FakeCatalog(BaseFakeCatalog):
    """The fake catalog of bazaar.testing plus its PUB feed: invalidations, heartbeats."""

    def __init__(self, zctx):
        keys = keys_for("catalog")
        super().__init__(keys=keys, context=zctx)
        self.lookups = 0
        self.pub = zctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        # zctx's ZAP handler runs already: the Server above started it.
        security.secure_server(self.pub, keys, security.PUB_DOMAIN)
        self.pub_port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.seq = 0
        self.boot = "boot-1"
        self.heartbeats = threading.Event()
        self.heartbeats.set()
        self._pub_lock = threading.Lock()
        self._stop = threading.Event()
        self._hb = threading.Thread(target=self._beat, daemon=True)

    def start(self):
        super().start()
        self._hb.start()
        return self

    def stop(self):
        self._stop.set()
        self._hb.join(2)
        super().stop()
        with self._pub_lock:
            self.pub.close(0)

    def lookup(self, name):
        self.lookups += 1
        return super().lookup(name)

    def publish(self, topic: bytes, **body):
        with self._pub_lock:
            self.pub.send_multipart([topic, msgpack.packb({**body, "boot": self.boot})])

    def change(self, name, quantity, *, announce=True, skip_seq=False):
        """Change a stock as a trade would; publish its invalidation (or lose it)."""
        self.quantity[name] = quantity
        self.seq += 2 if skip_seq else 1
        if announce:
            self.publish(b"invalidate", seq=self.seq, name=name)

    def _beat(self):
        while not self._stop.wait(0.1):
            if self.heartbeats.is_set():
                self.publish(b"heartbeat", seq=self.seq)


@dataclass
class SharedLog:
    records: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeReplica:
    def __init__(self, rid: int, log: SharedLog, zctx):
        self.rid = rid
        self.log = log
        self.leader: int | None = None
        self.epoch = 0
        self.set_leader_calls: list[tuple[int, int]] = []
        self.order_calls = 0
        self.unavailable_orders = 0  # answer this many orders with UNAVAILABLE (catalog down)
        self.hang_after_commit = False
        self.paused = threading.Event()  # set: every handler hangs, like SIGSTOP
        self.server = Server(
            "tcp://127.0.0.1:0",
            service="order",
            replica_id=rid,
            context=zctx,
            keys=keys_for(f"order{rid}"),
        )
        for name in ("order", "get_order", "set_leader", "status"):
            self.server.register(name, getattr(self, name))
        self.endpoint = self.server.endpoint

    def _hang(self):
        while self.paused.is_set():
            time.sleep(0.02)

    def start(self):
        self.server.start()
        return self

    def kill(self):
        self.server.stop()

    def order(self, key, name, type, quantity):
        self._hang()
        self.order_calls += 1
        if self.leader != self.rid:
            raise BazaarError(
                "UNAVAILABLE",
                "not the leader",
                {"not_leader": True, "leader": self.leader, "epoch": self.epoch},
            )
        if self.unavailable_orders > 0:
            self.unavailable_orders -= 1
            raise BazaarError("UNAVAILABLE", "catalog unreachable")
        with self.log.lock:
            for rec in self.log.records:
                if rec["key"] == key:
                    return {"transaction_number": rec["number"]}
            number = len(self.log.records)
            self.log.records.append(
                {"number": number, "name": name, "type": type, "quantity": quantity, "key": key}
            )
        if self.hang_after_commit:
            self.hang_after_commit = False
            self.paused.set()
            self._hang()
        return {"transaction_number": number}

    def get_order(self, number):
        self._hang()
        if self.leader != self.rid:
            raise BazaarError(
                "UNAVAILABLE",
                "not the leader",
                {"not_leader": True, "leader": self.leader, "epoch": self.epoch},
            )
        with self.log.lock:
            if not 0 <= number < len(self.log.records):
                raise BazaarError("NOT_FOUND", f"no order {number}")
            return dict(self.log.records[number])

    def set_leader(self, leader, epoch):
        self._hang()
        if epoch < self.epoch or (epoch == self.epoch and leader != self.leader):
            raise BazaarError("ABORTED", "stale epoch", {"epoch": self.epoch})
        self.set_leader_calls.append((leader, epoch))
        self.leader, self.epoch = leader, epoch
        return {"leader": leader, "epoch": epoch, "last_number": len(self.log.records) - 1 or None}

    def status(self):
        self._hang()
        return {
            "id": self.rid,
            "role": "leader" if self.leader == self.rid else "follower",
            "leader": self.leader,
            "epoch": self.epoch,
            "last_number": (len(self.log.records) - 1) if self.log.records else None,
            "followers": {},
        }


# ---- the system under test ---------------------------------------------------
class FrontEnd:
    def __init__(
        self, catalog: FakeCatalog, replicas: dict[int, FakeReplica], *, cache_size=10, deadline=8.0
    ):
        self.port = free_port()
        self.config = Config(
            catalog=catalog.server.endpoint,
            catalog_pub=f"tcp://127.0.0.1:{catalog.pub_port}",
            order_replicas={rid: r.endpoint for rid, r in replicas.items()},
            cache_size=cache_size,
            http_port=self.port,
        )
        self.cache = LookupCache(cache_size)
        keys = keys_for("frontend")
        self.feed = InvalidationFeed(
            self.config.catalog_pub, self.cache, silence=0.6, keys=keys
        ).start()
        self.catalog_client = Client(
            self.config.catalog, timeout=2.0, keys=keys, server_role="catalog"
        )
        self.router = OrderRouter(
            self.config.order_replicas,
            keys=keys,
            deadline=deadline,
            call_timeout=0.8,
            status_timeout=0.4,
            set_leader_timeout=2.0,
            monitor_interval=0.2,
        )
        self.app = create_app(
            self.config, catalog=self.catalog_client, orders=self.router, cache=self.cache
        )
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=serve, args=(self.app, "127.0.0.1", self.port, self.stop_event), daemon=True
        )

    def start(self):
        self.router.start()
        self.thread.start()
        wait_until(lambda: self.http("GET", "/health")[0] in (200, 503), 10, msg="front end up")
        return self

    def stop(self):
        self.stop_event.set()
        self.thread.join(5)
        self.feed.stop()
        self.router.close()
        self.catalog_client.close()

    def http(self, method, path, body=None, headers=None, timeout=20.0):
        return http_json(f"http://127.0.0.1:{self.port}", method, path, body, headers, timeout)


BUY = {"name": "GameStart", "quantity": 1, "type": "buy"}


@pytest.fixture
def world(zctx):
    log = SharedLog()
    catalog = FakeCatalog(zctx).start()
    replicas = {rid: FakeReplica(rid, log, zctx).start() for rid in (1, 2, 3)}
    made: list[FrontEnd] = []

    def frontend(**kw) -> FrontEnd:
        fe = FrontEnd(catalog, replicas, **kw).start()
        made.append(fe)
        return fe

    yield catalog, replicas, log, frontend
    for fe in made:
        fe.stop()
    for r in replicas.values():
        r.kill()
    catalog.stop()


def healthy(fe):
    status, body = fe.http("GET", "/health")
    return status == 200 and body["data"]["status"] == "ok" and body["data"]


# ---- election ---------------------------------------------------------------
def test_first_election_picks_highest_with_epoch_1_and_tells_everyone(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    data = wait_until(lambda: healthy(fe), 10, msg="healthy")
    assert data["order"]["leader"] == 3 and data["order"]["epoch"] == 1
    assert replicas[3].set_leader_calls == [(3, 1)]
    wait_until(lambda: all(r.set_leader_calls == [(3, 1)] for r in replicas.values()), 30)


def test_existing_agreement_is_adopted_without_new_epoch(world):
    catalog, replicas, log, frontend = world
    for r in replicas.values():
        r.leader, r.epoch = 3, 7
    fe = frontend()
    data = wait_until(lambda: healthy(fe), 10)
    assert (data["order"]["leader"], data["order"]["epoch"]) == (3, 7)
    assert all(r.set_leader_calls == [] for r in replicas.values())


def test_stale_epoch_answer_raises_our_epoch(world):
    catalog, replicas, log, frontend = world
    replicas[3].epoch = 5  # it accepted epoch 5 once, but its status is not asked first
    replicas[3].leader = 1
    fe = frontend()
    data = wait_until(lambda: healthy(fe), 10)
    assert data["order"]["leader"] == 3 and data["order"]["epoch"] >= 6


def test_leader_death_is_invisible_to_the_client(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: healthy(fe), 10)
    assert fe.http("POST", "/orders", BUY) == (200, {"data": {"transaction_number": 0}})
    replicas[3].kill()
    status, body = fe.http("POST", "/orders", BUY)
    assert (status, body) == (200, {"data": {"transaction_number": 1}})
    assert fe.router.leader == 2 and fe.router.epoch == 2
    assert (2, 2) in replicas[1].set_leader_calls
    assert fe.http("GET", "/orders/1")[1]["data"]["number"] == 1

    # /health reads a view refreshed in the background: at most about a second old.
    def degraded():
        status, body = fe.http("GET", "/health")
        return status == 200 and body["data"]["status"] == "degraded" and body["data"]

    assert wait_until(degraded, wall_budget(3.0))["order"]["replicas"]["3"]["up"] is False


def test_retry_after_failover_keeps_the_key(world):
    """The leader commits the order but its reply is lost: the retry must not trade twice."""
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: healthy(fe), 10)
    leader = replicas[3]
    leader.hang_after_commit = True  # commits, then hangs: reply lost, status hangs too
    status, body = fe.http("POST", "/orders", BUY, headers={"Idempotency-Key": "k-1"})
    leader.paused.clear()
    assert status == 200
    assert body["data"]["transaction_number"] == 0
    assert len(log.records) == 1
    assert fe.router.leader == 2


def test_paused_leader_fails_over(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: healthy(fe), 10)
    replicas[3].paused.set()
    try:
        status, body = fe.http("POST", "/orders", BUY)
        assert status == 200, body
        assert fe.router.leader == 2
    finally:
        replicas[3].paused.clear()


def test_not_leader_answer_triggers_election(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: healthy(fe), 10)
    # Someone demoted 3 behind our back (epoch 9 names leader 2).
    replicas[3].leader, replicas[3].epoch = 2, 9
    status, body = fe.http("POST", "/orders", BUY)
    assert status == 200, body
    assert fe.router.epoch >= 10


def test_catalog_down_on_leader_is_retried_on_same_leader(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: healthy(fe), 10)
    elections = fe.router.elections
    replicas[3].unavailable_orders = 3
    status, body = fe.http("POST", "/orders", BUY)
    assert status == 200, body
    assert fe.router.leader == 3 and fe.router.elections == elections
    assert replicas[3].order_calls == 4


def test_no_replica_gives_503_within_deadline(world):
    catalog, replicas, log, frontend = world
    fe = frontend(deadline=2.0)
    wait_until(lambda: healthy(fe), 10)
    for r in replicas.values():
        r.kill()
    start = time.monotonic()
    status, body = fe.http("POST", "/orders", BUY)
    assert status in (503, 504)
    assert body["error"]["code"] == status
    assert time.monotonic() - start < wall_budget(6.0)  # the 2 s deadline, a retry, slack
    assert fe.http("GET", "/health")[0] == 503


def test_order_errors_pass_through(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: healthy(fe), 10)
    status, body = fe.http("GET", "/orders/42")
    assert status == 404 and body["error"]["code"] == 404


# ---- cache over the real PUB socket -------------------------------------------
def cache_live(fe):
    return fe.cache.live


def lookup_quantity(fe, name="GameStart"):
    status, body = fe.http("GET", f"/stocks/{name}")
    assert status == 200, body
    return body["data"]["quantity"]


def test_invalidation_refreshes_entry(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: cache_live(fe), 10, msg="feed live")
    assert lookup_quantity(fe) == 100
    assert lookup_quantity(fe) == 100
    assert fe.cache.stats()["hits"] >= 1
    catalog.change("GameStart", 90)
    wait_until(lambda: lookup_quantity(fe) == 90, 30, msg="invalidation applied")


def test_lost_invalidation_gap_flushes(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: cache_live(fe), 10)
    assert lookup_quantity(fe, "FishCo") == 100
    catalog.change("FishCo", 80, announce=False)  # this invalidation is lost...
    catalog.change("GameStart", 70)  # ...the next one shows the gap
    wait_until(lambda: lookup_quantity(fe, "FishCo") == 80, 30, msg="gap flush")


def test_silence_flushes_and_disables(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: cache_live(fe), 10)
    assert lookup_quantity(fe) == 100
    catalog.heartbeats.clear()
    wait_until(lambda: not fe.cache.live, 30, msg="silence noticed")
    catalog.change("GameStart", 60, announce=False)
    assert lookup_quantity(fe) == 60
    catalog.heartbeats.set()
    wait_until(lambda: cache_live(fe), 30)


def test_restarted_catalog_flushes(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: cache_live(fe), 10)
    assert lookup_quantity(fe) == 100
    flushes = fe.cache.stats()["flushes"]
    catalog.quantity["GameStart"] = 55
    catalog.boot = "boot-2"
    wait_until(lambda: fe.cache.stats()["flushes"] > flushes, 30)
    assert lookup_quantity(fe) == 55


def test_own_order_invalidates_without_waiting_for_pub(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: healthy(fe) and cache_live(fe), 10)
    assert lookup_quantity(fe) == 100
    catalog.quantity["GameStart"] = 99  # the trade; its PUB message is not sent
    assert fe.http("POST", "/orders", BUY)[0] == 200
    assert lookup_quantity(fe) == 99


def test_cache_off(world):
    """Size 0: every lookup goes to the catalog although the feed is live (with a
    silent feed the cache is bypassed anyway, so the test waits for it)."""
    catalog, replicas, log, frontend = world
    fe = frontend(cache_size=0)
    wait_until(lambda: healthy(fe) and cache_live(fe), 10, msg="feed live")
    before = catalog.lookups
    for _ in range(3):
        lookup_quantity(fe)
    assert catalog.lookups == before + 3
    assert cache_live(fe) and len(fe.cache) == 0 and fe.cache.stats()["hits"] == 0


def test_server_stops_quickly_with_open_connections(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", fe.port, timeout=5)
    conn.request("GET", "/stocks/GameStart")
    conn.getresponse().read()  # keep-alive connection stays open
    start = time.monotonic()
    fe.stop_event.set()
    fe.thread.join(5)
    assert not fe.thread.is_alive()
    assert time.monotonic() - start < wall_budget(1.0)


def test_concurrent_failures_cause_one_election(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: healthy(fe), 10)
    replicas[3].kill()
    results: list = []

    def client(i):
        results.append(fe.http("POST", "/orders", BUY, headers={"Idempotency-Key": f"c-{i}"}))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [s for s, _ in results] == [200] * 8, results
    assert sorted(b["data"]["transaction_number"] for _, b in results) == list(range(8))
    assert replicas[2].set_leader_calls == [(3, 1), (2, 2)]  # one election, one new epoch


def test_get_order_fails_over_too(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: healthy(fe), 10)
    assert fe.http("POST", "/orders", BUY)[0] == 200
    replicas[3].kill()
    status, body = fe.http("GET", "/orders/0")
    assert status == 200 and body["data"]["number"] == 0
    assert fe.router.leader == 2


def test_replica_that_missed_set_leader_is_told(world):
    catalog, replicas, log, frontend = world
    fe = frontend()
    wait_until(lambda: healthy(fe), 10)
    replicas[1].leader, replicas[1].epoch = None, 0  # as if restarted with no state
    wait_until(lambda: (replicas[1].leader, replicas[1].epoch) == (3, 1), 30, msg="monitor fix-up")
