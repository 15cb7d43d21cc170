"""The Flask app with fake collaborators: routes, validation, JSON errors, cache use."""

from __future__ import annotations

import io
import json
import re
import time

import pytest

from bazaar.errors import BazaarError
from bazaar.frontend import monitor
from bazaar.frontend.app import close_app, create_app
from bazaar.frontend.cache import LookupCache
from bazaar.testing.frontend_fakes import STOCK, FakeCatalogClient, FakeOrders


@pytest.fixture
def parts():
    cache = LookupCache(10)
    cache.set_live(True)
    return FakeCatalogClient(), FakeOrders(), cache


@pytest.fixture
def client(parts):
    catalog, orders, cache = parts
    app = create_app(catalog=catalog, orders=orders, cache=cache)
    yield app.test_client()
    close_app(app)


def refreshed(client):
    """The client, after the front end's background view was refreshed from the fakes."""
    client.application.extensions["bazaar"]["monitor"].refresh()
    return client


def assert_error(resp, status):
    assert resp.status_code == status, resp.data
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def order(client, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    kw.setdefault("content_type", "application/json")
    return client.post("/orders", data=data, **kw)


GOOD = {"name": "GameStart", "quantity": 2, "type": "buy"}


# ---- lookups ----------------------------------------------------------------
def test_lookup_ok_and_cached(client, parts):
    catalog, _, cache = parts
    for _ in range(3):
        resp = client.get("/stocks/GameStart")
        assert resp.status_code == 200
        assert resp.get_json() == {"data": STOCK}
    assert catalog.lookups == 1
    assert cache.stats()["hits"] == 2


def test_lookup_unknown_is_404(client):
    assert_error(client.get("/stocks/Nope"), 404)


@pytest.mark.parametrize(
    ("code", "status"), [("UNAVAILABLE", 503), ("DEADLINE_EXCEEDED", 504), ("INTERNAL", 500)]
)
def test_lookup_rpc_errors_map_through_the_table(client, parts, code, status):
    parts[0].fail = BazaarError(code, "boom")
    assert_error(client.get("/stocks/GameStart"), status)


def test_order_invalidates_cached_entry(client, parts):
    catalog = parts[0]
    client.get("/stocks/GameStart")
    assert order(client, GOOD).status_code == 200
    client.get("/stocks/GameStart")
    assert catalog.lookups == 2


# ---- orders -----------------------------------------------------------------
def test_order_json_and_get(client):
    resp = order(client, GOOD)
    assert resp.status_code == 200
    assert resp.get_json() == {"data": {"transaction_number": 0}}
    resp = client.get("/orders/0")
    assert resp.get_json() == {
        "data": {"number": 0, "name": "GameStart", "type": "buy", "quantity": 2}
    }


def test_order_form_encoded(client, parts):
    resp = client.post("/orders", data={"name": "GameStart", "quantity": "3", "type": "sell"})
    assert resp.status_code == 200, resp.data
    assert parts[1].placed[0][1:] == ("GameStart", "sell", 3)


def test_form_typed_json_body_is_accepted(client):
    resp = order(client, GOOD, content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 200


def test_idempotency_key_is_passed_through(client, parts):
    headers = {"Idempotency-Key": "abc-123"}
    first = order(client, GOOD, headers=headers).get_json()
    second = order(client, GOOD, headers=headers).get_json()
    assert first == second
    assert len(parts[1].placed) == 1
    assert parts[1].placed[0][0] == "abc-123"


def test_generated_keys_are_unique(client, parts):
    order(client, GOOD)
    order(client, GOOD)
    keys = [p[0] for p in parts[1].placed]
    assert len(set(keys)) == 2


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"[1,2]",
        b'"text"',
        b"null",
        b"1e999",
        b"[" * 5000 + b"]" * 5000,
        b"\xff\xfe",
        {"name": "GameStart", "quantity": 2},
        {"name": "GameStart", "type": "buy"},
        {"quantity": 2, "type": "buy"},
        {**GOOD, "extra": 1},
        {**GOOD, "quantity": True},
        {**GOOD, "quantity": False},
        {**GOOD, "quantity": 0},
        {**GOOD, "quantity": -1},
        {**GOOD, "quantity": 1.5},
        {**GOOD, "quantity": 2.0},
        {**GOOD, "quantity": "2"},
        {**GOOD, "quantity": None},
        {**GOOD, "quantity": 10**30},
        {**GOOD, "type": "BUY"},
        {**GOOD, "type": "hold"},
        {**GOOD, "type": None},
        {**GOOD, "name": ""},
        {**GOOD, "name": 5},
        {**GOOD, "name": "x" * 1000},
        {**GOOD, "name": ["GameStart"]},
    ],
)
def test_bad_order_bodies_are_400(client, parts, body):
    assert_error(order(client, body), 400)
    assert parts[1].placed == []


def test_huge_integer_literal_is_400(client):
    assert_error(
        order(client, b'{"name":"GameStart","type":"buy","quantity":' + b"9" * 5000 + b"}"), 400
    )


@pytest.mark.parametrize(
    "form",
    [
        "name=GameStart&quantity=2",
        "name=GameStart&quantity=2&type=buy&x=1",
        "name=GameStart&quantity=two&type=buy",
        "name=GameStart&quantity=2.0&type=buy",
        "name=GameStart&quantity=1_000&type=buy",
        "name=GameStart&quantity=%EF%BC%92&type=buy",  # full-width digit 2
        "name=GameStart&quantity=0&type=buy",
        "name=GameStart&quantity=&type=buy",
        "name=GameStart&name=FishCo&quantity=2&type=buy",
        "name=GameStart&quantity=2&type=buy&&",
        "%ZZ",
    ],
)
def test_bad_forms_are_400(client, parts, form):
    resp = client.post("/orders", data=form, content_type="application/x-www-form-urlencoded")
    assert_error(resp, 400)
    assert parts[1].placed == []


@pytest.mark.parametrize("key", ["", "a b", "x" * 201, "é"])
def test_bad_idempotency_keys_are_400(client, key):
    resp = order(client, GOOD, headers={"Idempotency-Key": key})
    assert_error(resp, 400)


def test_body_too_large_is_413(client):
    assert_error(order(client, b'{"name":"' + b"x" * 100_000 + b'"}'), 413)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("NOT_FOUND", 404),
        ("FAILED_PRECONDITION", 400),
        ("UNAVAILABLE", 503),
        ("DEADLINE_EXCEEDED", 504),
        ("INTERNAL", 500),
        ("ALREADY_EXISTS", 409),
    ],
)
def test_order_rpc_errors_map_through_the_table(client, parts, code, status):
    parts[1].fail = BazaarError(code, "nope")
    assert_error(order(client, GOOD), status)


INTERNALS = "tcp://order2:5562 is not reachable (order): /data/orders-2.db: OSError"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("UNAVAILABLE", 503),
        ("DEADLINE_EXCEEDED", 504),
        ("INTERNAL", 500),
        ("PERMISSION_DENIED", 500),
    ],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_server_side_errors_carry_a_request_id_not_internals(
    client, parts, caplog, code, status, chunked
):
    """Host names, paths and exception text stay in the log, under the id the user sees.
    PERMISSION_DENIED means the front end's own key was refused: a 500, never a 403."""
    parts[1].fail = BazaarError(code, INTERNALS)
    kw = {"data": json.dumps(GOOD)}
    if chunked:  # the Flask route; a Content-Length takes the fast path
        kw = {"input_stream": io.BytesIO(json.dumps(GOOD).encode())}
        kw["headers"] = {"Transfer-Encoding": "chunked"}
        kw["environ_overrides"] = {"wsgi.input_terminated": True}
    resp = client.post("/orders", content_type="application/json", **kw)
    assert_error(resp, status)
    message = resp.get_json()["error"]["message"]
    assert "tcp://" not in message and "/data" not in message and "OSError" not in message
    rid = re.search(r"request id ([0-9a-f]{12})", message).group(1)
    assert rid in caplog.text and INTERNALS in caplog.text
    parts[0].fail = BazaarError(code, INTERNALS)  # the lookup route too
    lookup = client.get("/stocks/Unseen")
    assert_error(lookup, status)
    assert "tcp://" not in lookup.get_json()["error"]["message"]


@pytest.mark.parametrize("number", ["abc", "1.5", "0x10", "1e3", "%20", "-1", "１"])
def test_bad_order_numbers_are_400(client, number):
    assert_error(client.get(f"/orders/{number}"), 400)


def test_unknown_order_number_is_404(client):
    assert_error(client.get("/orders/7"), 404)
    assert_error(client.get("/orders/" + "9" * 25), 404)


# ---- routes and methods -----------------------------------------------------
@pytest.mark.parametrize("path", ["/stocks", "/stocks/", "/orders/", "/order/1", "/x" * 50])
def test_unknown_routes_are_json_404(client, path):
    assert_error(client.get(path), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/stocks/GameStart"),
        ("DELETE", "/stocks/GameStart"),
        ("GET", "/orders"),
        ("PUT", "/orders"),
        ("POST", "/orders/1"),
        ("POST", "/health"),
        ("PATCH", "/health"),
    ],
)
def test_wrong_methods_are_json_405(client, method, path):
    resp = client.open(path, method=method)
    assert_error(resp, 405)
    assert "Allow" in resp.headers


def test_unexpected_exception_is_json_500(parts):
    catalog, orders, cache = parts
    catalog.fail = RuntimeError("kaboom")  # type: ignore[assignment]
    app = create_app(catalog=catalog, orders=orders, cache=cache)
    resp = app.test_client().get("/stocks/GameStart")
    assert_error(resp, 500)
    assert b"Traceback" not in resp.data


# ---- health -------------------------------------------------------------------
def test_health_ok(client):
    resp = refreshed(client).get("/health")
    assert resp.status_code == 200
    data = resp.get_json()["data"]
    assert data["status"] == "ok"
    assert data["catalog"] == {"up": True, "writable": True}
    assert data["order"]["leader"] == 3 and data["order"]["epoch"] == 1
    assert data["order"]["replicas"]["1"] == {
        "up": True,
        "last_number": None,
        "role": "x",
        "lag": None,
        "replicating": None,  # the fake leader does not say
    }
    assert {"capacity", "size", "hits", "misses"} <= set(data["cache"])


def test_health_degraded_when_a_follower_is_down(client, parts):
    parts[1].replica_up[1] = False
    resp = refreshed(client).get("/health")
    assert resp.status_code == 200
    assert resp.get_json()["data"]["status"] == "degraded"


def test_health_503_when_leader_down(client, parts):
    parts[1].replica_up[3] = False
    resp = refreshed(client).get("/health")
    assert resp.status_code == 503
    assert resp.get_json()["data"]["status"] == "unavailable"


def test_health_503_when_catalog_down(client, parts):
    parts[0].up = False
    resp = refreshed(client).get("/health")
    assert resp.status_code == 503
    assert resp.get_json()["data"]["catalog"] == {"up": False, "writable": None}


def test_health_503_when_the_catalog_cannot_write(client, parts):
    # A full disk: the catalog answers lookups but refuses every trade.
    parts[0].writable = False
    resp = refreshed(client).get("/health")
    assert resp.status_code == 503
    data = resp.get_json()["data"]
    assert data["status"] == "unavailable"
    assert data["catalog"] == {"up": True, "writable": False}
    parts[0].writable = True  # the next write committed: back to ok
    assert refreshed(client).get("/health").get_json()["data"]["status"] == "ok"


def test_health_503_when_leader_no_longer_leads(client, parts):
    parts[1].leader = 3
    real = parts[1].statuses
    parts[1].statuses = lambda *_, **__: {**real(), 3: {"id": 3, "leader": None, "epoch": 1}}
    assert refreshed(client).get("/health").status_code == 503


def test_health_503_when_no_leader(client, parts):
    parts[1].leader = None
    assert refreshed(client).get("/health").status_code == 503


# ---- the cached-lookup fast path ------------------------------------------------
def test_fast_path_serves_the_same_response_and_counts_once(client, parts):
    catalog, _, cache = parts
    first = client.get("/stocks/GameStart")  # miss: through Flask, fills the cache
    second = client.get("/stocks/GameStart")  # hit: served by the middleware
    assert first.data == second.data
    assert second.mimetype == "application/json"
    assert int(second.headers["Content-Length"]) == len(second.data)
    assert (cache.stats()["hits"], cache.stats()["misses"], catalog.lookups) == (1, 1, 1)


def test_fast_path_leaves_other_requests_to_flask(client, parts):
    catalog, _, cache = parts
    client.get("/stocks/GameStart")
    assert client.head("/stocks/GameStart").status_code == 200
    assert_error(client.get("/stocks/GameStart/x"), 404)
    assert_error(client.post("/stocks/GameStart"), 405)
    assert_error(client.get("/stocks/Gäme"), 404)


@pytest.mark.parametrize(
    ("code", "drops"), [("FAILED_PRECONDITION", False), ("DEADLINE_EXCEEDED", True)]
)
def test_failed_order_drops_entry_only_when_it_may_have_traded(client, parts, code, drops):
    catalog, orders, cache = parts
    client.get("/stocks/GameStart")
    orders.fail = BazaarError(code, "x")
    order(client, GOOD)
    client.get("/stocks/GameStart")
    assert catalog.lookups == (2 if drops else 1)


@pytest.mark.parametrize(
    ("body", "content_type", "headers"),
    [
        (json.dumps(GOOD), "application/json", {}),
        (json.dumps(GOOD), "application/json", {"Idempotency-Key": "k-1"}),
        (json.dumps(GOOD), "application/json", {"Idempotency-Key": "bad key"}),
        ("name=GameStart&quantity=3&type=sell", "application/x-www-form-urlencoded", {}),
        ('{"name": "GameStart", "quantity": true, "type": "buy"}', "application/json", {}),
        ('{"name": "GameStart"', "application/json", {}),
        ('{"name": "GameStart", "quantity": 1, "type": "buy", "x": 1}', "text/plain", {}),
        ("", "application/json", {}),
        ("[1, 2]", "application/json", {}),
        (json.dumps({**GOOD, "name": "Nope"}), "application/json", {}),
    ],
)
@pytest.mark.parametrize("fail", [None, "UNAVAILABLE", "ALREADY_EXISTS"])
def test_order_fast_path_answers_as_the_flask_route(parts, body, content_type, headers, fail):
    """`POST /orders` with a Content-Length skips Flask (serve_orders); a chunked
    body goes through the Flask route. Both give the same status and body, and
    place the same order, each on a front end of its own."""
    catalog, _, cache = parts
    answers, placed = [], []
    for chunked in (False, True):
        orders = FakeOrders()
        if fail:
            orders.fail = BazaarError(fail, "x")
        app = create_app(catalog=catalog, orders=orders, cache=cache)
        try:
            kw: dict = {"data": body}
            if chunked:
                kw = {
                    "input_stream": io.BytesIO(body.encode()),
                    "headers": {**headers, "Transfer-Encoding": "chunked"},
                    "environ_overrides": {"wsgi.input_terminated": True},  # as granian does
                }
            resp = app.test_client().post(
                "/orders", content_type=content_type, **{"headers": headers, **kw}
            )
        finally:
            close_app(app)
        # Request ids differ per request: the rest of the body must not.
        body_json = json.loads(re.sub(r"request id [0-9a-f]+", "request id *", resp.text))
        answers.append((resp.status, resp.mimetype, body_json))
        placed.append(orders.placed)
    assert answers[0] == answers[1]
    assert answers[0][1] == "application/json"
    assert placed[0] == placed[1] or not headers.get("Idempotency-Key", "").startswith("k")
    assert [p[1:] for p in placed[0]] == [p[1:] for p in placed[1]]
    if headers.get("Idempotency-Key") == "k-1" and not fail:
        assert placed[0][0][0] == "k-1"


# ---- the dashboard ----------------------------------------------------------------
def test_dashboard_page_and_its_assets_come_from_this_origin(client):
    resp = client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    page = resp.get_data(as_text=True)
    assert 'name="viewport"' in page and '<html lang="en">' in page
    for asset in ("/static/style.css", "/static/dashboard.js"):
        assert asset in page
        body = client.get(asset)
        assert body.status_code == 200
        # No CDN, nothing fetched from another host.
        assert "http://" not in body.get_data(as_text=True).replace("http://www.w3.org", "")
        assert "https://" not in body.get_data(as_text=True)
    assert_error(client.get("/static/nope.js"), 404)


def test_dashboard_data_from_the_background_view(client, parts):
    _, orders, cache = parts
    client.get("/stocks/GameStart")
    client.get("/stocks/GameStart")
    data = refreshed(client).get("/api/dashboard").get_json()["data"]
    assert data["market"] == [STOCK]
    assert data["cluster"]["status"] == "ok"
    assert data["cluster"]["order"]["leader"] == 3
    assert data["cluster"]["cache"]["hits"] >= 1
    assert len(data["samples"]) == 300
    assert sum(s["lookups"] for s in data["samples"]) in (0, 1, 2)  # the current second is left out
    parts[0].up = False
    data = refreshed(client).get("/api/dashboard").get_json()["data"]
    assert data["market"] is None and data["cluster"]["catalog"] == {"up": False, "writable": None}


def test_health_polls_cost_no_rpc_per_request(client, parts):
    catalog, orders, _ = parts
    calls = {"statuses": 0}
    real = orders.statuses

    def counting(timeout=None):
        calls["statuses"] += 1
        return real(timeout)

    orders.statuses = counting
    refreshed(client)
    before = calls["statuses"]
    started = time.monotonic()
    for _ in range(200):
        assert client.get("/health").status_code == 200
    elapsed = time.monotonic() - started
    # The probes run every monitor.INTERVAL whatever the polls: one per period at
    # most (+2 at the edges), however long a loaded machine took for the 200 polls.
    probes = calls["statuses"] - before
    assert probes <= elapsed / monitor.INTERVAL + 2 and probes < 200, (probes, elapsed)
