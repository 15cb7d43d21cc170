"""Metric definitions, label hygiene, the dashboard's samples and the pure /health logic."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client import REGISTRY

from bazaar import metrics
from bazaar.frontend.monitor import health
from bazaar.frontend.observe import HttpMeter, RecentSamples, quantile, route_of

metrics.activate()  # off by default in a process (see bazaar.metrics)


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_routes_are_a_fixed_set_whatever_the_path():
    assert route_of("/stocks/GameStart") == "/stocks/<name>"
    assert route_of("/stocks/%00evil") == "/stocks/<name>"
    assert route_of("/orders") == "/orders"
    assert route_of("/orders/12") == "/orders/<number>"
    assert route_of("/ordersX") == "other"
    assert route_of("/") == "/"
    assert route_of("/health") == "/health"
    assert route_of("/static/dashboard.js") == "/static"
    assert route_of("/wp-admin/" + "x" * 5000) == "other"


def test_quantile_nearest_rank():
    values = sorted(float(i) for i in range(1, 101))
    assert quantile(values, 0.5) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile([3.0], 0.99) == 3.0


def test_recent_samples_summarise_each_second_and_fill_idle_ones():
    samples = RecentSamples(window=5, clock=lambda: 0)
    for i in range(10):
        samples.record("order", 0.001 * (i + 1), now=100.2)
    samples.record("lookup", 0.0001, now=101.5)
    series = samples.series(now=103.0)
    assert [s["t"] for s in series] == [98, 99, 100, 101, 102]
    assert series[2]["orders"] == 10 and series[2]["requests"] == 10
    assert series[2]["p50_ms"] == 5.0 and series[2]["p99_ms"] == 10.0
    assert series[3]["lookups"] == 1 and series[3]["orders"] == 0
    assert series[0]["requests"] == 0 and series[0]["p99_ms"] is None


def test_recent_samples_memory_is_bounded_by_the_window():
    samples = RecentSamples(window=3, clock=lambda: 0)
    for second in range(1000):
        samples.record("order", 0.001, now=second)
    assert len(samples._done) == 3


def test_rpc_observer_counts_methods_codes_and_order_results():
    observe = metrics.RpcObserver("order")
    before = value("bazaar_rpc_requests_total", method="order", code="OK")
    rejected = value("bazaar_orders_total", result="failed_precondition")
    observe("order", "OK", 0.0002)
    observe("order", "OK", 0.0003)
    observe("order", "FAILED_PRECONDITION", 0.0001)
    observe("status", "OK", 0.00001)
    assert value("bazaar_rpc_requests_total", method="order", code="OK") == before + 2
    assert value("bazaar_orders_total", result="failed_precondition") == rejected + 1
    assert value("bazaar_rpc_duration_seconds_bucket", method="order", le="0.00025") >= 1


class FakeReplica:
    def __init__(self, status):
        self.status = status

    def rpc_status(self):
        return self.status


def test_order_gauges_come_from_the_replica_status():
    leader = FakeReplica(
        {
            "role": "leader",
            "epoch": 4,
            "last_number": 41,
            "commit": 40,
            "followers": {
                "1": {"up": True, "last_number": 41, "heard": True},
                "2": {"up": False, "last_number": 30, "heard": False},
            },
        }
    )
    metrics.watch("order", leader)
    assert value("bazaar_order_is_leader") == 1
    assert value("bazaar_order_epoch") == 4
    assert value("bazaar_order_commit_number") == 40
    assert value("bazaar_order_replication_lag_records", peer="2") == 11
    assert value("bazaar_order_replication_lag_records", peer="1") == 0
    assert value("bazaar_order_follower_heard", peer="1") == 1
    assert value("bazaar_order_follower_heard", peer="2") == 0
    follower = FakeReplica({"role": "follower", "epoch": 4, "last_number": None, "followers": {}})
    metrics.watch("order", follower)
    assert value("bazaar_order_is_leader") == 0
    assert value("bazaar_order_commit_number") == -1
    del follower  # watched weakly: a gone replica leaves the exposition
    assert REGISTRY.get_sample_value("bazaar_order_is_leader") is None


def test_http_meter_counts_routes_methods_and_codes():
    def app(environ, start_response):
        code = "404 NOT FOUND" if environ["PATH_INFO"] == "/nope" else "200 OK"
        start_response(code, [("Content-Type", "text/plain")])
        return [b"x"]

    samples = RecentSamples()
    meter = HttpMeter(samples, batch=2)
    wrapped = meter.wrap(app)
    requests = [("/stocks/A", "GET"), ("/stocks/B", "GET"), ("/nope", "BREW"), ("/stocks/C", "GET")]
    for path, method in requests:
        assert wrapped({"PATH_INFO": path, "REQUEST_METHOD": method}, lambda *_: None) == [b"x"]
    assert len(meter._queue) < 2  # drained on the request path once a batch waits
    families = {f.name: f for f in meter.collect()}
    counts = {tuple(s.labels.values()): s.value for s in families["bazaar_http_requests"].samples}
    assert counts == {("/stocks/<name>", "GET", "200"): 3, ("other", "other", "404"): 1}
    buckets = [
        s
        for s in families["bazaar_http_request_duration_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert {s.labels["route"]: s.value for s in buckets} == {"/stocks/<name>": 3, "other": 1}
    assert sum(s["lookups"] for s in samples.series(now=samples._second + 1)) >= 1


def test_health_states_and_lag():
    def st(leader, last):
        return {"leader": leader, "last_number": last, "role": "x"}

    cache = {"capacity": 1, "size": 0, "hits": 0, "misses": 0}
    data, code = health(True, {1: st(3, 5), 2: None, 3: st(3, 9)}, 3, 2, cache)
    assert (data["status"], code) == ("degraded", 200)
    assert data["order"]["replicas"]["1"]["lag"] == 4
    assert data["order"]["replicas"]["2"] == {
        "up": False,
        "last_number": None,
        "role": None,
        "lag": None,
        "replicating": None,
    }
    assert health(False, {3: st(3, 9)}, 3, 2, cache)[1] == 503
    assert health(True, {3: st(None, 9)}, 3, 2, cache)[1] == 503
    assert health(True, {3: st(3, 9)}, None, 2, cache)[0]["status"] == "unavailable"
    assert (
        health(True, {1: st(3, None), 3: st(3, 9)}, 3, 2, cache)[0]["order"]["replicas"]["1"]["lag"]
        == 10
    )


def test_health_is_degraded_when_the_leader_cannot_hear_a_follower_the_front_end_reaches():
    """A link cut between the leader and a follower: every replica answers the
    front end, but that follower gets no records (SPEC: degraded)."""
    cache = {"capacity": 1, "size": 0, "hits": 0, "misses": 0}

    def statuses(heard_1, heard_2=True):
        leader = {"leader": 3, "last_number": 9, "role": "leader", "majority": True}
        leader["followers"] = {"1": {"heard": heard_1}, "2": {"heard": heard_2}}
        follower = {"leader": 3, "last_number": 9, "role": "follower"}
        return {1: dict(follower), 2: dict(follower), 3: leader}

    data, code = health(True, statuses(heard_1=True), 3, 2, cache)
    assert (data["status"], code) == ("ok", 200)
    assert [data["order"]["replicas"][r]["replicating"] for r in "123"] == [True, True, None]

    data, code = health(True, statuses(heard_1=False), 3, 2, cache)
    assert (data["status"], code) == ("degraded", 200)
    assert data["order"]["replicas"]["1"]["up"] is True  # the front end still reaches it
    assert data["order"]["replicas"]["1"]["replicating"] is False

    # A leader that says nothing about its followers (an older release): as before.
    old = statuses(heard_1=False)
    del old[3]["followers"]
    assert health(True, old, 3, 2, cache)[0]["status"] == "ok"
    # Without a majority it is unavailable whatever it hears.
    lost = statuses(heard_1=False, heard_2=False)
    lost[3]["majority"] = False
    assert health(True, lost, 3, 2, cache)[0]["status"] == "unavailable"


def test_services_without_a_metrics_port_never_load_prometheus_client():
    """~9 MB of RSS per process (http.server, ssl): only loaded when metrics are on."""
    code = (
        "import sys\n"
        "from bazaar import metrics, rpc\n"
        "import bazaar.order.service, bazaar.catalog.service\n"
        "server = rpc.Server('tcp://127.0.0.1:0', service='order')\n"
        "server.observe('order', 'OK', 0.001)\n"
        "with metrics.fsync_timer('order'):\n"
        "    pass\n"
        "metrics.watch('order', server)\n"
        "server.stop()\n"
        "assert 'prometheus_client' not in sys.modules, 'loaded'\n"
        "metrics.activate()\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
