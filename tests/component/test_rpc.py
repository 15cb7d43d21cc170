"""The RPC layer over real zmq sockets on 127.0.0.1."""

import threading
import time

import msgpack
import pytest
import zmq

from bazaar import __version__, wire
from bazaar.errors import BazaarError
from bazaar.rpc import Client, Server
from tests.conftest import keys_for, recv_with_timeout, wait_until, wall_budget


def request(method, args=None, req_id=1, **extra):
    return msgpack.packb({"v": 1, "id": req_id, "method": method, "args": args or {}, **extra})


def test_ping_and_methods(client):
    assert client.call("ping") == {"service": "demo", "id": 7, "version": __version__}
    methods = {m["name"]: m["args"] for m in client.call("methods")}
    assert methods["echo"] == ["value"]
    assert methods["slow"] == ["seconds", "key"]
    assert {"ping", "methods", "boom"} <= set(methods)


def test_plain_req_socket(server, make_socket):
    req = make_socket(zmq.REQ)
    req.connect(server.endpoint)
    req.send(request("echo", {"value": [1, "two"]}, req_id="r1"))
    reply = msgpack.unpackb(recv_with_timeout(req)[0], raw=False)
    assert reply == {"v": 1, "id": "r1", "ok": True, "result": [1, "two"]}


def test_dealer_with_and_without_delimiter(server, make_socket):
    dealer = make_socket(zmq.DEALER)
    dealer.connect(server.endpoint)
    dealer.send_multipart([b"", request("echo", {"value": 1}, req_id=1)])
    frames = recv_with_timeout(dealer)
    assert frames[0] == b"" and msgpack.unpackb(frames[1])["result"] == 1
    dealer.send_multipart([request("echo", {"value": 2}, req_id=2)])
    frames = recv_with_timeout(dealer)
    assert len(frames) == 1 and msgpack.unpackb(frames[0])["result"] == 2


def test_errors_carry_codes(client):
    with pytest.raises(BazaarError) as exc:
        client.call("nope")
    assert exc.value.code == "UNIMPLEMENTED" and exc.value.remote
    with pytest.raises(BazaarError) as exc:
        client.call("echo", wrong=1)
    assert exc.value.code == "INVALID_ARGUMENT"
    with pytest.raises(BazaarError) as exc:
        client.call("boom")
    assert exc.value.code == "INTERNAL" and "RuntimeError" in exc.value.message
    assert "kaboom" not in exc.value.message  # exception text stays in the server's log
    assert "error id" in exc.value.message
    assert client.call("echo", value="still serving") == "still serving"


def test_slow_handler_does_not_block_others(server, client):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(client.call("slow", seconds=5)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    wait_until(lambda: server.calls["slow"] == 3, 30, msg="three slow calls running")
    # Inline methods and other workers still answer while three handlers block.
    assert client.call("echo", value="fast", timeout=1) == "fast"
    server.release.set()
    for t in threads:
        t.join(5)
    assert results == [5, 5, 5]


def test_expired_deadline_is_not_executed(server, make_socket):
    dealer = make_socket(zmq.DEALER)
    dealer.connect(server.endpoint)
    dealer.send_multipart([b"", request("slow", {"seconds": 0}, deadline_ms=0)])
    reply = msgpack.unpackb(recv_with_timeout(dealer)[1], raw=False)
    assert reply["ok"] is False and reply["error"]["code"] == "DEADLINE_EXCEEDED"
    assert server.calls["slow"] == 0


def test_timeout_leaves_client_usable(server, client):
    with pytest.raises(BazaarError) as exc:
        client.call("slow", seconds=3, timeout=0.2)
    assert exc.value.code == "DEADLINE_EXCEEDED" and not exc.value.remote
    server.release.set()  # the late reply must not surface in the next call
    assert client.call("echo", value="next") == "next"
    assert client.call("echo", value="again") == "again"


def test_unreachable_endpoint_is_unavailable_and_fast():
    from tests.conftest import free_port

    with Client(f"tcp://127.0.0.1:{free_port()}") as client:
        start = time.monotonic()
        with pytest.raises(BazaarError) as exc:
            client.call("ping", timeout=0.3)
        assert exc.value.code == "UNAVAILABLE"
        assert time.monotonic() - start < wall_budget(2.0)


def test_only_idempotent_or_keyed_calls_are_retried(server, client):
    # One slow attempt times out; a retryable call tries again within its budget.
    with pytest.raises(BazaarError):
        client.call("slow", seconds=10, timeout=0.3)
    assert server.calls["slow"] == 1
    with pytest.raises(BazaarError):
        client.call("slow", seconds=10, timeout=0.6, idempotent=True)
    wait_until(lambda: server.calls["slow"] >= 3, 30, msg="retries reached the server")


def test_many_threads_share_one_client(client):
    errors = []

    def worker(n):
        try:
            for i in range(200):
                assert client.call("echo", value=[n, i]) == [n, i]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


def test_server_restart_on_same_port_serves_new_calls():
    srv = Server("tcp://127.0.0.1:0", service="first", keys=keys_for("catalog")).start()
    endpoint = srv.endpoint
    with Client(endpoint, timeout=1, keys=keys_for("client"), server_role="catalog") as client:
        assert client.call("ping")["service"] == "first"
        srv.stop()
        with pytest.raises(BazaarError):
            client.call("ping", timeout=0.3)
        srv2 = Server(endpoint, service="second", keys=keys_for("catalog")).start()
        try:
            assert wait_until(lambda: client.call("ping", timeout=0.5)["service"] == "second", 30)
        finally:
            srv2.stop()


def test_stop_is_quick(server):
    start = time.monotonic()
    server.stop()
    assert not server._thread.is_alive()
    assert time.monotonic() - start < wall_budget(1.0)


def test_reply_to_oversized_payload_is_an_error(server, make_socket):
    dealer = make_socket(zmq.DEALER)
    dealer.connect(server.endpoint)
    payload = request("echo", {"value": b"x" * (wire.MAX_MESSAGE_BYTES + 10)})
    dealer.send_multipart([b"", payload])
    reply = msgpack.unpackb(recv_with_timeout(dealer)[1], raw=False)
    assert reply["error"]["code"] == "INVALID_ARGUMENT"


def test_server_dying_mid_call_is_noticed_before_the_timeout(server, client):
    outcome = {}

    def slow_call():
        started = time.monotonic()
        try:
            client.call("slow", seconds=30, timeout=20)
        except BazaarError as err:
            outcome["err"], outcome["after"] = err, time.monotonic() - started

    caller = threading.Thread(target=slow_call)
    caller.start()
    wait_until(lambda: server.calls["slow"] == 1, 30, msg="call running")
    server.stop()  # closes the ROUTER: the peer disconnects
    caller.join(10)
    assert outcome["err"].code == "UNAVAILABLE" and not outcome["err"].remote
    assert "lost" in outcome["err"].message
    assert outcome["after"] < min(wall_budget(10.0), 19.0)  # below the 20 s budget


def test_retry_false_makes_a_keyed_call_single_shot(server, client):
    with pytest.raises(BazaarError) as exc:
        client.call("slow", seconds=10, timeout=0.6, retry=False, key="k")
    assert exc.value.code == "DEADLINE_EXCEEDED"
    assert server.calls["slow"] == 1


def test_pipeline_sends_without_waiting_and_collects_replies_in_order(server):
    from bazaar.rpc import Pipeline

    pipe = Pipeline(server.endpoint, keys=keys_for("frontend"), server_role="catalog")
    try:
        wait_until(lambda: pipe.send("echo", {"value": -1}), 30, msg="connected")
        for i in range(200):  # all queued before a single reply is read
            assert pipe.send("echo", {"value": i})
        pipe.send("nope", {})
        got: list = []
        wait_until(lambda: got.extend(pipe.replies()) or len(got) >= 202, 10, msg="replies")
        assert [r.result for r in got[1:201]] == list(range(200))
        assert not got[201].ok and got[201].error.code == "UNIMPLEMENTED"
    finally:
        pipe.close()


def test_pipeline_to_a_peer_that_is_not_there_drops_at_once():
    from bazaar.rpc import Pipeline
    from tests.conftest import free_port

    pipe = Pipeline(f"tcp://127.0.0.1:{free_port()}")
    try:
        started = time.monotonic()
        assert pipe.send("echo", {"value": 1}) is False
        assert time.monotonic() - started < wall_budget(0.1) and pipe.replies() == []
    finally:
        pipe.close()


def test_inline_later_answers_a_burst_after_reading_it_in_order(make_socket):
    """A `Later` is finished once the requests already waiting are read, in order."""
    from bazaar.rpc import Later

    decided: list[int] = []
    batches: list[list[int]] = []
    queued: list[int] = []

    def add(n):
        if n < 0:
            raise BazaarError("INVALID_ARGUMENT", "n must be >= 0")  # refused when read
        decided.append(n)
        queued.append(n)

        def finish():
            if queued:  # the first finish of a batch "commits" everything queued
                batches.append(list(queued))
                queued.clear()
            if n == 13:
                raise BazaarError("ABORTED", "unlucky")
            return n * 2

        return Later(finish)

    server = Server("tcp://127.0.0.1:0", service="demo")
    server.register("add", add, inline=True)
    server.start()
    try:
        dealer = make_socket(zmq.DEALER, role=None)  # a plaintext server
        dealer.connect(server.endpoint)
        numbers = [1, 2, 13, -1, 5]
        for i, n in enumerate(numbers):
            dealer.send_multipart([b"", request("add", {"n": n}, req_id=i)])
        replies = [msgpack.unpackb(recv_with_timeout(dealer)[1]) for _ in numbers]
    finally:
        server.stop()
    assert [r["id"] for r in replies if r["ok"]] == [0, 1, 4]
    assert [r["result"] for r in replies if r["ok"]] == [2, 4, 10]
    errors = {r["id"]: r["error"]["code"] for r in replies if not r["ok"]}
    assert errors == {2: "ABORTED", 3: "INVALID_ARGUMENT"}
    assert decided == [1, 2, 13, 5]
    assert sorted(n for batch in batches for n in batch) == [1, 2, 5, 13]  # all finished
