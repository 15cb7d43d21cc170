"""An RPC server's reply backlog: replies held for peers whose zmq queue is full.

A burst (a pipelining client) can outrun the server's I/O thread for a
moment: replies that do not fit the ROUTER's queue (ROUTER_MANDATORY makes a
full queue raise Again instead of dropping) wait here, per peer and in order,
and are sent as the queue drains. The backlog is bounded in bytes per peer
(PEER_BACKLOG_BYTES) and in all (BACKLOG_BYTES): a peer that never reads
fills its share and then loses its replies (`dropped`), and everyone else is
still answered. Used from the server's I/O thread only.
"""

from __future__ import annotations

import collections
import logging

import zmq

from bazaar.rpc.sockets import send_frames

log = logging.getLogger("bazaar.rpc")

PEER_BACKLOG_BYTES = 1 << 20
BACKLOG_BYTES = 16 << 20


class ReplyBacklog:
    """Replies waiting for their peer's queue, by peer identity, within the byte bounds."""

    def __init__(self, service: str):
        self.service = service
        self.parked: dict[bytes, tuple[collections.deque, int]] = {}  # ident -> (replies, bytes)
        self.bytes = 0
        self.dropped = 0

    def park(self, ident: bytes, frames: list[bytes]) -> None:
        """Hold a reply for a peer whose queue is full, within the byte budgets."""
        size = sum(map(len, frames))
        queue, used = self.parked.get(ident, (None, 0))
        if used + size > PEER_BACKLOG_BYTES or self.bytes + size > BACKLOG_BYTES:
            self.dropped += 1  # a peer that does not read loses its replies
            log.debug("%s: reply dropped: the peer does not read", self.service)
            return
        if queue is None:
            queue = collections.deque()
        queue.append(frames)
        self.parked[ident] = (queue, used + size)
        self.bytes += size

    def flush(self, router: zmq.Socket) -> None:
        """Send what the peers' queues take now, in order; forget peers that are gone."""
        for ident in list(self.parked):
            queue, used = self.parked[ident]
            while queue:
                try:
                    send_frames(router, queue[0])
                except zmq.Again:
                    break
                except zmq.ZMQError:  # gone
                    self.bytes -= used
                    del self.parked[ident]
                    break
                size = sum(map(len, queue.popleft()))
                used -= size
                self.bytes -= size
            else:
                del self.parked[ident]
                continue
            if ident in self.parked:
                self.parked[ident] = (queue, used)
