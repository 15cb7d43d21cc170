"""The load client's pure parts, and a whole run against an in-memory fake bazaar."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import threading
from collections import Counter

import numpy as np
import pytest

from bazaar import load
from bazaar.load import Ack, Recorder, Reply


class FakeBazaar:
    """The HTTP API of SPEC section 1, in memory, shared by all fake sessions."""

    def __init__(self, quantity: int = 100, corrupt: dict[int, dict] | None = None):
        self.lock = threading.Lock()
        self.stocks = dict.fromkeys(load.DEFAULT_STOCKS, quantity)
        self.orders: list[dict] = []
        self.keys: dict[str, int] = {}
        self.corrupt = corrupt or {}
        self.fail_next_posts = 0  # transport failures after the order was taken

    def session(self) -> FakeSession:
        return FakeSession(self)

    def handle(self, method: str, path: str, body, headers) -> Reply:
        with self.lock:
            if method == "GET" and path.startswith("/stocks/"):
                name = path.removeprefix("/stocks/")
                if name not in self.stocks:
                    return Reply(404, {"error": {"code": 404, "message": "no such stock"}})
                return Reply(200, {"data": {"name": name, "quantity": self.stocks[name]}})
            if method == "POST" and path == "/orders":
                return self._order(body, headers.get("Idempotency-Key"))
            if method == "GET" and path.startswith("/orders/"):
                number = int(path.removeprefix("/orders/"))
                if number >= len(self.orders):
                    return Reply(404, {"error": {"code": 404, "message": "no such order"}})
                return Reply(200, {"data": self.corrupt.get(number, self.orders[number])})
        return Reply(404, None)

    def _order(self, body, key) -> Reply:
        if key in self.keys:
            return Reply(200, {"data": {"transaction_number": self.keys[key]}})
        sign = -1 if body["type"] == "buy" else 1
        if self.stocks[body["name"]] + sign * body["quantity"] < 0:
            return Reply(400, {"error": {"code": 400, "message": "not enough stock"}})
        self.stocks[body["name"]] += sign * body["quantity"]
        number = len(self.orders)
        self.orders.append({"number": number, **body})
        self.keys[key] = number
        if self.fail_next_posts:
            self.fail_next_posts -= 1
            raise load.TransportError("connection reset after the order was taken")
        return Reply(200, {"data": {"transaction_number": number}})


class FakeSession:
    def __init__(self, bazaar: FakeBazaar):
        self.bazaar = bazaar
        self.closed = False

    def request(self, method, path, body=None, headers=None):
        return self.bazaar.handle(method, path, body, headers or {})

    def close(self):
        self.closed = True


# ---- summary ---------------------------------------------------------------
def test_summarize_uses_numpy_percentiles_in_ms():
    seconds = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    s = load.summarize(seconds, seconds=2.0)
    assert s.count == 100
    assert s.p50_ms == pytest.approx(np.percentile(np.arange(1, 101), 50))
    assert s.p95_ms == pytest.approx(95.05)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.max_ms == pytest.approx(100)
    assert s.throughput == pytest.approx(50.0)


def test_summarize_empty_is_nan_not_an_error():
    s = load.summarize([], seconds=1.0)
    assert s.count == 0 and math.isnan(s.p50_ms) and s.throughput == 0.0


def test_format_table_has_a_row_per_kind():
    summary = {k: load.summarize([0.001, 0.002], 1.0) for k in load.KINDS}
    text = load.format_table(summary)
    for kind in load.KINDS:
        assert kind in text
    assert "p99 ms" in text


def test_parse_floats():
    assert load.parse_floats("0,0.2, 0.8") == [0.0, 0.2, 0.8]
    with pytest.raises(ValueError):
        load.parse_floats("0,1.5")
    with pytest.raises(ValueError):
        load.parse_floats("")


# ---- classification --------------------------------------------------------
@pytest.mark.parametrize(
    "kind,status,outcome",
    [
        ("lookup", 200, "ok"),
        ("lookup", 404, "http_404"),
        ("order", 400, "rejected"),
        ("order", 503, "http_503"),
        ("get_order", 400, "http_400"),
        ("get_order", 500, "http_500"),
    ],
)
def test_classify(kind, status, outcome):
    assert load.classify(kind, Reply(status, None)) == outcome


# ---- verification ----------------------------------------------------------
ACK = Ack(3, "FishCo", "buy", 2, "k")


def stored(**changes):
    data = {"number": 3, "name": "FishCo", "type": "buy", "quantity": 2}
    data.update(changes)
    return Reply(200, {"data": data})


def test_check_order_match():
    assert load.check_order(ACK, stored()) is None


@pytest.mark.parametrize("field,value", [("name", "BoarCo"), ("type", "sell"), ("quantity", 3)])
def test_check_order_reports_a_different_field(field, value):
    m = load.check_order(ACK, stored(**{field: value}))
    assert m.problem == "different" and m.number == 3


def test_check_order_missing_error_and_garbage():
    assert load.check_order(ACK, Reply(404, {})).problem == "missing"
    assert load.check_order(ACK, Reply(503, {})).problem == "error"
    assert load.check_order(ACK, None, "reset").problem == "error"
    assert load.check_order(ACK, Reply(200, ["not", "a", "map"])).problem == "different"


def test_find_duplicates_ignores_retries_of_one_key():
    acks = [Ack(1, "A", "buy", 1, "k1"), Ack(1, "A", "buy", 1, "k1"), Ack(2, "B", "sell", 1, "k2")]
    assert load.find_duplicates(acks) == []
    acks.append(Ack(2, "C", "buy", 1, "k3"))
    [dup] = load.find_duplicates(acks)
    assert dup.number == 2 and dup.problem == "duplicate"


def test_recorder_merge_and_errors():
    a, b = Recorder(), Recorder()
    a.record("lookup", "ok", 0.001)
    b.record("lookup", "http_500", 0.002, "boom")
    b.record("order", "transport", None, "refused")
    a.merge(b)
    assert a.latencies["lookup"] == [0.001, 0.002]
    assert a.outcomes == Counter({("lookup", "ok"): 1, ("lookup", "http_500"): 1,
                                  ("order", "transport"): 1})  # fmt: skip
    assert len(a.errors) == 2


# ---- whole runs against the fake -------------------------------------------
def test_run_against_fake_verifies_every_order():
    bazaar = FakeBazaar(quantity=5)  # little stock: some buys are rejected
    report = load.run_load(bazaar.session, sessions=4, requests=50, p=0.7, seed=7)
    assert report.mismatches == []
    assert report.ok(0.0)
    assert len(report.rec.acks) == len(bazaar.orders) > 0
    assert report.rec.outcomes[("lookup", "ok")] == 200
    assert report.rec.outcomes[("get_order", "ok")] == len(bazaar.orders)
    assert report.rec.outcomes[("order", "rejected")] > 0
    summary = report.summary()
    assert summary["lookup"].count == 200 and summary["get_order"].count == len(bazaar.orders)


def test_same_seed_same_requests():
    runs = []
    for _ in range(2):
        bazaar = FakeBazaar()
        load.run_load(bazaar.session, sessions=1, requests=30, p=0.5, seed=42)
        runs.append([(o["name"], o["type"], o["quantity"]) for o in bazaar.orders])
    assert runs[0] == runs[1] and runs[0]


def test_corrupted_order_is_a_mismatch_and_fails_the_run():
    bazaar = FakeBazaar(corrupt={0: {"number": 0, "name": "X", "type": "buy", "quantity": 1}})
    report = load.run_load(bazaar.session, sessions=2, requests=20, p=1.0, seed=1)
    assert [m.number for m in report.mismatches] == [0]
    assert not report.ok(1.0)
    assert "MISMATCH order 0" in load.format_report(report, 0.0)


def test_order_retried_with_the_same_key_after_a_transport_failure():
    bazaar = FakeBazaar()
    bazaar.fail_next_posts = 1
    rec = Recorder()
    load.do_order(bazaar.session(), rec, "FishCo", "sell", 2)
    assert len(bazaar.orders) == 1  # traded once
    assert rec.acks == [Ack(0, "FishCo", "sell", 2, rec.acks[0].key)]
    assert rec.outcomes[("order", "transport")] == 1
    assert rec.outcomes[("order", "ok")] == 1


def test_error_tolerance():
    bazaar = FakeBazaar()
    report = load.run_load(bazaar.session, sessions=1, requests=10, p=0.0, seed=3)
    report.rec.record("lookup", "http_500", 0.001)
    assert report.error_count() == 1
    assert not report.ok(0.0)
    assert report.ok(0.5)


def test_plots_write_pngs(tmp_path):
    bazaar = FakeBazaar()
    reports = [
        load.run_load(bazaar.session, sessions=2, requests=20, p=p, seed=5) for p in (0.0, 0.5)
    ]
    load.plot_histograms(reports[1], str(tmp_path / "h.png"))
    load.plot_sweep(reports, str(tmp_path / "s.png"))
    for name in ("h.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sessions_are_closed():
    bazaar = FakeBazaar()
    made = []

    def factory():
        made.append(bazaar.session())
        return made[-1]

    load.run_load(factory, sessions=3, requests=5, p=0.5, seed=random.randrange(100))
    assert len(made) == 3 and all(s.closed for s in made)


def test_importing_the_load_client_pulls_in_no_optional_extra():
    """numpy, matplotlib, tqdm and urllib3 come with the `load` extra: imported when used."""
    code = (
        "import sys, bazaar.load; "
        "print(sorted(m for m in ('numpy', 'matplotlib', 'tqdm', 'urllib3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
