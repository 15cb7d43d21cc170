"""Concurrent trading through the real front end: conservation, no oversell, numbering.

16 sessions trade the same few stocks; at quiescence, for every stock,
100 - sum(buys) + sum(sells) over the order log equals the catalog's quantity
and its volume is the traded total; no lookup ever saw a negative quantity;
every acknowledged number is readable and the numbers are exactly 0..N-1.
"""

from __future__ import annotations

import os
import random
import threading
from collections import defaultdict

import pytest

from bazaar.testing import STOCKS

pytestmark = pytest.mark.timeout(600)

SESSIONS = 16
REQUESTS = int(os.environ.get("BAZAAR_TRADING_REQUESTS", "25"))


def test_concurrent_sessions_conserve_stock(cluster):
    seed = int(os.environ.get("BAZAAR_TRADING_SEED") or random.randrange(1 << 32))
    print(f"\ntrading seed: BAZAAR_TRADING_SEED={seed}")
    initial = {name: cluster.http("GET", f"/stocks/{name}")[1]["data"] for name in STOCKS}
    assert all(s["quantity"] == 100 and s["volume"] == 0 for s in initial.values()), initial
    acked: dict[int, tuple[str, str, int]] = {}
    negatives: list = []
    failures: list = []
    lock = threading.Lock()

    def session(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        for _ in range(REQUESTS):
            name = rng.choice(STOCKS)
            status, body = cluster.http("GET", f"/stocks/{name}", timeout=30)
            if status != 200 or body["data"]["quantity"] < 0:
                negatives.append((name, status, body))
            order = {
                "name": name,
                "type": rng.choice(("buy", "sell")),
                "quantity": rng.randint(1, 5),
            }
            status, body = cluster.http("POST", "/orders", order, timeout=30)
            if status == 200:
                with lock:
                    number = body["data"]["transaction_number"]
                    assert number not in acked, f"number {number} acknowledged twice"
                    acked[number] = (order["name"], order["type"], order["quantity"])
            elif status != 400:  # 400: not enough stock, a legitimate answer
                failures.append((order, status, body))

    threads = [threading.Thread(target=session, args=(i,)) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(500)
    assert not failures, failures[:5]
    assert not negatives, negatives[:5]
    assert acked, "no order went through"

    # Numbers are exactly 0..N-1 and each reads back as acknowledged.
    assert sorted(acked) == list(range(len(acked)))
    for number, (name, kind, qty) in acked.items():
        status, body = cluster.http("GET", f"/orders/{number}")
        assert status == 200, body
        assert body["data"] == {"number": number, "name": name, "type": kind, "quantity": qty}
    assert cluster.http("GET", f"/orders/{len(acked)}")[0] == 404

    # Conservation per stock over the order log.
    delta: dict[str, int] = defaultdict(int)
    volume: dict[str, int] = defaultdict(int)
    for name, kind, qty in acked.values():
        delta[name] += -qty if kind == "buy" else qty
        volume[name] += qty
    for name in STOCKS:
        data = cluster.http("GET", f"/stocks/{name}")[1]["data"]
        assert data["quantity"] == 100 + delta[name], name
        assert data["volume"] == volume[name], name
        assert data["quantity"] >= 0


def test_concurrent_buys_never_oversell(cluster):
    status, body = cluster.http(
        "POST", "/orders", {"name": "BoarCo", "quantity": 95, "type": "buy"}
    )
    assert status == 200, body
    results: list[int] = []
    lock = threading.Lock()

    def buyer() -> None:
        for _ in range(2):
            status, body = cluster.http(
                "POST", "/orders", {"name": "BoarCo", "quantity": 1, "type": "buy"}, timeout=30
            )
            with lock:
                results.append(status)

    threads = [threading.Thread(target=buyer) for _ in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results.count(200) == 5, results
    assert results.count(400) == len(results) - 5, results
    data = cluster.http("GET", "/stocks/BoarCo")[1]["data"]
    assert data["quantity"] == 0
    assert data["volume"] == 100


def test_restarted_front_end_adopts_the_leader_and_numbering_continues(cluster):
    status, body = cluster.http("POST", "/orders", {"name": "FishCo", "quantity": 1, "type": "buy"})
    assert status == 200, body
    first = body["data"]["transaction_number"]
    before = cluster.health()["data"]["order"]
    cluster.restart("frontend")  # SIGKILL, then start again on the same port
    cluster.wait_healthy(60)
    after = cluster.health()["data"]["order"]
    assert (after["leader"], after["epoch"]) == (before["leader"], before["epoch"])
    status, body = cluster.http(
        "POST", "/orders", {"name": "FishCo", "quantity": 1, "type": "sell"}
    )
    assert status == 200, body
    assert body["data"]["transaction_number"] == first + 1
