"""One bad key, name, type or quantity is refused the same way by all three services.

Real services on real sockets: the catalog, an order replica and the front
end (its fast `POST /orders` path and its Flask route), each checking with
`bazaar.rules`. Every refusal is INVALID_ARGUMENT (400 over HTTP) with the
rules' own message, and nothing trades.
"""

from __future__ import annotations

import io
import json

import pytest

from bazaar import rpc, rules
from bazaar.catalog.service import CatalogService
from bazaar.config import Config
from bazaar.errors import BazaarError
from bazaar.frontend.app import close_app, create_app
from bazaar.order.service import OrderReplica
from tests.conftest import KEYS_DIR, free_port, keys_for

GOOD = {"key": "k-good", "name": "GameStart", "type": "buy", "quantity": 1}
# (field, value): each breaks one field of GOOD.
BAD = [
    ("key", ""),
    ("key", "a b"),
    ("key", "\tk"),
    ("key", "ключ"),
    ("key", "x" * (rules.MAX_KEY_LEN + 1)),
    ("name", ""),
    ("name", "n" * (rules.MAX_NAME_LEN + 1)),
    ("name", "Game\nStart"),
    ("type", "BUY"),
    ("type", "short"),
    ("quantity", 0),
    ("quantity", -3),
    ("quantity", rules.MAX_QUANTITY + 1),
    ("quantity", True),
    ("quantity", 1.5),
    ("quantity", "1"),
]


def expected_message(field: str, value, key_field: str = "key") -> str:
    """What bazaar.rules says of this value: the message every service must give."""
    try:
        if field == "key":
            rules.check_key(value, key_field)
        else:
            {"name": rules.check_name, "type": rules.check_type}.get(field, rules.check_quantity)(
                value
            )
    except BazaarError as err:
        assert err.code == "INVALID_ARGUMENT"
        return err.message
    raise AssertionError(f"rules accept {field}={value!r}")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("rules")
    catalog = CatalogService(
        Config(
            catalog="tcp://127.0.0.1:0",
            catalog_pub="tcp://127.0.0.1:0",
            data_dir=root / "catalog",
            keys_dir=KEYS_DIR,
        )
    ).start()
    replicas = {1: f"tcp://127.0.0.1:{free_port()}"}
    config = Config(
        catalog=catalog.rpc_endpoint,
        catalog_pub=catalog.pub_endpoint,
        order_replicas=replicas,
        order_id=1,
        data_dir=root / "order1",
        keys_dir=KEYS_DIR,
    )
    replica = OrderReplica(config).start()
    app = create_app(config)
    as_replica = rpc.Client(
        catalog.rpc_endpoint, timeout=10, keys=keys_for("order1"), server_role="catalog"
    )
    as_frontend = rpc.Client(
        replicas[1], timeout=10, keys=keys_for("frontend"), server_role="order1"
    )
    yield {"catalog": as_replica, "order": as_frontend, "http": app.test_client()}
    as_replica.close()
    as_frontend.close()
    close_app(app)
    replica.stop()
    catalog.stop()


def market(services) -> dict:
    return services["catalog"].call("lookup", name="GameStart")


@pytest.mark.parametrize(("field", "value"), BAD)
def test_catalog_trade_refuses(services, field, value):
    args = {**GOOD, field: value}
    with pytest.raises(BazaarError) as excinfo:
        services["catalog"].call(
            "trade",
            key=args["key"],
            name=args["name"],
            type=args["type"],
            quantity=args["quantity"],
            epoch=1,
            leader=1,
        )
    assert (excinfo.value.code, excinfo.value.message) == (
        "INVALID_ARGUMENT",
        expected_message(field, value),
    )


@pytest.mark.parametrize(("field", "value"), BAD)
def test_order_replica_refuses(services, field, value):
    with pytest.raises(BazaarError) as excinfo:
        services["order"].call("order", **{**GOOD, field: value})
    assert (excinfo.value.code, excinfo.value.message) == (
        "INVALID_ARGUMENT",
        expected_message(field, value),
    )


def http_order(client, field, value, chunked: bool, key: str = GOOD["key"]):
    """POST /orders with one field broken; the key goes in the Idempotency-Key header."""
    args = {**GOOD, "key": key, field: value}
    body = json.dumps({k: args[k] for k in ("name", "type", "quantity")}).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": args["key"]}
    if chunked:  # no Content-Length: Flask's route, not the fast path
        headers["Transfer-Encoding"] = "chunked"
        return client.post(
            "/orders",
            input_stream=io.BytesIO(body),
            headers=headers,
            environ_overrides={"wsgi.input_terminated": True},  # as granian does
        )
    return client.post("/orders", data=body, headers=headers)


@pytest.mark.parametrize("chunked", [False, True], ids=["fast-path", "flask-route"])
@pytest.mark.parametrize(("field", "value"), [(f, v) for f, v in BAD if f != "key" or v.isascii()])
def test_front_end_refuses(services, field, value, chunked):
    before = market(services)
    resp = http_order(services["http"], field, value, chunked)
    assert resp.status_code == 400, resp.data
    assert resp.get_json() == {
        "error": {"code": 400, "message": expected_message(field, value, "Idempotency-Key")}
    }
    assert market(services) == before  # nothing traded


def test_the_largest_accepted_values_pass_every_check(services):
    """At the limits no service refuses the input's shape; the market refuses the stock."""
    key, most = "k" * rules.MAX_KEY_LEN, rules.MAX_QUANTITY
    with pytest.raises(BazaarError) as excinfo:
        services["catalog"].call(
            "trade", key=key, name="GameStart", type="buy", quantity=most, epoch=1, leader=1
        )
    assert excinfo.value.code == "FAILED_PRECONDITION"  # cannot buy: not enough stock
    with pytest.raises(BazaarError) as excinfo:  # not leading (or leading: the market refuses)
        services["order"].call("order", key=key, name="GameStart", type="buy", quantity=most)
    assert excinfo.value.code in ("UNAVAILABLE", "FAILED_PRECONDITION"), excinfo.value
    resp = http_order(services["http"], "quantity", most, chunked=False, key=key)
    message = resp.get_json()["error"]["message"]
    assert resp.status_code in (400, 503, 504), resp.data
    assert resp.status_code != 400 or message.startswith("cannot buy"), message
