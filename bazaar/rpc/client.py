"""RPC clients: `Client` (calls that wait for their reply), `Pipeline` (one-way streams), `call`.

A `Client` borrows a DEALER from a small pool per call and closes any socket
that timed out, so a late reply can never surface in another call; it
retries only idempotent or keyed calls, within one overall timeout. A
`Pipeline` sends without waiting and hands back the replies that arrived
(replication's stream to one follower).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import zmq

from bazaar import security, wire
from bazaar.errors import BazaarError
from bazaar.rpc.sockets import (
    _EVENTS,
    _NOBLOCK,
    _POLLOUT,
    _RCVTIMEO,
    PIPELINE_HWM,
    harden,
    recv_frames,
    send_frames,
    watch_peer,
)

log = logging.getLogger("bazaar.rpc")

DEFAULT_TIMEOUT = 2.0
HANDSHAKE_GRACE = 1.0  # more seconds for a CURVE handshake with a live but busy peer
CONNECT_TIMEOUT = 0.3  # seconds to wait for a connection that is not up yet
LIVENESS_SLICE = 0.05  # seconds between "is the peer still connected?" checks


def _accepts_tcp(endpoint: str) -> bool:
    """Something listens on a tcp:// endpoint (a refused connect is a dead peer)."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.1):
            return True
    except (OSError, ValueError):
        return False


class Client:
    """A thread-safe RPC client for one endpoint.

    Each call borrows a DEALER from a small pool, so threads never share a
    socket at the same time. A socket that timed out is closed, not returned:
    a late reply or a queued request can never surface in another call.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        context: zmq.Context | None = None,
        keys: security.Keys | None = None,
        server_role: str | None = None,
    ):
        """`keys` + `server_role`: speak CurveZMQ to the server holding that role's key."""
        if keys is not None and server_role is None:
            raise ValueError("a secure Client needs the server's role")
        self.keys = keys
        self.server_role = server_role
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._ctx = context or zmq.Context.instance()
        self._idle: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False

    def _new_socket(self) -> zmq.Socket:
        # Queue only to live connections (IMMEDIATE): a request to a dead peer
        # fails fast instead of waiting to be delivered to whoever binds that
        # port next; heartbeats find a peer that vanished without a word.
        sock = watch_peer(harden(self._ctx.socket(zmq.DEALER)))
        if self.keys is not None:
            security.secure_client(sock, self.keys, self.server_role)
        sock.connect(self.endpoint)
        return sock

    def _checkout(self) -> zmq.Socket:
        with self._lock:
            if self._closed:
                raise BazaarError("UNAVAILABLE", f"client for {self.endpoint} is closed")
            if self._idle:
                return self._idle.pop()
        return self._new_socket()

    def _checkin(self, sock: zmq.Socket) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(sock)
                return
        sock.close(0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- calls --------------------------------------------------------
    def call(
        self,
        method: str,
        /,
        *,
        timeout: float | None = None,
        idempotent: bool = False,
        retry: bool | None = None,
        **args,
    ) -> Any:
        return self.call_args(method, args, timeout=timeout, idempotent=idempotent, retry=retry)

    def call_args(
        self,
        method: str,
        args: dict[str, Any],
        *,
        timeout: float | None = None,
        idempotent: bool = False,
        retry: bool | None = None,
    ) -> Any:
        """Call `method` and return its result, or raise BazaarError.

        Retries (within the same overall timeout) only when the call is
        marked idempotent or carries a `key`, since only then can a request
        that may already have run be safely sent again. `retry=False` turns
        that off for callers with their own failover (the front end's router).
        """
        total = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + total
        retryable = (idempotent or "key" in args) if retry is None else retry
        attempt_budget = max(total / 3, 0.05) if retryable else total
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self._attempt(method, args, min(attempt_budget, remaining), remaining)
            except BazaarError as err:
                # Only transport failures are retried: a peer's own error reply
                # is an answer, and sending the request again would not change it.
                if not retryable or err.remote:
                    raise
                if deadline - time.monotonic() <= 0.01:
                    raise
                time.sleep(0.01)

    def _send(self, sock: zmq.Socket, payload: bytes, budget: float, method: str) -> None:
        try:  # the common case: a pooled socket that is already connected
            send_frames(sock, [b"", payload])
            return
        except zmq.Again:
            pass
        # Not connected (yet): a live peer on a reachable host completes the
        # handshake in milliseconds, in zmq's I/O threads, however busy its
        # Python is; waiting the whole budget would only delay failover.
        # Never a negative timeout: zmq would wait forever (a retry under load
        # can start with its deadline already passed).
        started = time.monotonic()
        wait_ms = max(0, int(min(budget, self.connect_timeout) * 1000))
        if sock.poll(wait_ms, zmq.POLLOUT):
            send_frames(sock, [b"", payload])
            return
        # A CurveZMQ handshake also waits for the server's ZAP handler, a
        # Python thread: on a loaded host it can take longer. If the port
        # takes connections, the peer is alive, so give it a little longer.
        left = min(budget - (time.monotonic() - started), HANDSHAKE_GRACE)
        alive = self.keys is not None and left > 0 and _accepts_tcp(self.endpoint)
        if alive and sock.poll(int(left * 1000), zmq.POLLOUT):
            send_frames(sock, [b"", payload])
            return
        raise BazaarError("UNAVAILABLE", f"{self.endpoint} is not reachable ({method})")

    @contextlib.contextmanager
    def _borrowed(self) -> Iterator[zmq.Socket]:
        """A pooled socket for one exchange, returned to the pool only if the
        exchange completed: after a timeout or a transport error it is closed,
        so nothing late can surface in another call."""
        sock = self._checkout()
        try:
            yield sock
        except zmq.ZMQError as exc:
            sock.close(0)
            raise BazaarError("UNAVAILABLE", f"{self.endpoint}: {exc}") from None
        except BaseException:
            sock.close(0)
            raise
        self._checkin(sock)

    def call_many(
        self, method: str, args_list: list[dict[str, Any]], *, window: int = 64, timeout=None
    ) -> list[Any]:
        """Pipelined calls on one socket, up to `window` in flight; results in order.

        Each item is a result or the BazaarError its call returned. Not retried:
        meant for bulk reads and benchmarks.
        """
        total = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + total
        results: list[Any] = [None] * len(args_list)
        ids: dict[int, int] = {}
        sent = received = 0
        with self._borrowed() as sock:
            while received < len(args_list):
                while sent < len(args_list) and sent - received < window:
                    req_id = next(self._ids)
                    ids[req_id] = sent
                    payload = wire.encode_request(req_id, method, args_list[sent])
                    self._send(sock, payload, deadline - time.monotonic(), method)
                    sent += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BazaarError("DEADLINE_EXCEEDED", f"no reply from {self.endpoint} in time")
                sock.setsockopt(_RCVTIMEO, int(left * 1000) + 1)
                try:
                    reply = wire.decode_reply(sock.recv_multipart()[-1])
                except zmq.Again:
                    continue
                index = ids.pop(reply.id, None)
                if index is None:
                    continue
                results[index] = reply.result if reply.ok else reply.error
                received += 1
        return results

    def _attempt(self, method: str, args: dict[str, Any], budget: float, remaining: float) -> Any:
        req_id = next(self._ids)
        payload = wire.encode_request(req_id, method, args, deadline_ms=int(remaining * 1000))
        with self._borrowed() as sock:
            start = time.monotonic()
            self._send(sock, payload, budget, method)
            reply = self._await_reply(sock, req_id, start + budget, method)
        if reply.ok:
            return reply.result
        raise reply.error  # a peer's answer: the socket went back to the pool

    def _await_reply(
        self, sock: zmq.Socket, req_id: int, deadline: float, method: str
    ) -> wire.Reply:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BazaarError(
                    "DEADLINE_EXCEEDED", f"no reply from {self.endpoint} to {method} in time"
                )
            # A blocking recv with a timeout wakes up sooner than poll + recv.
            # It waits in slices: with IMMEDIATE set, a DEALER loses POLLOUT
            # the moment its only peer disconnects, so a killed server is
            # noticed within one slice instead of at the end of the budget.
            # (setsockopt with a plain int: pyzmq's attribute setter costs
            # several microseconds per call, twice per order on some paths.)
            sock.setsockopt(_RCVTIMEO, int(min(left, LIVENESS_SLICE) * 1000) + 1)
            try:
                frames = recv_frames(sock, 0)
            except zmq.Again:
                if not sock.getsockopt(_EVENTS) & _POLLOUT:
                    raise BazaarError(
                        "UNAVAILABLE", f"connection to {self.endpoint} lost during {method}"
                    ) from None
                continue
            reply = wire.decode_reply(frames[-1])
            if reply.id == req_id:
                return reply
            # else: a stray late reply; ours is still coming


class Pipeline:
    """Pipelined one-way requests to one peer: send without waiting, take replies as they come.

    For a peer that gets a stream of requests (replication): `send` never
    blocks and never waits for an answer (a request to a peer that is not
    connected is dropped, and the caller's own timeout notices the
    silence); `replies()` returns the replies that arrived, decoded, in
    order; a reply that does not decode is logged and skipped. One thread
    uses it (zmq sockets are not thread-safe); `socket` is for its poller.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context | None = None,
        keys: security.Keys | None = None,
        server_role: str | None = None,
    ):
        """`keys` + `server_role`: CurveZMQ to the peer holding that role's key."""
        self.endpoint = endpoint
        ctx = context or zmq.Context.instance()
        self.socket = watch_peer(harden(ctx.socket(zmq.DEALER)))
        # Our own outgoing stream, not a peer's: a burst may run ahead of
        # the I/O thread, and dropping it would only cost a resend.
        self.socket.setsockopt(zmq.SNDHWM, PIPELINE_HWM)
        if keys is not None:
            security.secure_client(self.socket, keys, server_role)
        self.socket.connect(endpoint)
        self._ids = itertools.count(1)

    def send(self, method: str, args: dict[str, Any], *, deadline_ms: int | None = None) -> bool:
        """Queue one request; False when the peer is not connected (it was dropped)."""
        payload = wire.encode_request(next(self._ids), method, args, deadline_ms=deadline_ms)
        try:
            self.socket.send_multipart([b"", payload], _NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def replies(self) -> list[wire.Reply]:
        out: list[wire.Reply] = []
        while True:
            try:
                frames = self.socket.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return out
            try:
                out.append(wire.decode_reply(frames[-1]))
            except BazaarError as exc:
                log.warning("bad reply from %s: %s", self.endpoint, exc)

    def close(self) -> None:
        self.socket.close(0)


def call(
    endpoint: str,
    method: str,
    args: dict[str, Any] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    keys: security.Keys | None = None,
    server_role: str | None = None,
    **kw,
) -> Any:
    """One-shot call with a throwaway client (scripts, the CLI).

    It waits for the connection for the whole timeout, so a script may run
    while the service is still starting; waiting is safe for any method,
    since nothing has been sent before the connection is up.
    """
    with Client(
        endpoint, timeout=timeout, connect_timeout=timeout, keys=keys, server_role=server_role
    ) as client:
        return client.call_args(method, args or {}, **kw)
