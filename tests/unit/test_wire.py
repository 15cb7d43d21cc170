import msgpack
import pytest

from bazaar import wire
from bazaar.errors import BazaarError


def test_request_round_trip():
    payload = wire.encode_request(7, "lookup", {"name": "GameStart"}, deadline_ms=250)
    req = wire.decode_request(payload)
    assert req == wire.Request(7, "lookup", {"name": "GameStart"}, 250)


def test_args_may_be_omitted():
    req = wire.decode_request(msgpack.packb({"v": 1, "id": "a", "method": "ping"}))
    assert req.args == {}


@pytest.mark.parametrize(
    "body, fragment",
    [
        ([1, 2, 3], "must be a msgpack map"),
        ({"v": 1, "id": True, "method": "ping"}, "'id'"),
        ({"v": 1, "id": 1.5, "method": "ping"}, "'id'"),
        ({"v": 2, "id": 1, "method": "ping"}, "version"),
        ({"v": True, "id": 1, "method": "ping"}, "version"),
        ({"v": 1, "id": 1, "method": ""}, "'method'"),
        ({"v": 1, "id": 1, "method": 5}, "'method'"),
        ({"v": 1, "id": 1, "method": "ping", "args": [1]}, "'args'"),
        ({"v": 1, "id": 1, "method": "ping", "deadline_ms": "5"}, "deadline_ms"),
        ({"v": 1, "id": 1, "method": "ping", "deadline_ms": False}, "deadline_ms"),
        ({"v": 1, "id": 1, "method": "ping", "extra": 1}, "unknown request keys"),
    ],
)
def test_invalid_requests_are_invalid_argument(body, fragment):
    with pytest.raises(BazaarError) as exc:
        wire.decode_request(msgpack.packb(body))
    assert exc.value.code == "INVALID_ARGUMENT"
    assert fragment in exc.value.message


def test_id_is_kept_on_errors_after_the_id_was_read():
    with pytest.raises(BazaarError) as exc:
        wire.decode_request(msgpack.packb({"v": 9, "id": "abc", "method": "ping"}))
    assert exc.value.request_id == "abc"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"not msgpack at all",
        msgpack.packb({"v": 1}) + b"trailing",
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
        b"\x91" * 5000,  # deeply nested arrays
        msgpack.packb(msgpack.ExtType(5, b"x")),
        msgpack.packb({1: "int keys are not allowed"}),
    ],
)
def test_garbage_is_invalid_argument(payload):
    with pytest.raises(BazaarError) as exc:
        wire.decode_request(payload)
    assert exc.value.code == "INVALID_ARGUMENT"


def test_oversized_message_is_refused_before_unpacking():
    payload = msgpack.packb({"v": 1, "id": 1, "method": "x", "args": {"b": b"x" * (2 << 20)}})
    with pytest.raises(BazaarError) as exc:
        wire.decode_request(payload)
    assert exc.value.code == "INVALID_ARGUMENT"
    assert "limit" in exc.value.message


def test_strings_are_decoded_as_str_not_bytes():
    req = wire.decode_request(wire.encode_request(1, "m", {"s": "é", "b": b"\x00"}))
    assert req.args == {"s": "é", "b": b"\x00"}


def test_reply_round_trip_ok_and_error():
    ok = wire.decode_reply(wire.encode_result(3, {"x": [1, 2]}))
    assert ok.ok and ok.id == 3 and ok.result == {"x": [1, 2]}
    err = wire.decode_reply(
        wire.encode_error(4, BazaarError("NOT_FOUND", "no such stock", {"name": "X"}))
    )
    assert not err.ok and err.id == 4
    assert err.error.code == "NOT_FOUND"
    assert err.error.details == {"name": "X"}
    assert err.error.remote is True


def test_garbled_reply_is_internal():
    with pytest.raises(BazaarError) as exc:
        wire.decode_reply(b"\xc1")
    assert exc.value.code == "INTERNAL"
