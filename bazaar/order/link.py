"""The replication link of an order replica (a part of `OrderReplica`).

Owns the thread that moves the machine's `Send` actions to the followers
(one `rpc.Pipeline` per peer: `replicate` requests sent without waiting),
feeds their replies back into the machine, and ticks the machine's clock
every TICK while anything is in flight. A quiet machine (`Replica.quiet`)
is ticked when its next timer is due (`Replica.idle_for`: a leader's next
heartbeat), at most IDLE_TICK apart, and wakes for replies and wake-ups.
Nothing else uses these pipelines.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import zmq

from bazaar import rpc, security
from bazaar.order import replication as rep

log = logging.getLogger("bazaar.order.service")

TICK = 0.02  # replication timer resolution
IDLE_TICK = 0.25  # the longest sleep of a quiet machine (a follower: nothing to time)


class ReplicationLink:
    """Mixin of `OrderReplica`: the replication thread and its sockets."""

    def _wake(self) -> None:
        # BlockingIOError: already awake; OSError/AttributeError: shutting down.
        with contextlib.suppress(BlockingIOError, OSError, AttributeError):
            self._wake_w.send(b"x")

    def _replication_loop(self) -> None:
        links = {
            p: rpc.Pipeline(
                self.endpoints[p],
                context=self._ctx,
                keys=self.keys,
                server_role=security.replica_role(p),
            )
            for p in self.peers
        }
        poller = zmq.Poller()
        by_socket = {}
        for peer, link in links.items():
            poller.register(link.socket, zmq.POLLIN)
            by_socket[link.socket] = peer
        poller.register(self._wake_r, zmq.POLLIN)
        next_tick = time.monotonic()
        timeout = idle_for = TICK
        try:
            while not self._stop.is_set():
                # Rounded up: waking a hair before a heartbeat is due would
                # only cost another TICK.
                events = dict(poller.poll(math.ceil(timeout * 1000)))
                for sock in [s for s in events if s in by_socket]:
                    peer = by_socket[sock]
                    self._take_replies(peer, links[peer].replies())
                self._drain_wake()
                self._flush_outbox(links)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK
                    with self._lock:
                        now = time.monotonic()
                        self._perform(self.machine.tick(now))
                        # A machine with something in flight is ticked every
                        # TICK; a quiet one when its next heartbeat is due, and
                        # it wakes for replies, wake-ups (an order or a new
                        # leadership queues Sends) and stop().
                        idle_for = self.machine.idle_for(now)
                    self._flush_outbox(links)
                elif idle_for > TICK:  # woken meanwhile: an order may have put records in flight
                    with self._lock:
                        idle_for = self.machine.idle_for(time.monotonic())
                timeout = min(IDLE_TICK, max(TICK, idle_for))
        finally:
            for link in links.values():
                link.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wake(self) -> None:
        # Cleared before the outbox is flushed: a Send queued after this
        # point wakes us again, one queued before it is in this flush.
        self._wake_pending = False
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _flush_outbox(self, links: dict[int, rpc.Pipeline]) -> None:
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
                # Not connected: dropped; the machine's timeout notices the silence.
                links[send.to].send("replicate", args, deadline_ms=2000)

    def _take_replies(self, peer: int, replies: list) -> None:
        for reply in replies:
            try:
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
            except (KeyError, TypeError) as exc:
                log.warning("order %s: bad replicate reply from %s: %s", self.id, peer, exc)
                continue
            with self._lock:
                self._perform(self.machine.on_reply(peer, answer, time.monotonic()))
