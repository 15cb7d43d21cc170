"""ZeroMQ RPC: `Server` (one ROUTER socket) and `Client` (a pool of DEALERs).

Owns every socket option of the RPC layer, so socket hygiene lives in one
place: LINGER 0, bounded HWMs, MAXMSGSIZE, no socket reused after a timeout.
The byte format lives in `bazaar.wire`; this module only moves frames.

Server threading: one I/O thread owns the ROUTER socket (zmq sockets are not
thread-safe). Methods registered `inline=True` (fast, never block) run on that
thread; all others run on a bounded worker pool, and their replies travel back
to the I/O thread over an inproc PUSH/PULL pair, so a slow handler never holds
up the others.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zmq

from bazaar import __version__, metrics, wire
from bazaar.errors import BazaarError

log = logging.getLogger(__name__)

HWM = 10_000
# Plain ints: pyzmq's enum flags cost a few microseconds per frame on hot paths.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


_running = threading.local()  # the deadline of the method running on this thread


def time_left(default: float) -> float:
    """Seconds before the caller of the running method gives up; `default` if it set none.

    A handler that waits (on a peer, a commit) bounds its waits with this, so
    it answers before its caller times out: timeouts nest, and a slow
    dependency shows up as an error reply instead of a silent server.
    """
    deadline = getattr(_running, "deadline", None)
    if deadline is None:
        return default
    return max(0.0, min(default, deadline - time.monotonic()))


def readable(sock: zmq.Socket) -> bool:
    """A message is waiting (cheaper than a NOBLOCK recv that raises Again)."""
    return bool(sock.getsockopt(_EVENTS) & _POLLIN)


def recv_frames(sock: zmq.Socket) -> list[bytes]:
    """recv_multipart(NOBLOCK) via Frame.more: one getsockopt fewer per frame."""
    frame = sock.recv(_NOBLOCK, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """send_multipart without per-frame enum arithmetic; raises zmq.Again if full."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, _NOBLOCK if i == last else _MORE_NOBLOCK)


DEFAULT_TIMEOUT = 2.0
CONNECT_TIMEOUT = 0.3  # seconds to wait for a connection that is not up yet
LIVENESS_SLICE = 0.05  # seconds between "is the peer still connected?" checks


def harden(sock: zmq.Socket) -> zmq.Socket:
    """Options every socket of ours gets: never block on close, bounded queues."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, wire.SOCKET_MAX_MESSAGE_BYTES)
    return sock


HEARTBEAT_IVL_MS = 500  # a PING on every connection this often...
HEARTBEAT_TIMEOUT_MS = 2000  # ...and a connection silent this long is dropped
CONNECT_TIMEOUT_MS = 1000  # a TCP connect that hangs (a vanished host) is retried afresh


def watch_peer(sock: zmq.Socket) -> zmq.Socket:
    """Options of a connecting socket that must notice a vanished peer by itself.

    A peer that dies cleanly resets its connections, and `ZMQ_IMMEDIATE`
    makes that visible at once (no POLLOUT). A peer that vanishes without a
    word (a partition, a paused process, a container whose address went
    away) leaves the TCP connection hanging: zmq heartbeats drop it after
    HEARTBEAT_TIMEOUT_MS, and the connect timeout keeps reconnection from
    waiting out the kernel's minutes of SYN retries, so the new connection
    is up as soon as the peer is reachable again.
    """
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    return sock


def bind_endpoint(endpoint: str) -> str:
    """`tcp://host:port` -> `tcp://*:port`: services bind all interfaces (SPEC 5)."""
    if endpoint.startswith("tcp://"):
        port = endpoint.rsplit(":", 1)[1]
        return f"tcp://*:{port}"
    return endpoint


@dataclass(frozen=True, slots=True)
class _Method:
    func: Callable[..., Any]
    inline: bool
    arg_names: tuple[str, ...]
    required: frozenset[str]

    @classmethod
    def of(cls, func: Callable[..., Any], inline: bool) -> _Method:
        params = inspect.signature(func).parameters.values()
        names = tuple(p.name for p in params)
        required = frozenset(p.name for p in params if p.default is inspect.Parameter.empty)
        return cls(func, inline, names, required)

    def check_args(self, method: str, args: dict[str, Any]) -> None:
        """Names only; a set check costs far less than inspect's bind()."""
        unknown = args.keys() - self.arg_names
        if unknown:
            raise BazaarError("INVALID_ARGUMENT", f"{method}: unknown arguments {sorted(unknown)}")
        missing = self.required - args.keys()
        if missing:
            raise BazaarError("INVALID_ARGUMENT", f"{method}: missing arguments {sorted(missing)}")


class Server:
    """An RPC server on one ROUTER socket.

    >>> server = Server("tcp://127.0.0.1:0", service="demo")
    >>> @server.method()
    ... def add(a, b): return a + b
    >>> server.start(); server.stop()
    """

    def __init__(
        self,
        endpoint: str,
        *,
        service: str,
        replica_id: int | None = None,
        workers: int = 8,
        max_pending: int = 1024,
        context: zmq.Context | None = None,
    ):
        self.service = service
        self.replica_id = replica_id
        # A context of its own unless told otherwise: libzmq resolves peer
        # host names on its I/O thread, so a client socket connecting to a
        # slow-to-resolve name (compose service names at start-up) must not
        # share that thread with the socket this server answers on.
        self._own_ctx = None if context is not None else zmq.Context(io_threads=1)
        self._ctx = context or self._own_ctx
        self._methods: dict[str, _Method] = {}
        # The metrics hook: (method, code, seconds) for every executed request.
        self.observe: Callable[[str, str, float], None] = metrics.rpc_observer(service)
        self._workers = workers
        self._max_pending = max_pending
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pushers: list[zmq.Socket] = []
        self._local = threading.local()
        self._reply_addr = f"inproc://rpc-replies-{id(self)}-{os.getpid()}"

        self._router = harden(self._ctx.socket(zmq.ROUTER))
        if endpoint.endswith(":0"):
            # Tests ask for a free port; bind_to_random_port is race-free.
            base = endpoint.rsplit(":", 1)[0]
            self.port = self._router.bind_to_random_port(base)
            self.endpoint = f"{base}:{self.port}"
        else:
            self._router.bind(endpoint)
            self.endpoint = endpoint
            self.port = int(endpoint.rsplit(":", 1)[1]) if endpoint.startswith("tcp") else None
        self._replies = self._ctx.socket(zmq.PULL)
        self._replies.setsockopt(zmq.LINGER, 0)
        self._replies.bind(self._reply_addr)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{service}-rpc")

        self.register("ping", self._ping, inline=True)
        self.register("methods", self._list_methods, inline=True)

    # ---- registration -------------------------------------------------
    def register(self, name: str, func: Callable[..., Any], *, inline: bool = False) -> None:
        self._methods[name] = _Method.of(func, inline)

    def method(self, name: str | None = None, *, inline: bool = False):
        """Decorator form of `register`."""

        def deco(func: Callable[..., Any]) -> Callable[..., Any]:
            self.register(name or func.__name__, func, inline=inline)
            return func

        return deco

    def _ping(self) -> dict[str, Any]:
        return {"service": self.service, "id": self.replica_id, "version": __version__}

    def _list_methods(self) -> list[dict[str, Any]]:
        return [{"name": n, "args": list(m.arg_names)} for n, m in sorted(self._methods.items())]

    # ---- lifecycle ----------------------------------------------------
    def start(self) -> Server:
        self._thread = threading.Thread(
            target=self._loop, name=f"{self.service}-router", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._loop()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- I/O thread ---------------------------------------------------
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._replies, zmq.POLLIN)
        self._router.rcvtimeo = 50
        try:
            while not self._stop.is_set():
                if self._pending:
                    events = dict(poller.poll(50))
                    if self._replies in events:
                        self._drain_replies()
                    if self._router in events:
                        self._drain_requests()
                else:
                    # Nothing on the worker pool: every reply was pushed before
                    # its request stopped counting as pending, so one drain
                    # suffices, and a blocking recv wakes up faster than a poll.
                    self._drain_replies()
                    self._serve_blocking()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._router.close(0)
            self._replies.close(0)
            for sock in self._pushers:
                sock.close(0)
            if self._own_ctx is not None:
                # term() would wait for sockets a worker may still hold.
                self._own_ctx.destroy(linger=0)

    def _serve_blocking(self) -> None:
        try:
            frames = self._router.recv_multipart()
        except zmq.Again:
            return
        self._handle_safely(frames)
        self._drain_requests()

    def _handle_safely(self, frames: list[bytes]) -> None:
        try:
            self._handle_frames(frames)
        except Exception:  # never let one request kill the loop
            log.exception("%s: unexpected error handling a frame", self.service)

    def _drain_replies(self) -> None:
        while readable(self._replies):
            self._send(recv_frames(self._replies))

    def _drain_requests(self) -> None:
        for _ in range(1000):  # bounded, so replies are not starved
            if not readable(self._router):
                return
            self._handle_safely(recv_frames(self._router))

    def _send(self, frames: list[bytes]) -> None:
        try:
            send_frames(self._router, frames)
        except zmq.ZMQError as exc:  # peer gone or its queue full: drop the reply
            log.debug("%s: reply dropped: %s", self.service, exc)

    def _handle_frames(self, frames: list[bytes]) -> None:
        # The envelope is everything up to the first empty delimiter frame:
        # [identity, b"", payload] from REQ and well-behaved DEALERs, plus the
        # request-id frame a REQ_CORRELATE socket adds. A DEALER that omits
        # the delimiter sends [identity, payload] and gets the same shape back.
        try:
            split = frames.index(b"", 1) + 1
        except ValueError:
            split = 1
        envelope, body = frames[:split], frames[split:]
        if len(body) != 1:
            err = BazaarError(
                "INVALID_ARGUMENT", f"expected exactly one payload frame, got {len(body)}"
            )
            self._send([*envelope, wire.encode_error(None, err)])
            return
        received = time.monotonic()
        try:
            request = wire.decode_request(body[0])
        except BazaarError as err:
            self._send([*envelope, wire.encode_error(getattr(err, "request_id", None), err)])
            return
        method = self._methods.get(request.method)
        if method is None:
            err = BazaarError("UNIMPLEMENTED", f"unknown method {request.method!r}")
            self._send([*envelope, wire.encode_error(request.id, err)])
            return
        deadline = None
        if request.deadline_ms is not None:
            deadline = received + request.deadline_ms / 1000.0
        if method.inline:
            self._send([*envelope, self._execute(method, request, deadline)])
            return
        with self._pending_lock:
            if self._pending >= self._max_pending:
                err = BazaarError("RESOURCE_EXHAUSTED", f"{self.service} is overloaded")
                self._send([*envelope, wire.encode_error(request.id, err)])
                return
            self._pending += 1
        self._pool.submit(self._run_in_worker, envelope, method, request, deadline)

    # ---- worker threads -----------------------------------------------
    def _run_in_worker(self, envelope, method, request, deadline) -> None:
        try:
            self._push_reply([*envelope, self._execute(method, request, deadline)])
        finally:
            # Only after the reply is in the inproc queue (see _loop).
            with self._pending_lock:
                self._pending -= 1

    def _push_reply(self, frames: list[bytes]) -> None:
        pusher = getattr(self._local, "pusher", None)
        if pusher is None:
            pusher = self._ctx.socket(zmq.PUSH)
            pusher.setsockopt(zmq.LINGER, 0)
            pusher.connect(self._reply_addr)
            self._local.pusher = pusher
            self._pushers.append(pusher)
        if self._stop.is_set():
            return
        with contextlib.suppress(zmq.ZMQError):  # shutting down under our feet
            pusher.send_multipart(frames)

    def _execute(self, method: _Method, request: wire.Request, deadline: float | None) -> bytes:
        started = time.perf_counter()
        code = "OK"
        if deadline is not None and time.monotonic() >= deadline:
            err = BazaarError("DEADLINE_EXCEEDED", "deadline passed before the call ran")
            self.observe(request.method, err.code, time.perf_counter() - started)
            return wire.encode_error(request.id, err)
        _running.deadline = deadline
        try:
            method.check_args(request.method, request.args)
            result = method.func(**request.args)
            return wire.encode_result(request.id, result)
        except BazaarError as err:
            code = err.code
            return wire.encode_error(request.id, err)
        except Exception as exc:
            log.exception("%s.%s failed", self.service, request.method)
            err = BazaarError("INTERNAL", f"{request.method} failed: {type(exc).__name__}: {exc}")
            code = err.code
            return wire.encode_error(request.id, err)
        finally:
            _running.deadline = None
            self.observe(request.method, code, time.perf_counter() - started)


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
    ):
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
        wait_ms = max(0, int(min(budget, self.connect_timeout) * 1000))
        if not sock.poll(wait_ms, zmq.POLLOUT):
            raise BazaarError("UNAVAILABLE", f"{self.endpoint} is not reachable ({method})")
        send_frames(sock, [b"", payload])

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
                sock.rcvtimeo = int(left * 1000) + 1
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
            sock.rcvtimeo = int(min(left, LIVENESS_SLICE) * 1000) + 1
            try:
                frames = sock.recv_multipart()
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

    def __init__(self, endpoint: str, *, context: zmq.Context | None = None):
        self.endpoint = endpoint
        ctx = context or zmq.Context.instance()
        self.socket = watch_peer(harden(ctx.socket(zmq.DEALER)))
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
    **kw,
) -> Any:
    """One-shot call with a throwaway client (scripts, the CLI).

    It waits for the connection for the whole timeout, so a script may run
    while the service is still starting; waiting is safe for any method,
    since nothing has been sent before the connection is up.
    """
    with Client(endpoint, timeout=timeout, connect_timeout=timeout) as client:
        return client.call_args(method, args or {}, **kw)
