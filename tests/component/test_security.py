"""CurveZMQ and roles on real sockets: who gets an answer, who gets what (SPEC section 2)."""

from __future__ import annotations

import threading

import msgpack
import pytest
import zmq

from bazaar import rpc, security
from bazaar.catalog.service import CatalogService
from bazaar.config import Config
from bazaar.errors import BazaarError
from tests.conftest import KEYS_DIR, keys_for, wait_until


@pytest.fixture
def guarded():
    """A server whose methods admit different roles, one of them limited per caller."""
    srv = rpc.Server("tcp://127.0.0.1:0", service="guarded", keys=keys_for("catalog"))
    release = threading.Event()
    seen: list[str | None] = []

    def who():
        seen.append(rpc.caller())
        return rpc.caller()

    def slow():
        release.wait(5)
        return "done"

    srv.register("who", who, roles={"frontend", "client"})
    srv.register("echo", lambda value: value, inline=True, roles={"frontend"})
    srv.register("slow", slow, roles={"order1", "order2"}, per_caller=1)
    srv.start()
    yield srv, release, seen
    release.set()
    srv.stop()


def client(srv, role: str, **kw) -> rpc.Client:
    return rpc.Client(srv.endpoint, keys=keys_for(role), server_role="catalog", **kw)


def test_the_handler_knows_the_callers_role(guarded):
    srv, _, seen = guarded
    with client(srv, "client") as c:
        assert c.call("who") == "client"
    with client(srv, "frontend") as c:
        assert c.call("who") == "frontend"
    assert seen == ["client", "frontend"]


def test_a_role_not_in_the_table_is_denied(guarded):
    srv, _, seen = guarded
    with client(srv, "order3") as c, pytest.raises(BazaarError) as err:
        c.call("who")
    assert err.value.code == "PERMISSION_DENIED" and err.value.remote
    assert seen == []  # the handler never ran


def test_foreign_keys_get_no_answer_at_all(guarded, tmp_path):
    srv, _, seen = guarded
    security.init_keys(tmp_path)
    stranger = security.load_keys(tmp_path, "client")
    # The stranger even knows the server's real public key: still no handshake.
    stranger = security.Keys("client", stranger.public, stranger.secret, keys_for("client").cluster)
    with (
        rpc.Client(srv.endpoint, keys=stranger, server_role="catalog", timeout=0.5) as c,
        pytest.raises(BazaarError) as err,
    ):
        c.call("who")
    assert err.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and not err.value.remote
    assert seen == []


def test_per_caller_limit_refuses_a_flood_from_one_role_only(guarded):
    srv, release, _ = guarded
    first = client(srv, "order1", timeout=5)
    done = []
    runner = threading.Thread(target=lambda: done.append(first.call("slow")))
    runner.start()
    wait_until(lambda: srv._running.get(("slow", "order1")) == 1, 30, msg="first call running")
    with client(srv, "order1") as again, pytest.raises(BazaarError) as err:
        again.call("slow")
    assert err.value.code == "RESOURCE_EXHAUSTED"
    other = client(srv, "order2", timeout=5)
    got = []
    second = threading.Thread(target=lambda: got.append(other.call("slow")))
    second.start()  # another role has slots of its own
    wait_until(lambda: srv._running.get(("slow", "order2")) == 1, 30, msg="order2 running")
    release.set()
    runner.join(5)
    second.join(5)
    assert done == ["done"] and got == ["done"]
    first.close()
    other.close()


def test_a_peer_that_never_reads_costs_a_bounded_backlog(guarded, make_socket):
    srv, _, _ = guarded
    flood = make_socket(zmq.DEALER, role="frontend")
    flood.setsockopt(zmq.RCVHWM, 1)  # read nothing, buffer as little as possible
    flood.setsockopt(zmq.RCVBUF, 4096)
    flood.connect(srv.endpoint)
    big = "x" * 50_000
    request = msgpack.packb({"v": 1, "id": 1, "method": "echo", "args": {"value": big}})
    for _ in range(400):  # 20 MB of replies that nobody reads
        flood.send_multipart([b"", request])
    wait_until(lambda: srv.replies_dropped > 0, 20, msg="replies to the non-reader dropped")
    assert srv._backlog.bytes <= rpc.BACKLOG_BYTES
    assert all(used <= rpc.PEER_BACKLOG_BYTES for _, used in srv._backlog.parked.values())
    with client(srv, "client") as c:  # everyone else is served meanwhile
        assert c.call("who") == "client"


def test_only_the_front_end_hears_invalidations(tmp_path, make_socket):
    config = Config(
        catalog="tcp://127.0.0.1:0",
        catalog_pub="tcp://127.0.0.1:0",
        data_dir=tmp_path,
        keys_dir=KEYS_DIR,
    )
    with CatalogService(config, heartbeat_interval=0.1) as catalog:
        frontend = make_socket(zmq.SUB, role="frontend")
        outsider = make_socket(zmq.SUB, role="client")
        plain = make_socket(zmq.SUB, role=None)
        for sock in (frontend, outsider, plain):
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(catalog.pub_endpoint)
        assert frontend.poll(5000), "the front end hears heartbeats"
        assert not outsider.poll(500) and not plain.poll(100)
