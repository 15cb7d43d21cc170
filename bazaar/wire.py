"""The RPC envelope: encoding, decoding and validation. No sockets here.

Owns the byte format of SPEC section 2 (documented for humans in
docs/protocol.md). Everything that reaches a handler has passed `decode_request`;
everything a server sends is built by `encode_result` / `encode_error`.

Rules:
- msgpack only, `raw=False`, never pickle; extension types are refused.
- Size limits are enforced before and during unpacking, so a hostile frame
  costs at most MAX_MESSAGE_BYTES of memory.
- A malformed request raises `BazaarError` (INVALID_ARGUMENT); callers turn it
  into an error reply. This module never raises anything else for bad input.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from bazaar.errors import BazaarError

VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20  # one request or reply, application limit
SOCKET_MAX_MESSAGE_BYTES = 2 << 20  # ZMQ_MAXMSGSIZE: larger frames drop the peer
MAX_COLLECTION_LEN = 100_000  # items in any one array or map
MAX_METHOD_LEN = 128

_REQUEST_KEYS = frozenset({"v", "id", "method", "args", "deadline_ms"})


def _refuse_ext(code: int, _data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def unpack(payload: bytes) -> Any:
    """Decode one msgpack value with strict limits; raises ValueError-like errors."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise BazaarError(
            "INVALID_ARGUMENT",
            f"message of {len(payload)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
        )
    return msgpack.unpackb(
        payload,
        raw=False,
        strict_map_key=True,
        ext_hook=_refuse_ext,
        max_array_len=MAX_COLLECTION_LEN,
        max_map_len=MAX_COLLECTION_LEN,
        max_ext_len=0,
    )


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def is_int(value: Any) -> bool:
    """True for real integers; bools are not integers on this wire."""
    return isinstance(value, int) and not isinstance(value, bool)


# SPEC section 2: epochs are 1..2^53-1 (exact through a JSON double, far from any
# overflow). The one bound: the catalog, the order replicas and the front end use it.
MAX_EPOCH = 2**53 - 1


def is_epoch(value: Any) -> bool:
    """An election epoch: an integer in 1..2^53-1."""
    return is_int(value) and 1 <= value <= MAX_EPOCH


class Request(NamedTuple):  # a NamedTuple: built per request, so cheap to build
    id: str | int
    method: str
    args: dict[str, Any]
    deadline_ms: int | None = None


def encode_request(
    req_id: str | int, method: str, args: dict[str, Any], deadline_ms: int | None = None
) -> bytes:
    body: dict[str, Any] = {"v": VERSION, "id": req_id, "method": method, "args": args}
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    return pack(body)


def decode_request(payload: bytes) -> Request:
    """Parse and validate a request frame. Raises BazaarError(INVALID_ARGUMENT).

    When the id could be read, it is attached to the error as `error.request_id`
    so the reply can still be correlated.
    """
    try:
        body = unpack(payload)
    except BazaarError:
        raise
    except Exception as exc:  # msgpack raises many types for garbage
        raise BazaarError("INVALID_ARGUMENT", f"request is not valid msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise BazaarError("INVALID_ARGUMENT", "request must be a msgpack map")
    req_id = body.get("id")
    if not (isinstance(req_id, str) or is_int(req_id)):
        raise BazaarError("INVALID_ARGUMENT", "request 'id' must be a string or an integer")
    try:
        return _validate_request(body, req_id)
    except BazaarError as err:
        err.request_id = req_id  # type: ignore[attr-defined]
        raise


def _validate_request(body: dict[str, Any], req_id: str | int) -> Request:
    version = body.get("v")
    if version != VERSION or type(version) is not int:
        raise BazaarError(
            "INVALID_ARGUMENT", f"unsupported protocol version {version!r}; expected 1"
        )
    if not body.keys() <= _REQUEST_KEYS:
        unknown = sorted(body.keys() - _REQUEST_KEYS)
        raise BazaarError("INVALID_ARGUMENT", f"unknown request keys: {unknown}")
    method = body.get("method")
    if not isinstance(method, str) or not method or len(method) > MAX_METHOD_LEN:
        raise BazaarError("INVALID_ARGUMENT", "request 'method' must be a non-empty string")
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise BazaarError("INVALID_ARGUMENT", "request 'args' must be a map")
    deadline_ms = body.get("deadline_ms")
    if deadline_ms is not None and not is_int(deadline_ms):
        raise BazaarError("INVALID_ARGUMENT", "request 'deadline_ms' must be an integer")
    return Request(req_id, method, args, deadline_ms)


def encode_result(req_id: str | int | None, result: Any) -> bytes:
    return pack({"v": VERSION, "id": req_id, "ok": True, "result": result})


def encode_error(req_id: str | int | None, error: BazaarError) -> bytes:
    return pack({"v": VERSION, "id": req_id, "ok": False, "error": error.to_dict()})


class Reply(NamedTuple):
    id: str | int | None
    ok: bool
    result: Any = None
    error: BazaarError | None = None


def decode_reply(payload: bytes) -> Reply:
    """Parse a reply frame (client side). Raises BazaarError(INTERNAL) if garbled."""
    try:
        body = unpack(payload)
    except Exception as exc:
        raise BazaarError("INTERNAL", f"reply is not valid msgpack: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != VERSION or "ok" not in body:
        raise BazaarError("INTERNAL", "reply is not a protocol-1 envelope")
    if body["ok"] is True:
        return Reply(body.get("id"), True, result=body.get("result"))
    err = body.get("error")
    if not isinstance(err, dict):
        raise BazaarError("INTERNAL", "error reply without an 'error' map")
    details = err.get("details")
    error = BazaarError(
        str(err.get("code", "UNKNOWN")),
        str(err.get("message", "")),
        details if isinstance(details, dict) else None,
    )
    error.remote = True
    return Reply(body.get("id"), False, error=error)
