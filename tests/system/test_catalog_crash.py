"""The catalog as a real process: SIGKILL mid-stream, a full disk, a read-only data dir.

Each kill round streams trades from a thread, kills the catalog with SIGKILL
while trades are in flight, checks that its catalog.db loads, restarts it on
the same data dir and checks that every acknowledged trade is there exactly
once, that only the one trade in flight at the kill may or may not be, and that
quantities and volumes are what the listed trades imply.

The disk tests put the catalog's data dir on a small tmpfs (root only; skipped
otherwise): a full disk makes trades UNAVAILABLE (never INTERNAL) without
losing anything acknowledged, and trading resumes once there is room again; a
read-only data dir stops the start with one clear line.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from bazaar import rpc
from bazaar.catalog import export, store
from bazaar.errors import BazaarError
from bazaar.testing import START_QUANTITY, STOCKS
from bazaar.testing.cluster import Cluster
from bazaar.testing.keys import rpc_client
from tests.system.disks import fill, remount, small_disks

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(stopped_cluster):
    """Nothing runs at first: each test starts the catalog (only) itself."""
    return stopped_cluster


def wait_catalog_up(cluster: Cluster) -> None:
    def answers():
        with rpc_client(cluster.catalog_endpoint, "client", "catalog", timeout=1.0) as client:
            return client.call("ping", idempotent=True)

    cluster.wait_until(answers, timeout=60, interval=0.1, msg="catalog answers ping")


class TradeStream(threading.Thread):
    """Trades one after another until a call fails (the catalog died) or `stop` is set."""

    def __init__(self, endpoint: str, prefix: str, seed: int):
        super().__init__(daemon=True)
        self.client = rpc_client(endpoint, "order1", "catalog", timeout=3.0)
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.acknowledged: dict[str, dict] = {}  # key -> the trade's result
        self.refused = 0  # FAILED_PRECONDITION: a buy larger than the quantity
        self.in_flight: dict[str, tuple[str, str, int]] = {}  # key -> request, if unanswered
        self.requests: dict[str, tuple[str, str, int]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        number = 0
        try:
            while not self.stop.is_set():
                key = f"{self.prefix}{number}"
                number += 1
                request = (
                    self.rng.choice(STOCKS),
                    self.rng.choice(("buy", "sell")),
                    self.rng.randint(1, 5),
                )
                self.requests[key] = request
                name, trade_type, quantity = request
                try:
                    result = self.client.call(
                        "trade", key=key, name=name, type=trade_type, quantity=quantity, epoch=1
                    )
                except BazaarError as err:
                    if err.code == "FAILED_PRECONDITION":
                        self.refused += 1
                        continue
                    self.in_flight[key] = request  # no answer: it may or may not have happened
                    return
                self.acknowledged[key] = result
        finally:
            self.client.close()


def all_trades(client: rpc.Client) -> list[dict]:
    trades: list[dict] = []
    while True:
        page = client.call("trades_since", after=trades[-1]["seq"] if trades else 0)
        trades.extend(page["trades"])
        if not page["more"]:
            return trades


def check_catalog(
    client: rpc.Client,
    acknowledged: dict[str, dict],
    requests: dict[str, tuple[str, str, int]],
    in_flight: set[str],
) -> list[dict]:
    """Everything acknowledged is listed once, nothing else but `in_flight`; stocks agree."""
    trades = all_trades(client)
    assert [t["seq"] for t in trades] == list(range(1, len(trades) + 1))
    listed = {t["key"]: t for t in trades}
    assert len(listed) == len(trades), "a key traded twice"
    missing = set(acknowledged) - set(listed)
    assert not missing, f"acknowledged trades lost: {sorted(missing)[:5]}"
    unexpected = set(listed) - set(acknowledged) - in_flight
    assert not unexpected, f"trades nobody acknowledged: {sorted(unexpected)[:5]}"
    for key, trade in listed.items():
        assert (trade["name"], trade["type"], trade["quantity"]) == requests[key]
        if key in acknowledged:
            assert acknowledged[key]["seq"] == trade["seq"]
    quantity = Counter(dict.fromkeys(STOCKS, START_QUANTITY))
    volume = Counter(dict.fromkeys(STOCKS, 0))
    for trade in trades:
        sign = -1 if trade["type"] == "buy" else 1
        quantity[trade["name"]] += sign * trade["quantity"]
        volume[trade["name"]] += trade["quantity"]
    for name in STOCKS:
        stock = client.call("lookup", name=name)
        assert (stock["quantity"], stock["volume"]) == (quantity[name], volume[name]), name
    return trades


def test_sigkill_mid_stream_loses_no_acknowledged_trade(cluster, tmp_path):
    cluster.start("catalog")
    wait_catalog_up(cluster)
    acknowledged: dict[str, dict] = {}
    requests: dict[str, tuple[str, str, int]] = {}
    for round_number in range(3):
        stream = TradeStream(cluster.catalog_endpoint, f"r{round_number}-", seed=round_number)
        stream.start()
        cluster.wait_until(
            lambda s=stream: len(s.acknowledged) >= 40 or not s.is_alive(),
            timeout=60,
            msg="trades streaming",
        )
        assert stream.is_alive(), f"the stream stopped early: {stream.in_flight}"
        cluster.kill("catalog")  # the stream is in the middle of a call right now
        stream.join(30)
        assert not stream.is_alive()
        acknowledged |= stream.acknowledged
        requests |= stream.requests

        # Straight after the kill the database loads (here a copy, so the real
        # restart below meets the raw state the kill left).
        copy = tmp_path / f"after-kill-{round_number}"
        shutil.copytree(cluster.data_dir("catalog"), copy)
        store.Catalog.open(copy).close()

        cluster.start("catalog")
        wait_catalog_up(cluster)
        with rpc_client(cluster.catalog_endpoint, "order1", "catalog", timeout=10.0) as client:
            check_catalog(client, acknowledged, requests, set(stream.in_flight))
            # A retry of the unanswered trade settles it: applied once, whatever happened.
            for key, (name, trade_type, quantity) in stream.in_flight.items():
                acknowledged[key] = client.call(
                    "trade", key=key, name=name, type=trade_type, quantity=quantity, epoch=1
                )
            trades = check_catalog(client, acknowledged, requests, in_flight=set())
            assert len(trades) == len(acknowledged)
            # `bazaar export market` beside the running catalog shows the same market.
            market = {s.name: s.to_dict() for s in export.read_market(cluster.data_dir("catalog"))}
            for name in STOCKS:
                assert market[name] == client.call("lookup", name=name)


def test_sigterm_stops_promptly_and_keeps_the_trades(cluster):
    proc = cluster.start("catalog")
    wait_catalog_up(cluster)
    with rpc_client(cluster.catalog_endpoint, "order1", "catalog", timeout=10.0) as client:
        client.call("trade", key="k", name="BoarCo", type="buy", quantity=7, epoch=1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    market = {s.name: s for s in export.read_market(cluster.data_dir("catalog"))}
    assert (market["BoarCo"].quantity, market["BoarCo"].volume) == (93, 7)


def test_corrupt_market_file_is_a_one_line_startup_error(cluster):
    path = cluster.catalog_csv()
    path.write_text("name,price,quantity,volume,max_volume\nGameStart,cheap,100,0,\n")
    proc = cluster.start("catalog")
    assert proc.wait(30) != 0
    output = (cluster.root / "catalog.log").read_text()
    assert f"{path}, line 2: price 'cheap' is not a number" in output
    assert "Traceback" not in output
    assert path.read_text().startswith("name,price,quantity,volume,max_volume\nGameStart,cheap")


def test_root_launcher_runs_the_catalog_role():
    done = subprocess.run(
        [sys.executable, "catalog.py", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "catalog" in done.stdout.lower()


# ---- disk failures (root only: a small tmpfs as the data dir) -------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """The catalog's data dir on its own 8 MiB tmpfs; yields its path."""
    with small_disks(tmp_path / "catalog") as (path,):
        yield path


def test_full_disk_is_unavailable_and_loses_nothing(cluster, small_disk):
    cluster.start("catalog")
    wait_catalog_up(cluster)
    acknowledged: dict[str, dict] = {}
    requests: dict[str, tuple[str, str, int]] = {}
    unavailable: set[str] = set()
    rng = random.Random(7)
    with rpc_client(cluster.catalog_endpoint, "order1", "catalog", timeout=10.0) as client:

        def trade(key: str) -> str:
            request = (rng.choice(STOCKS), "sell", rng.randint(1, 5))
            requests[key] = request
            name, trade_type, quantity = request
            try:
                acknowledged[key] = client.call(
                    "trade", key=key, name=name, type=trade_type, quantity=quantity, epoch=1
                )
                return "OK"
            except BazaarError as err:
                assert err.remote and err.code == "UNAVAILABLE", err  # never INTERNAL
                unavailable.add(key)
                return err.code

        for i in range(20):
            assert trade(f"before-{i}") == "OK"
        fill(small_disk)
        # The WAL may reuse space it already has for a while; it soon needs more.
        for i in range(3000):
            trade(f"full-{i}")
            if len(unavailable) >= 5:
                break
        assert unavailable, "the full disk never stopped a trade"
        assert cluster.procs["catalog"].poll() is None, "the catalog died of a full disk"
        assert client.call("lookup", name="GameStart")["name"] == "GameStart"  # reads go on
        check_catalog(client, acknowledged, requests, in_flight=set())
        (small_disk / "filler").unlink()
        # Room again: the refused trades go through on retry, once each.
        for key in sorted(unavailable):
            name, trade_type, quantity = requests[key]
            acknowledged[key] = client.call(
                "trade", key=key, name=name, type=trade_type, quantity=quantity, epoch=1
            )
    cluster.kill("catalog")
    cluster.start("catalog")
    wait_catalog_up(cluster)
    with rpc_client(cluster.catalog_endpoint, "order1", "catalog", timeout=10.0) as client:
        trades = check_catalog(client, acknowledged, requests, in_flight=set())
    assert len(trades) == len(acknowledged)
    log_text = (cluster.root / "catalog.log").read_text()
    assert "database or disk is full" in log_text and "Traceback" not in log_text


def test_read_only_data_dir_is_a_one_line_startup_error(cluster, small_disk):
    proc = cluster.start("catalog")
    wait_catalog_up(cluster)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    remount(small_disk, "ro")
    proc = cluster.start("catalog")
    assert proc.wait(30) != 0
    output = (cluster.root / "catalog.log").read_text()
    assert "Traceback" not in output
    assert "UNAVAILABLE" in output and str(small_disk) in output


def test_health_reports_a_full_catalog_disk_then_recovers(cluster, small_disk):
    """A full disk is on /health (not only in the log), and clears once a trade commits."""
    cluster.start_all(timeout=60)
    for _ in range(5):
        status, body = cluster.http(
            "POST", "/orders", {"name": "GameStart", "type": "sell", "quantity": 1}
        )
        assert status == 200, body
    fill(small_disk)

    def refused() -> dict | None:
        # The WAL may reuse space it already has for a while; it soon needs more.
        status, body = cluster.http(
            "POST", "/orders", {"name": "FishCo", "type": "sell", "quantity": 1}
        )
        assert status in (200, 503), (status, body)
        return body if status == 503 else None

    body = cluster.wait_until(refused, timeout=60, interval=0, msg="the full disk refuses an order")
    assert body["error"]["code"] == 503, body
    assert cluster.procs["catalog"].poll() is None, "the catalog died of a full disk"

    def full_disk_shown() -> dict | None:
        status, body = cluster.http("GET", "/health", timeout=3)
        data = body["data"]
        return data if status == 503 and data["catalog"]["writable"] is False else None

    data = cluster.wait_until(
        full_disk_shown, timeout=60, interval=0.1, msg="/health shows the disk"
    )
    assert data["status"] == "unavailable" and data["catalog"]["up"] is True
    status, _ = cluster.http("GET", "/stocks/GameStart")
    assert status == 200  # lookups go on

    (small_disk / "filler").unlink()
    # Room again: the next order commits and /health turns ok by itself.
    key = {"Idempotency-Key": "after-the-disk-was-freed"}
    placed = cluster.wait_until(
        lambda: (
            cluster.http(
                "POST", "/orders", {"name": "FishCo", "type": "sell", "quantity": 1}, headers=key
            )[0]
            == 200
        ),
        timeout=60,
        interval=0.2,
        msg="an order after the disk was freed",
    )
    assert placed
    cluster.wait_healthy(timeout=60)
    assert cluster.health()["data"]["catalog"] == {"up": True, "writable": True}
