"""The RPC server: one ROUTER socket, its I/O thread and its worker pool.

Threading: one I/O thread owns the ROUTER socket (zmq sockets are not
thread-safe). Methods registered `inline=True` (fast, never block) run on that
thread (one that returns a `Later` is answered after the requests already
waiting are read: a batch shares one group commit); all others run on a
bounded worker pool, and their replies travel back
to the I/O thread over an inproc PUSH/PULL pair, so a slow handler never holds
up the others. A peer whose reply queue is full gets its replies from a
bounded backlog (`bazaar.rpc.backlog`), in order.

Security: given `keys`, the ROUTER is a CurveZMQ server whose ZAP handler
(`bazaar.security`) names the caller's role; each method admits only the roles
it was registered with (see the package docstring).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from bazaar import __version__, metrics, security, wire
from bazaar.errors import BazaarError
from bazaar.rpc.backlog import ReplyBacklog
from bazaar.rpc.methods import Method, execute
from bazaar.rpc.sockets import (
    _NOBLOCK,
    HWM,
    harden,
    readable,
    recv_frames,
    send_frames,
)
from bazaar.rpc.workers import Workers

log = logging.getLogger("bazaar.rpc")


# Replies queued in zmq per connection on a server; what does not fit waits
# in the server's ReplyBacklog (bazaar.rpc.backlog). A peer that never reads
# holds at most REPLY_HWM x MAX_MESSAGE_BYTES + PEER_BACKLOG_BYTES.
REPLY_HWM = 16
BACKLOG_RETRY_MS = 2
# [identity, b"", payload] from a DEALER or REQ, plus the request-id frame of
# REQ_CORRELATE: anything longer is refused.
MAX_FRAMES = 4
MAX_PENDING = 1024  # requests queued or running on the worker pool; more: RESOURCE_EXHAUSTED


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
        self._methods: dict[str, Method] = {}
        # The metrics hook: (method, code, seconds) for every executed request.
        self.observe: Callable[[str, str, float], None] = metrics.rpc_observer(service)
        self._workers = workers
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
        # A full queue raises Again instead of dropping silently: see ReplyBacklog.
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._backlog = ReplyBacklog(service)
        self._later: list = []  # (envelope, methods.Later) of the batch being read
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
        self._pool = Workers(workers, f"{service}-rpc", self._stop)

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
        self._methods[name] = Method.of(func, inline, roles, per_caller)

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

    @property
    def replies_dropped(self) -> int:
        """Replies lost to peers that do not read (see ReplyBacklog)."""
        return self._backlog.dropped

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
                if self._pending or self._backlog.parked:
                    events = dict(poller.poll(BACKLOG_RETRY_MS if self._backlog.parked else 50))
                    if self._backlog.parked:
                        self._backlog.flush(self._router)
                    if self._replies in events:
                        self._drain_replies()
                    if self._router in events:
                        self._drain_requests()
                else:
                    # Nothing on the worker pool: every reply was pushed before
                    # its request stopped counting as pending, so one drain
                    # suffices, and a blocking recv wakes up faster than a poll.
                    if readable(self._replies):  # mostly not: one check, no raise
                        self._drain_replies()
                    self._serve_blocking()
        finally:
            self._pool.shutdown()
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

    def _finish_later(self) -> None:
        """Answer the Laters of the batch just read, in order (see `methods.Later`)."""
        later, self._later = self._later, []
        for envelope, pending in later:
            try:
                reply = pending.reply()
            except Exception:  # never let one request kill the loop
                log.exception("%s: unexpected error finishing a request", self.service)
                continue
            self._send([*envelope, reply])

    def _handle_safely(self, frames: list[bytes], role: str | None) -> None:
        try:
            self._handle_frames(frames, role)
        except Exception:  # never let one request kill the loop
            log.exception("%s: unexpected error handling a frame", self.service)

    # Drains try the receive first: a message that is there costs no
    # ZMQ_EVENTS check (a syscall in libzmq), only the last, empty try raises.
    def _drain_replies(self) -> None:
        while True:
            try:
                frames = recv_frames(self._replies)
            except zmq.Again:
                return
            self._send(frames)

    def _drain_requests(self) -> None:
        secure = self.keys is not None
        for _ in range(1000):  # bounded, so replies are not starved
            try:
                frames, role = recv_request(self._router, _NOBLOCK, secure)
            except zmq.Again:
                break
            self._handle_safely(frames, role)
        if self._later:
            self._finish_later()

    def _send(self, frames: list[bytes]) -> None:
        ident = frames[0]
        if ident not in self._backlog.parked:  # else behind its parked replies, in order
            try:
                send_frames(self._router, frames)
                return
            except zmq.Again:  # its queue is full (ROUTER_MANDATORY says so)
                pass
            except zmq.ZMQError as exc:  # peer gone: nobody to answer
                log.debug("%s: reply dropped: %s", self.service, exc)
                return
        self._backlog.park(ident, frames)

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
            reply = execute(method, request, deadline, role, self.service, self.observe)
            if type(reply) is bytes:
                self._send([*envelope, reply])
            else:  # a Later: answered once the requests waiting now are read
                self._later.append((envelope, reply))
            return
        slot = (request.method, role)
        with self._pending_lock:
            busy = self._pending >= MAX_PENDING
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
            self._push_reply(
                [*envelope, execute(method, request, deadline, role, self.service, self.observe)]
            )
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
