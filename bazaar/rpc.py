"""ZeroMQ RPC: `Server` (one ROUTER socket) and `Client` (a pool of DEALERs).

Owns every socket option of the RPC layer, so socket hygiene lives in one
place: LINGER 0, bounded HWMs, MAXMSGSIZE, no socket reused after a timeout.
The byte format lives in `bazaar.wire`; this module only moves frames.

Server threading: one I/O thread owns the ROUTER socket (zmq sockets are not
thread-safe). Methods registered `inline=True` (fast, never block) run on that
thread; all others run on a bounded worker pool, and their replies travel back
to the I/O thread over an inproc PUSH/PULL pair, so a slow handler never holds
up the others.

Security (SPEC section 2): given `keys`, the ROUTER is a CurveZMQ server in a
context whose ZAP handler (`bazaar.security`) admits only the cluster's keys
and names the caller's role; each method then admits only the roles it was
registered with, anything else is PERMISSION_DENIED. Without keys (insecure
mode) every caller may call everything. Input limits: a request of more than
MAX_FRAMES frames is refused without keeping its frames, queues are HWM
messages deep per connection and frames are at most MAXMSGSIZE bytes, and no
reply is larger than wire.MAX_MESSAGE_BYTES, so a peer that never reads its
replies holds a bounded amount of this process's memory per connection (see
REPLY_HWM), and only a holder of a cluster key gets a connection at all.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zmq

from bazaar import __version__, metrics, security, wire
from bazaar.errors import BazaarError

log = logging.getLogger(__name__)

# Messages queued per connection and direction. A caller waits for its replies
# (or pipelines a window of at most 64), so a deeper queue only ever fills for
# a peer that does not read; see the module docstring for the memory bound.
HWM = 128
# Replies queued in zmq per connection on a server. A burst (a pipelining
# client) can outrun the I/O thread for a moment: what does not fit waits in
# the server's own backlog, bounded in bytes per peer and in all, and is sent
# as the queue drains. A peer that never reads fills both and then loses its
# replies: it holds at most REPLY_HWM x MAX_MESSAGE_BYTES + PEER_BACKLOG_BYTES.
REPLY_HWM = 16
PIPELINE_HWM = 1000  # requests a Pipeline may queue to its peer (its own messages)
PEER_BACKLOG_BYTES = 1 << 20
BACKLOG_BYTES = 16 << 20
BACKLOG_RETRY_MS = 2
# [identity, b"", payload] from a DEALER or REQ, plus the request-id frame of
# REQ_CORRELATE: anything longer is refused.
MAX_FRAMES = 4
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


def harden(sock: zmq.Socket, hwm: int = HWM) -> zmq.Socket:
    """Options every socket of ours gets: never block on close, bounded queues."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
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


def recv_request(sock: zmq.Socket, flags: int, secure: bool) -> tuple[list[bytes], str | None]:
    """One request's frames (at most MAX_FRAMES + 1 kept) and the caller's ZAP User-Id.

    The rest of a longer message is read and dropped here, so a many-frame
    message costs no more of our memory than a short one.
    """
    frame = sock.recv(flags, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)  # a message arrives whole
        if len(frames) <= MAX_FRAMES:
            frames.append(frame.bytes)
    return frames, (frame.get("User-Id") if secure else None)


_caller = threading.local()


def caller() -> str | None:
    """The role (ZAP User-Id) of the request the current handler serves; None if insecure."""
    return getattr(_caller, "role", None)


@dataclass(frozen=True, slots=True)
class _Method:
    func: Callable[..., Any]
    inline: bool
    arg_names: tuple[str, ...]
    required: frozenset[str]
    roles: frozenset[str] | None  # None: any caller the ZAP handler admitted
    per_caller: int | None  # calls one role may have running at once (None: no limit)

    @classmethod
    def of(cls, func: Callable[..., Any], inline: bool, roles=None, per_caller=None) -> _Method:
        params = inspect.signature(func).parameters.values()
        names = tuple(p.name for p in params)
        required = frozenset(p.name for p in params if p.default is inspect.Parameter.empty)
        roles = None if roles is None else frozenset(roles)
        return cls(func, inline, names, required, roles, per_caller)

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
        keys: security.Keys | None = None,
        info_roles: Iterable[str] | None = None,
    ):
        """`keys`: serve CurveZMQ as `keys.role` (None: plaintext, insecure mode).
        `info_roles`: who may call `ping` and `methods` (None: any admitted caller)."""
        self.service = service
        self.keys = keys
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
        self._running: dict[tuple[str, str | None], int] = {}  # (method, role) -> in flight
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pushers: list[zmq.Socket] = []
        self._local = threading.local()
        self._reply_addr = f"inproc://rpc-replies-{id(self)}-{os.getpid()}"

        self._router = harden(self._ctx.socket(zmq.ROUTER))
        self._router.setsockopt(zmq.SNDHWM, REPLY_HWM)
        # A full queue raises Again instead of dropping silently: see _park.
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._parked: dict[bytes, tuple[collections.deque, int]] = {}
        self._parked_bytes = 0
        self.replies_dropped = 0
        if keys is not None:
            # The ZAP handler first: a CURVE server without one admits anybody.
            security.authenticators.acquire(self._ctx, keys)
            security.secure_server(self._router, keys)
        try:
            self._bind(endpoint)
        except BaseException:
            self._router.close(0)
            if keys is not None:
                security.authenticators.release(self._ctx)
            if self._own_ctx is not None:
                self._own_ctx.destroy(linger=0)
            raise
        # Bounded: a worker blocks when the I/O thread is this far behind.
        self._replies = self._ctx.socket(zmq.PULL)
        self._replies.setsockopt(zmq.LINGER, 0)
        self._replies.setsockopt(zmq.RCVHWM, HWM)
        self._replies.bind(self._reply_addr)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{service}-rpc")

        self.register("ping", self._ping, inline=True, roles=info_roles)
        self.register("methods", self._list_methods, inline=True, roles=info_roles)

    def _bind(self, endpoint: str) -> None:
        if endpoint.endswith(":0"):
            # Tests ask for a free port; bind_to_random_port is race-free.
            base = endpoint.rsplit(":", 1)[0]
            self.port = self._router.bind_to_random_port(base)
            self.endpoint = f"{base}:{self.port}"
        else:
            self._router.bind(endpoint)
            self.endpoint = endpoint
            self.port = int(endpoint.rsplit(":", 1)[1]) if endpoint.startswith("tcp") else None

    # ---- registration -------------------------------------------------
    def register(
        self,
        name: str,
        func: Callable[..., Any],
        *,
        inline: bool = False,
        roles: Iterable[str] | None = None,
        per_caller: int | None = None,
    ) -> None:
        """`roles`: the callers (ZAP User-Ids) allowed; None admits every cluster key.
        `per_caller`: how many calls of it one role may have running at once, for
        costly methods (more is RESOURCE_EXHAUSTED): a flood from one key then
        cannot take every worker and the CPU."""
        self._methods[name] = _Method.of(func, inline, roles, per_caller)

    def method(
        self, name: str | None = None, *, inline: bool = False, roles: Iterable[str] | None = None
    ):
        """Decorator form of `register`."""

        def deco(func: Callable[..., Any]) -> Callable[..., Any]:
            self.register(name or func.__name__, func, inline=inline, roles=roles)
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
                if self._pending or self._parked:
                    events = dict(poller.poll(BACKLOG_RETRY_MS if self._parked else 50))
                    if self._parked:
                        self._flush_parked()
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
            if self.keys is not None:
                security.authenticators.release(self._ctx)
            if self._own_ctx is not None:
                # term() would wait for sockets a worker may still hold.
                self._own_ctx.destroy(linger=0)

    def _serve_blocking(self) -> None:
        try:
            frames, role = recv_request(self._router, 0, self.keys is not None)
        except zmq.Again:
            return
        self._handle_safely(frames, role)
        self._drain_requests()

    def _handle_safely(self, frames: list[bytes], role: str | None) -> None:
        try:
            self._handle_frames(frames, role)
        except Exception:  # never let one request kill the loop
            log.exception("%s: unexpected error handling a frame", self.service)

    def _drain_replies(self) -> None:
        while readable(self._replies):
            self._send(recv_frames(self._replies))

    def _drain_requests(self) -> None:
        for _ in range(1000):  # bounded, so replies are not starved
            if not readable(self._router):
                return
            self._handle_safely(*recv_request(self._router, _NOBLOCK, self.keys is not None))

    def _send(self, frames: list[bytes]) -> None:
        ident = frames[0]
        if ident not in self._parked:  # else behind its parked replies, in order
            try:
                send_frames(self._router, frames)
                return
            except zmq.Again:  # its queue is full (ROUTER_MANDATORY says so)
                pass
            except zmq.ZMQError as exc:  # peer gone: nobody to answer
                log.debug("%s: reply dropped: %s", self.service, exc)
                return
        self._park(ident, frames)

    def _park(self, ident: bytes, frames: list[bytes]) -> None:
        """Hold a reply for a peer whose queue is full, within the byte budgets."""
        size = sum(map(len, frames))
        queue, used = self._parked.get(ident, (None, 0))
        if used + size > PEER_BACKLOG_BYTES or self._parked_bytes + size > BACKLOG_BYTES:
            self.replies_dropped += 1  # a peer that does not read loses its replies
            log.debug("%s: reply dropped: the peer does not read", self.service)
            return
        if queue is None:
            queue = collections.deque()
        queue.append(frames)
        self._parked[ident] = (queue, used + size)
        self._parked_bytes += size

    def _flush_parked(self) -> None:
        for ident in list(self._parked):
            queue, used = self._parked[ident]
            while queue:
                try:
                    send_frames(self._router, queue[0])
                except zmq.Again:
                    break
                except zmq.ZMQError:  # gone
                    self._parked_bytes -= used
                    del self._parked[ident]
                    break
                size = sum(map(len, queue.popleft()))
                used -= size
                self._parked_bytes -= size
            else:
                del self._parked[ident]
                continue
            if ident in self._parked:
                self._parked[ident] = (queue, used)

    def _handle_frames(self, frames: list[bytes], role: str | None = None) -> None:
        # The envelope is everything up to the first empty delimiter frame:
        # [identity, b"", payload] from REQ and well-behaved DEALERs, plus the
        # request-id frame a REQ_CORRELATE socket adds. A DEALER that omits
        # the delimiter sends [identity, payload] and gets the same shape back.
        try:
            split = frames.index(b"", 1) + 1
        except ValueError:
            split = 1
        envelope, body = frames[:split], frames[split:]
        if len(frames) > MAX_FRAMES:  # (only the first MAX_FRAMES + 1 were kept)
            err = BazaarError("INVALID_ARGUMENT", f"a request has at most {MAX_FRAMES} frames")
            self._send([*envelope, wire.encode_error(None, err)])
            return
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
        if method.roles is not None and self.keys is not None and role not in method.roles:
            err = BazaarError(
                "PERMISSION_DENIED", f"{request.method} is not allowed for role {role or '?'}"
            )
            self.observe(request.method, err.code, 0.0)  # a known method: bounded labels
            self._send([*envelope, wire.encode_error(request.id, err)])
            return
        deadline = None
        if request.deadline_ms is not None:
            deadline = received + request.deadline_ms / 1000.0
        if method.inline:
            self._send([*envelope, self._execute(method, request, deadline, role)])
            return
        slot = (request.method, role)
        with self._pending_lock:
            busy = self._pending >= self._max_pending
            if method.per_caller is not None:
                busy = busy or self._running.get(slot, 0) >= method.per_caller
            if busy:
                err = BazaarError("RESOURCE_EXHAUSTED", f"{self.service} is overloaded")
                self._send([*envelope, wire.encode_error(request.id, err)])
                return
            self._pending += 1
            if method.per_caller is not None:
                self._running[slot] = self._running.get(slot, 0) + 1
        self._pool.submit(self._run_in_worker, envelope, method, request, deadline, role)

    # ---- worker threads -----------------------------------------------
    def _run_in_worker(self, envelope, method, request, deadline, role) -> None:
        try:
            self._push_reply([*envelope, self._execute(method, request, deadline, role)])
        finally:
            # Only after the reply is in the inproc queue (see _loop).
            with self._pending_lock:
                self._pending -= 1
                if method.per_caller is not None:
                    slot = (request.method, role)
                    if self._running[slot] <= 1:
                        del self._running[slot]
                    else:
                        self._running[slot] -= 1

    def _push_reply(self, frames: list[bytes]) -> None:
        pusher = getattr(self._local, "pusher", None)
        if pusher is None:
            pusher = self._ctx.socket(zmq.PUSH)
            pusher.setsockopt(zmq.LINGER, 0)
            pusher.setsockopt(zmq.SNDHWM, HWM)
            pusher.connect(self._reply_addr)
            self._local.pusher = pusher
            self._pushers.append(pusher)
        if self._stop.is_set():
            return
        with contextlib.suppress(zmq.ZMQError):  # shutting down under our feet
            pusher.send_multipart(frames)

    def _execute(
        self, method: _Method, request: wire.Request, deadline: float | None, role: str | None
    ) -> bytes:
        started = time.perf_counter()
        code = "OK"
        if deadline is not None and time.monotonic() >= deadline:
            err = BazaarError("DEADLINE_EXCEEDED", "deadline passed before the call ran")
            self.observe(request.method, err.code, time.perf_counter() - started)
            return wire.encode_error(request.id, err)
        _running.deadline = deadline
        _caller.role = role
        try:
            method.check_args(request.method, request.args)
            result = method.func(**request.args)
            reply = wire.encode_result(request.id, result)
        except BazaarError as err:
            code = err.code
            return wire.encode_error(request.id, err)
        except Exception as exc:
            # The details (paths, exception text) stay in this log, under an id.
            error_id = os.urandom(6).hex()
            log.exception("%s.%s failed (error id %s)", self.service, request.method, error_id)
            what = type(exc).__name__
            err = BazaarError("INTERNAL", f"{request.method} failed: {what} (error id {error_id})")
            code = err.code
            return wire.encode_error(request.id, err)
        finally:
            _running.deadline = None
            _caller.role = None
            self.observe(request.method, code, time.perf_counter() - started)
        if len(reply) > wire.MAX_MESSAGE_BYTES:
            err = BazaarError(
                "RESOURCE_EXHAUSTED", f"{request.method}: reply over {wire.MAX_MESSAGE_BYTES} bytes"
            )
            return wire.encode_error(request.id, err)
        return reply


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
