"""The catalog service over real zmq sockets on 127.0.0.1, with its files in a tmp dir."""

from __future__ import annotations

import threading
import time

import msgpack
import pytest
import zmq

from bazaar import rpc
from bazaar.catalog import export
from bazaar.catalog import service as catalog_service
from bazaar.catalog.market_csv import MarketFileError
from bazaar.catalog.service import CatalogService
from bazaar.config import Config
from bazaar.errors import BazaarError
from tests.conftest import KEYS_DIR, free_port, keys_for, wait_until, wall_budget

SCARCE_MARKET = """name,price,quantity,volume,max_volume
Scarce,3.5,10,0,
Capped,1.0,100,0,5
GameStart,48.5,100,0,
"""


def config_for(data_dir) -> Config:
    return Config(
        catalog="tcp://127.0.0.1:0",
        catalog_pub="tcp://127.0.0.1:0",
        data_dir=data_dir,
        keys_dir=KEYS_DIR,
    )


def replica_client(endpoint: str, timeout: float) -> rpc.Client:
    """A client with an order replica's key: the role that may trade and fence."""
    return rpc.Client(endpoint, timeout=timeout, keys=keys_for("order1"), server_role="catalog")


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "catalog"
    path.mkdir()
    (path / "catalog.csv").write_text(SCARCE_MARKET)
    return path


@pytest.fixture
def service(data_dir):
    svc = CatalogService(config_for(data_dir), heartbeat_interval=0.2).start()
    yield svc
    svc.stop()


@pytest.fixture
def client(service):
    c = replica_client(service.rpc_endpoint, timeout=10.0)
    yield c
    c.close()


@pytest.fixture
def subscriber(service, make_socket):
    """A SUB socket on the catalog's PUB, connected once a heartbeat got through."""
    sub = make_socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(service.pub_endpoint)
    next_message(sub, b"heartbeat", timeout=10)  # the subscription is live from here on
    return sub


def next_message(sub: zmq.Socket, topic: bytes, timeout: float = 10.0) -> dict:
    """The next message on `topic` (others skipped), decoded; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not sub.poll(int(left * 1000) + 1):
            break
        got_topic, body = sub.recv_multipart()
        if got_topic == topic:
            return msgpack.unpackb(body, raw=False)
    pytest.fail(f"no {topic!r} message within {timeout}s")


def error_of(client: rpc.Client, method: str, **args) -> BazaarError:
    with pytest.raises(BazaarError) as excinfo:
        client.call(method, **args)
    assert excinfo.value.remote
    return excinfo.value


def trade_args(key: str, name: str = "GameStart", type: str = "buy", quantity=1, epoch=1):
    return {"key": key, "name": name, "type": type, "quantity": quantity, "epoch": epoch}


# ---- methods -------------------------------------------------------------------------


def test_ping_and_methods(client):
    assert client.call("ping")["service"] == "catalog"
    methods = {m["name"]: m["args"] for m in client.call("methods")}
    assert methods["lookup"] == ["name"]
    assert methods["trade"] == ["key", "name", "type", "quantity", "epoch", "leader"]
    assert methods["fence"] == ["epoch", "leader"]
    assert methods["trades_since"] == ["after", "limit"]


def test_lookup(client):
    assert client.call("lookup", name="Scarce") == {
        "name": "Scarce",
        "price": 3.5,
        "quantity": 10,
        "volume": 0,
        "max_volume": None,
    }
    assert client.call("lookup", name="Capped")["max_volume"] == 5
    assert error_of(client, "lookup", name="Nope").code == "NOT_FOUND"
    assert error_of(client, "lookup", name=7).code == "INVALID_ARGUMENT"
    assert error_of(client, "lookup").code == "INVALID_ARGUMENT"
    assert error_of(client, "lookup", name="Scarce", extra=1).code == "INVALID_ARGUMENT"
    names = [s["name"] for s in client.call("list_stocks")["stocks"]]
    assert names == ["Scarce", "Capped", "GameStart"]


def test_trade_and_its_repeat(client):
    first = client.call("trade", **trade_args("order-1", quantity=3))
    assert first == {
        "seq": 1,
        "key": "order-1",
        "name": "GameStart",
        "type": "buy",
        "quantity": 3,
        "stock": {
            "name": "GameStart",
            "price": 48.5,
            "quantity": 97,
            "volume": 3,
            "max_volume": None,
        },
    }
    assert client.call("trade", **trade_args("order-1", quantity=3)) == first
    assert client.call("lookup", name="GameStart")["quantity"] == 97
    err = error_of(client, "trade", **trade_args("order-1", type="sell", quantity=3))
    assert err.code == "ALREADY_EXISTS" and err.details == {"seq": 1}


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"quantity": True}, "INVALID_ARGUMENT"),
        ({"quantity": 0}, "INVALID_ARGUMENT"),
        ({"quantity": 2.0}, "INVALID_ARGUMENT"),
        ({"type": "hold"}, "INVALID_ARGUMENT"),
        ({"key": ""}, "INVALID_ARGUMENT"),
        ({"epoch": False}, "INVALID_ARGUMENT"),
        ({"epoch": 0}, "INVALID_ARGUMENT"),
        ({"epoch": 2**53}, "INVALID_ARGUMENT"),
        ({"leader": "1"}, "INVALID_ARGUMENT"),
        ({"name": "Nope"}, "NOT_FOUND"),
        ({"name": "Scarce", "quantity": 11}, "FAILED_PRECONDITION"),
        ({"name": "Capped", "type": "sell", "quantity": 6}, "FAILED_PRECONDITION"),
    ],
)
def test_trade_errors(client, changes, code):
    args = trade_args("k") | changes
    assert error_of(client, "trade", **args).code == code
    assert client.call("trades_since", after=0)["last_seq"] == 0


def test_trade_needs_every_argument(client):
    args = trade_args("k")
    del args["epoch"]
    assert error_of(client, "trade", **args).code == "INVALID_ARGUMENT"


def test_fence_over_rpc(client):
    assert client.call("fence", epoch=4) == {"epoch": 4, "leader": None}
    assert client.call("fence", epoch=2) == {"epoch": 4, "leader": None}
    err = error_of(client, "trade", **trade_args("stale", epoch=3))
    assert err.code == "ABORTED" and err.details == {"epoch": 4, "leader": None}
    assert client.call("trade", **trade_args("current", epoch=4))["seq"] == 1
    assert error_of(client, "fence", epoch="5").code == "INVALID_ARGUMENT"
    assert error_of(client, "fence", epoch=0).code == "INVALID_ARGUMENT"


def test_fence_with_leader_over_rpc(client):
    assert client.call("fence", epoch=5, leader=3) == {"epoch": 5, "leader": 3}
    err = error_of(client, "fence", epoch=5, leader=2)
    assert err.code == "ABORTED" and err.details == {"epoch": 5, "leader": 3}
    err = error_of(client, "trade", **trade_args("other", epoch=5) | {"leader": 2})
    assert err.code == "ABORTED" and err.details == {"epoch": 5, "leader": 3}
    assert client.call("trade", **trade_args("mine", epoch=5) | {"leader": 3})["seq"] == 1
    assert client.call("fence", epoch=6, leader=2) == {"epoch": 6, "leader": 2}


def test_trades_since_over_rpc(client):
    for i in range(3):
        client.call("trade", **trade_args(f"k{i}", type="sell", quantity=i + 1, epoch=1))
    listed = client.call("trades_since", after=0)
    assert listed["last_seq"] == 3 and listed["more"] is False
    assert [(t["seq"], t["key"], t["quantity"]) for t in listed["trades"]] == [
        (1, "k0", 1),
        (2, "k1", 2),
        (3, "k2", 3),
    ]
    assert client.call("trades_since", after=-1) == listed
    assert [t["seq"] for t in client.call("trades_since", after=1, limit=1)["trades"]] == [2]


def test_concurrent_buys_never_oversell(client):
    acknowledged: list[dict] = []
    refusals: list[str] = []
    lock = threading.Lock()

    def buyer(thread: int):
        for attempt in range(4):
            try:
                result = client.call("trade", **trade_args(f"t{thread}-{attempt}", "Scarce"))
            except BazaarError as err:
                with lock:
                    refusals.append(err.code)
            else:
                with lock:
                    acknowledged.append(result)

    threads = [threading.Thread(target=buyer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert len(acknowledged) == 10
    assert set(refusals) == {"FAILED_PRECONDITION"} and len(refusals) == 16 * 4 - 10
    assert sorted(r["seq"] for r in acknowledged) == list(range(1, 11))
    # Each acknowledged buy saw the quantity its own seq implies: no two shared a unit.
    assert sorted(r["stock"]["quantity"] for r in acknowledged) == list(range(10))
    stock = client.call("lookup", name="Scarce")
    assert (stock["quantity"], stock["volume"]) == (0, 10)
    listed = client.call("trades_since", after=0)["trades"]
    assert {t["key"] for t in listed} == {r["key"] for r in acknowledged}


# ---- publications ------------------------------------------------------------------------


def test_heartbeat_carries_seq_and_boot(service, subscriber):
    beat = next_message(subscriber, b"heartbeat")
    assert beat == {"seq": 0, "boot": service.boot}
    assert len(service.boot) == 16


def test_each_applied_trade_is_invalidated_once(service, client, subscriber):
    client.call("trade", **trade_args("a", "Scarce"))
    client.call("trade", **trade_args("b", "GameStart", "sell", 2))
    client.call("trade", **trade_args("a", "Scarce"))  # a repeat: nothing changed
    with pytest.raises(BazaarError):
        client.call("trade", **trade_args("c", "Scarce", quantity=50))  # refused: nothing changed
    client.call("trade", **trade_args("d", "Capped"))
    seen = [next_message(subscriber, b"invalidate") for _ in range(3)]
    assert seen == [
        {"seq": 1, "name": "Scarce", "boot": service.boot},
        {"seq": 2, "name": "GameStart", "boot": service.boot},
        {"seq": 3, "name": "Capped", "boot": service.boot},
    ]
    # The next heartbeat repeats the latest seq: nothing else was published.
    assert next_message(subscriber, b"heartbeat") == {"seq": 3, "boot": service.boot}


def test_invalidation_comes_after_the_change_is_visible(service, client, subscriber):
    """A cache that drops its entry on invalidation and looks again must see the trade."""
    lookups = replica_client(service.rpc_endpoint, timeout=10.0)
    try:
        for i in range(20):
            client.call("trade", **trade_args(f"k{i}", "GameStart", "sell", 1))
            note = next_message(subscriber, b"invalidate")
            assert note["seq"] == i + 1
            assert lookups.call("lookup", name="GameStart")["quantity"] >= 100 + i + 1
    finally:
        lookups.close()


def test_concurrent_trades_give_gapless_publication_seq(client, subscriber):
    def seller(thread: int):
        for i in range(10):
            client.call("trade", **trade_args(f"s{thread}-{i}", "GameStart", "sell", 1))

    threads = [threading.Thread(target=seller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    seqs = [next_message(subscriber, b"invalidate")["seq"] for _ in range(80)]
    assert seqs == list(range(1, 81))


# ---- files and restarts -----------------------------------------------------------------------


def exported(data_dir) -> dict[str, tuple[int, int]]:
    """(quantity, volume) per stock as a read-only reader of catalog.db sees them."""
    return {s.name: (s.quantity, s.volume) for s in export.read_market(data_dir)}


@pytest.mark.usefixtures("service")
def test_an_acknowledged_trade_is_in_the_database_at_once(client, data_dir):
    for i in range(5):
        client.call("trade", **trade_args(f"k{i}", "Scarce"))
        assert exported(data_dir)["Scarce"] == (9 - i, i + 1)  # while the catalog runs


def test_restart_keeps_state_and_announces_a_new_boot(data_dir):
    config = config_for(data_dir)
    with CatalogService(config) as first:
        with replica_client(first.rpc_endpoint, timeout=10.0) as client:
            client.call("fence", epoch=2)
            result = client.call("trade", **trade_args("k", "Scarce", quantity=4, epoch=2))
        first_boot = first.boot
    with CatalogService(config) as second:
        assert second.boot != first_boot
        with replica_client(second.rpc_endpoint, timeout=10.0) as client:
            assert client.call("lookup", name="Scarce")["quantity"] == 6
            assert client.call("trade", **trade_args("k", "Scarce", quantity=4, epoch=2)) == result
            assert client.call("fence", epoch=1) == {"epoch": 2, "leader": None}
    assert exported(data_dir)["Scarce"] == (6, 4)


def test_corrupt_market_file_stops_the_start(data_dir):
    (data_dir / "catalog.csv").write_text("name,price,quantity,volume,max_volume\nA,x,1,0,\n")
    with pytest.raises(MarketFileError, match="line 2"):
        CatalogService(config_for(data_dir))


def test_taken_port_fails_the_start_and_releases_the_data_dir(data_dir, make_socket):
    blocker = make_socket(zmq.ROUTER)
    port = blocker.bind_to_random_port("tcp://127.0.0.1")
    config = config_for(data_dir).with_(catalog=f"tcp://127.0.0.1:{port}")
    with pytest.raises(zmq.ZMQError):
        CatalogService(config)
    CatalogService(config_for(data_dir)).start().stop()  # nothing was left locked or bound


def test_run_serves_until_stop_and_returns_promptly(data_dir):
    port, pub_port = free_port(), free_port()
    config = Config(
        catalog=f"tcp://127.0.0.1:{port}",
        catalog_pub=f"tcp://127.0.0.1:{pub_port}",
        data_dir=data_dir,
        keys_dir=KEYS_DIR,
    )
    stop = threading.Event()
    runner = threading.Thread(target=catalog_service.run, args=(config, stop), daemon=True)
    runner.start()
    with replica_client(f"tcp://127.0.0.1:{port}", timeout=2.0) as client:
        wait_until(lambda: client.call("ping", idempotent=True), timeout=20, msg="catalog up")
        client.call("trade", **trade_args("k", "Scarce"))
    stopped_at = time.monotonic()
    stop.set()
    runner.join(10)
    assert not runner.is_alive()
    # Generous for a busy 2-core machine; the design target is well under a second.
    assert time.monotonic() - stopped_at < wall_budget(5.0)
    assert exported(data_dir)["Scarce"] == (9, 1)


# ---- bazaar export market ------------------------------------------------------------------------


def test_export_market_while_the_catalog_runs(service, client, data_dir):
    from click.testing import CliRunner

    from bazaar.commands import main

    client.call("trade", **trade_args("k", "Capped", "sell", 5))
    done = CliRunner().invoke(main, ["export", "market", "--data-dir", str(data_dir)])
    assert done.exit_code == 0, done.output
    assert done.output == (
        "name,price,quantity,volume,max_volume\n"
        "Scarce,3.5,10,0,\n"
        "Capped,1.0,105,5,5\n"
        "GameStart,48.5,100,0,\n"
    )
    # What it prints is the seed's format: a new catalog imports it as its market.
    fresh = data_dir.parent / "from-export"
    fresh.mkdir()
    (fresh / "catalog.csv").write_text(done.output)
    with CatalogService(config_for(fresh)) as copy:
        assert copy.catalog.stocks() == service.catalog.stocks()


def test_export_market_without_a_database_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from bazaar.commands import main

    done = CliRunner().invoke(main, ["export", "market", "--data-dir", str(tmp_path)])
    assert done.exit_code == 1
    assert f"{tmp_path / 'catalog.db'}: no such file" in done.output
    assert "Traceback" not in done.output
    assert not (tmp_path / "catalog.db").exists()  # a reader never creates it
