"""The replication link of an order replica (a part of `OrderReplica`).

Owns the thread that moves the machine's `Send` actions to the followers
(one DEALER per peer, `replicate` requests sent without waiting), feeds
their replies back into the machine, and ticks the machine's clock every
TICK. Nothing else reads or writes these sockets.
"""

from __future__ import annotations

import contextlib
import logging
import time

import zmq

from bazaar import rpc, wire
from bazaar.errors import BazaarError
from bazaar.order import replication as rep

log = logging.getLogger("bazaar.order.service")

TICK = 0.02  # replication timer resolution


class ReplicationLink:
    """Mixin of `OrderReplica`: the replication thread and its sockets."""

    def _wake(self) -> None:
        # BlockingIOError: already awake; OSError/AttributeError: shutting down.
        with contextlib.suppress(BlockingIOError, OSError, AttributeError):
            self._wake_w.send(b"x")

    def _replication_loop(self) -> None:
        sockets = {}
        for peer in self.peers:
            sock = rpc.watch_peer(rpc.harden(self._ctx.socket(zmq.DEALER)))
            sock.connect(self.endpoints[peer])
            sockets[peer] = sock
        poller = zmq.Poller()
        by_socket = {}
        for peer, sock in sockets.items():
            poller.register(sock, zmq.POLLIN)
            by_socket[sock] = peer
        poller.register(self._wake_r, zmq.POLLIN)
        next_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(int(TICK * 1000)))
                for sock in [s for s in events if s in by_socket]:
                    self._drain_replies(by_socket[sock], sock)
                self._drain_wake()
                self._flush_outbox(sockets)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK
                    with self._lock:
                        self._perform(self.machine.tick(time.monotonic()))
                    self._flush_outbox(sockets)
        finally:
            for sock in sockets.values():
                sock.close(0)
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _flush_outbox(self, sockets) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                sends = list(self._outbox)
                self._outbox.clear()
            for send in sends:
                msg = send.message
                args = {
                    "epoch": msg.epoch,
                    "leader": msg.leader,
                    "records": [r.to_wire() for r in msg.records],
                    "prev_number": msg.prev_number,
                    "prev_epoch": msg.prev_epoch,
                }
                payload = wire.encode_request(0, "replicate", args, deadline_ms=2000)
                # Not connected: dropped; the machine's timeout notices the silence.
                with contextlib.suppress(zmq.ZMQError):
                    sockets[send.to].send_multipart([b"", payload], zmq.NOBLOCK)

    def _drain_replies(self, peer: int, sock) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = wire.decode_reply(frames[-1])
                if reply.ok:
                    r = reply.result
                    answer = rep.ReplicateReply(
                        r["epoch"],
                        r["ok"],
                        r["last_number"],
                        r["matched"],
                        r.get("prev"),
                        r.get("conflict_epoch"),
                    )
                else:
                    answer = reply.error
            except (BazaarError, KeyError, TypeError) as exc:
                log.warning("order %s: bad replicate reply from %s: %s", self.id, peer, exc)
                continue
            with self._lock:
                self._perform(self.machine.on_reply(peer, answer, time.monotonic()))
