"""Bad input never kills a server: 10,000+ malformed frames, then a normal call.

Each generated frame comes with the error code it must produce. Frames larger
than the socket's MAXMSGSIZE get no reply (zmq drops that connection), so
they are sent last on a socket of their own. The targets: the demo server, and
the real catalog and order replica with their own handlers, over CurveZMQ as
the front end.
"""

import random

import msgpack
import pytest
import zmq

from bazaar import wire
from bazaar.catalog.service import CatalogService
from bazaar.config import Config
from bazaar.order.service import OrderReplica
from bazaar.rpc import Client
from tests.conftest import KEYS_DIR, free_port, keys_for, recv_with_timeout

SEED = random.randrange(1 << 30)


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.randint(-(1 << 63), (1 << 64) - 1)
    if kind == 1:
        return rng.random()
    if kind == 2:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(10)))
    if kind == 3:
        return rng.randbytes(rng.randrange(10))
    if kind == 4:
        return rng.choice([None, True, False])
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randrange(4))}


def malformed_payload(
    rng: random.Random, n: int, method: str = "echo", good: dict | None = None
) -> tuple[list[bytes], str]:
    """(frames after the delimiter, expected error code) for case number n.

    `method` is a method of the target and `good` valid arguments for it."""
    good = {"value": 1} if good is None else good
    case = n % 11
    if case == 0:  # random bytes, mostly not msgpack or not a map
        data = rng.randbytes(rng.randrange(1, 64))
        try:
            value = msgpack.unpackb(data, raw=False)
        except Exception:
            value = None
        if isinstance(value, dict):
            data = b"\xc1" + data  # force it to be garbage
        return [data], "INVALID_ARGUMENT"
    if case == 1:  # valid msgpack that is not a map
        return [msgpack.packb(rng.choice([1, "x", [1, 2], None, 1.5, b"b"]))], "INVALID_ARGUMENT"
    if case == 2:  # wrong version
        v = rng.choice([0, 2, "1", None, True, 1.0])
        return [msgpack.packb({"v": v, "id": n, "method": method, "args": {}})], "INVALID_ARGUMENT"
    if case == 3:  # wrong id type
        body = {"v": 1, "id": rng.choice([None, 1.5, [1], True]), "method": method}
        return [msgpack.packb(body)], "INVALID_ARGUMENT"
    if case == 4:  # wrong method type
        body = {"v": 1, "id": n, "method": rng.choice([None, 1, b"echo", "", "x" * 500])}
        return [msgpack.packb(body)], "INVALID_ARGUMENT"
    if case == 5:  # args not a map
        body = {"v": 1, "id": n, "method": method, "args": rng.choice([[1], "a", 3, None])}
        return [msgpack.packb(body)], "INVALID_ARGUMENT"
    if case == 6:  # unknown method
        body = {"v": 1, "id": n, "method": f"no_such_{rng.randrange(1000)}", "args": {}}
        return [msgpack.packb(body)], "UNIMPLEMENTED"
    if case == 7:  # known method, wrong arguments
        args = {f"x{rng.randrange(9)}": _random_value(rng)}
        return [msgpack.packb({"v": 1, "id": n, "method": method, "args": args})], (
            "INVALID_ARGUMENT"
        )
    if case == 8:  # extra frames
        request = msgpack.packb({"v": 1, "id": n, "method": method, "args": good})
        return [request, rng.randbytes(3)], "INVALID_ARGUMENT"
    if case == 9:  # empty payload frame
        return [b""], "INVALID_ARGUMENT"
    # random structure with random keys: garbage of the right shape
    body = {rng.choice(["v", "id", "method", "args", "junk"]): _random_value(rng) for _ in range(4)}
    body.setdefault("v", 1)
    body["junk"] = 1  # always an unknown key, so never a valid request
    body["id"] = n
    return [msgpack.packb(body)], "INVALID_ARGUMENT"


@pytest.fixture(params=["demo", "catalog", "order"])
def target(request, tmp_path):
    """(endpoint, server role, method, good args, (a call that must still work, its args,
    a value in its result))."""
    if request.param == "demo":
        srv = request.getfixturevalue("server")
        yield srv.endpoint, "catalog", "echo", {"value": 1}, ("ping", {}, "demo")
        return
    if request.param == "catalog":
        config = Config(
            catalog="tcp://127.0.0.1:0",
            catalog_pub="tcp://127.0.0.1:0",
            data_dir=tmp_path / "catalog",
            keys_dir=KEYS_DIR,
        )
        lookup = {"name": "GameStart"}
        with CatalogService(config) as catalog:
            yield catalog.rpc_endpoint, "catalog", "lookup", lookup, ("lookup", lookup, "GameStart")
        return
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = Config(
        catalog=f"tcp://127.0.0.1:{free_port()}",
        order_replicas={1: endpoint},
        order_id=1,
        data_dir=tmp_path / "order1",
        keys_dir=KEYS_DIR,
    )
    replica = OrderReplica(config).start()
    try:
        yield endpoint, "order1", "get_order", {"number": 0}, ("status", {}, 1)
    finally:
        replica.stop()


def test_ten_thousand_malformed_frames(target, make_socket):
    print(f"fuzz seed {SEED}")
    endpoint, server_role, method, good, (check, check_args, alive) = target
    rng = random.Random(SEED)
    dealer = make_socket(zmq.DEALER, server=server_role)
    dealer.connect(endpoint)
    req = make_socket(zmq.REQ, server=server_role)
    req.setsockopt(zmq.REQ_RELAXED, 1)
    req.setsockopt(zmq.REQ_CORRELATE, 1)
    req.connect(endpoint)

    checked = 0
    # DEALER: pipelined batches. Requests that reach a worker-pool handler may
    # be answered out of order, so replies are matched by id; those whose id
    # could not be read (nil) are matched by their code among the rest.
    for batch_start in range(0, 9000, 500):
        by_id: dict[int, str] = {}
        codes = []
        for n in range(batch_start, batch_start + 500):
            frames, code = malformed_payload(rng, n, method, good)
            dealer.send_multipart([b"", *frames])
            by_id[n] = code
            codes.append(code)
        for _ in range(500):
            reply = msgpack.unpackb(recv_with_timeout(dealer, 5)[-1], raw=False)
            assert reply["ok"] is False
            code = reply["error"]["code"]
            if reply["id"] in by_id:
                assert code == by_id[reply["id"]], (SEED, reply)
            codes.remove(code)  # ValueError: a code nobody expected
            checked += 1
    # REQ: one at a time, REQ adds the delimiter itself.
    for n in range(9000, 10200):
        frames, code = malformed_payload(rng, n, method, good)
        req.send_multipart(frames)
        reply = msgpack.unpackb(recv_with_timeout(req, 5)[-1], raw=False)
        assert reply["error"]["code"] == code, (SEED, reply)
        checked += 1
    assert checked == 10200

    # Oversized: over the application limit gets an error reply ...
    big = msgpack.packb(
        {
            "v": 1,
            "id": 1,
            "method": method,
            "args": {"value": b"x" * (wire.MAX_MESSAGE_BYTES + 1000)},
        }
    )
    dealer.send_multipart([b"", big])
    reply = msgpack.unpackb(recv_with_timeout(dealer, 5)[-1], raw=False)
    assert reply["error"]["code"] == "INVALID_ARGUMENT"
    # ... over the socket limit drops that connection, and nothing else.
    huge = make_socket(zmq.DEALER, server=server_role)
    huge.connect(endpoint)
    huge.send_multipart([b"", b"\x00" * (wire.SOCKET_MAX_MESSAGE_BYTES + 1)])

    with Client(endpoint, keys=keys_for("frontend"), server_role=server_role) as client:
        result = client.call_args(check, check_args)
        assert alive in (result.values() if isinstance(result, dict) else [result])


@pytest.mark.parametrize("frames", [[b""], [b"", b""], [b"", b"", b""], [b"\x00"] * 5])
def test_odd_frame_counts_get_an_error(server, make_socket, frames):
    dealer = make_socket(zmq.DEALER)
    dealer.connect(server.endpoint)
    dealer.send_multipart(frames)
    reply = msgpack.unpackb(recv_with_timeout(dealer)[-1], raw=False)
    assert reply["error"]["code"] == "INVALID_ARGUMENT"
