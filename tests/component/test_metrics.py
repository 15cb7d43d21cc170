"""Metrics over real sockets: the RPC server's hook, a service's own /metrics port, the front end's."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bazaar import metrics
from bazaar.errors import BazaarError
from bazaar.frontend.app import close_app, create_app
from bazaar.frontend.cache import LookupCache
from bazaar.testing.frontend_fakes import FakeCatalogClient, FakeOrders
from tests.conftest import free_port

metrics.activate()  # off by default in a process (see bazaar.metrics)


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_rpc_server_counts_every_executed_request(client):
    ok = value("bazaar_rpc_requests_total", method="echo", code="OK")
    bad = value("bazaar_rpc_requests_total", method="echo", code="INVALID_ARGUMENT")
    internal = value("bazaar_rpc_requests_total", method="boom", code="INTERNAL")
    timed = value("bazaar_rpc_duration_seconds_count", method="echo")
    for _ in range(3):
        client.call("echo", value=1)
    with pytest.raises(BazaarError):
        client.call("echo", nope=1)
    with pytest.raises(BazaarError):
        client.call("boom")
    assert value("bazaar_rpc_requests_total", method="echo", code="OK") == ok + 3
    assert value("bazaar_rpc_requests_total", method="echo", code="INVALID_ARGUMENT") == bad + 1
    assert value("bazaar_rpc_requests_total", method="boom", code="INTERNAL") == internal + 1
    assert value("bazaar_rpc_duration_seconds_count", method="echo") == timed + 4
    with pytest.raises(BazaarError):
        client.call("no_such_method_" + "x" * 100)
    # Unknown methods are answered but never become a label value.
    assert not any(
        s.labels.get("method", "").startswith("no_such_method")
        for family in REGISTRY.collect()
        for s in family.samples
    )


def test_metrics_port_serves_the_exposition_and_stops():
    port = free_port()
    server = metrics.serve("127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(body)}
        assert {"process_resident_memory_bytes", "bazaar_rpc_requests"} <= names
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert metrics.serve("127.0.0.1", 0) is None


def test_frontend_metrics_route_and_promtool():
    cache = LookupCache(10)
    cache.set_live(True)
    app = create_app(catalog=FakeCatalogClient(), orders=FakeOrders(), cache=cache)
    try:
        client = app.test_client()
        for _ in range(3):
            assert client.get("/stocks/GameStart").status_code == 200
        assert client.get("/stocks/Nope").status_code == 404
        resp = client.get("/metrics")
        assert resp.status_code == 200
        assert resp.content_type.startswith("text/plain; version=")
        body = resp.get_data(as_text=True)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
        }
        key = (
            "bazaar_http_requests_total",
            (("code", "200"), ("method", "GET"), ("route", "/stocks/<name>")),
        )
        assert samples[key] >= 3
        assert samples[("bazaar_cache_hits_total", ())] == 2
        assert samples[("bazaar_cache_misses_total", ())] == 2
        for name in ("bazaar_cache_flushes_total", "bazaar_leader_elections_total"):
            assert (name, ()) in samples
        assert "Nope" not in body  # user input never becomes a label
        promtool = shutil.which("promtool")
        if promtool:
            check = subprocess.run(
                [promtool, "check", "metrics"], input=body.encode(), capture_output=True
            )
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        close_app(app)


def test_fsync_histograms_observe_durable_writes(tmp_path):
    from bazaar.catalog.service import CatalogService
    from bazaar.config import Config
    from tests.conftest import KEYS_DIR

    before = value("bazaar_catalog_fsync_duration_seconds_count")
    config = Config(
        catalog="tcp://127.0.0.1:0",
        catalog_pub="tcp://127.0.0.1:0",
        data_dir=tmp_path,
        keys_dir=KEYS_DIR,
    )
    with CatalogService(config) as service:
        service.trade("k1", "GameStart", "buy", 1, 1)
        service.trade("k2", "GameStart", "sell", 1, 1)
    assert value("bazaar_catalog_fsync_duration_seconds_count") >= before + 2
    assert value("bazaar_catalog_fsync_duration_seconds_sum") > 0
