"""One order replica: its state, threads and lifecycle; the parts live beside it.

`OrderReplica` holds what every part shares (the machine, the log, one lock
and its condition, the queues) and performs the machine's actions under
that lock (`_perform`). Each job is a module of its own, mixed in:

- `commit` — group commit, durability, commit waits;
- `link` — the replication thread and its sockets;
- `recovery` — drives `recovering` (catch-up, promises, fencing, reconciliation);
- `handlers` — the RPC methods.

Nothing here decides replication questions: every such decision is a call
into `bazaar.order.replication.Replica` under the lock, and the parts only
perform the actions that come back. Blocking work (log writes, the catalog,
peers) never happens under that lock; the one exception is the machine's
`SaveState` (a newly accepted epoch), which must be durable before the
machine moves to it and before any reply in it leaves.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from pathlib import Path

import zmq

from bazaar import metrics, rpc, security
from bazaar.config import Config
from bazaar.errors import BazaarError
from bazaar.order import replication as rep
from bazaar.order.commit import GroupCommit, Waiter
from bazaar.order.handlers import CATALOG_TIMEOUT, Handlers, method_roles
from bazaar.order.link import ReplicationLink
from bazaar.order.log import OrderLog
from bazaar.order.recovering import Recovering
from bazaar.order.recovery import PEER_TIMEOUT, Recovery

log = logging.getLogger(__name__)

CATCH_UP_PER_CALLER = 4  # catch_up calls one peer may have running here at once


class OrderReplica(Handlers, Recovery, GroupCommit, ReplicationLink):
    """A running order replica; `start()` then `stop()` (or `run` for the CLI)."""

    def __init__(self, config: Config, *, follower_timeout: float = 0.5):
        self.config = config
        self.id = config.order_id
        self.endpoints = dict(config.order_replicas)
        self.peers = [p for p in self.endpoints if p != self.id]
        self.data_dir = Path(config.data_dir)
        self.keys = security.for_service(
            config.keys_path, config.insecure, security.replica_role(self.id)
        )
        self._ctx = zmq.Context.instance()
        self._endpoint = config.bind(self.endpoints[self.id])
        self._follower_timeout = follower_timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # log, durability, roles
        self._stop = threading.Event()
        self._writes: collections.deque = collections.deque()
        self._flushing = False
        self._outbox: collections.deque = collections.deque()
        self._wake_pending = False  # the replication thread has a wake-up coming
        self._waiters: dict[int, Waiter] = {}
        self._trading: set[str] = set()  # keys whose catalog trade is in flight here
        self._serving = False  # leader, recovered and reconciled
        self._recovery: Recovering | None = None  # the run of our latest election
        self._disk_error: BazaarError | None = None
        self._disk_errors = 0
        self._disk_error_at = float("-inf")
        self._threads: list[threading.Thread] = []
        self.catalog = rpc.Client(
            config.catalog,
            timeout=CATALOG_TIMEOUT,
            context=self._ctx,
            keys=self.keys,
            server_role="catalog",
        )
        self.peer_clients = {
            p: rpc.Client(
                self.endpoints[p],
                timeout=PEER_TIMEOUT,
                context=self._ctx,
                keys=self.keys,
                server_role=security.replica_role(p),
            )
            for p in self.peers
        }

    def start(self) -> OrderReplica:
        started = time.monotonic()
        self.log = OrderLog(self.data_dir, self.id).load()
        epoch, leader = self.log.load_state()
        opened = time.monotonic()
        self.machine = rep.Replica(
            self.id,
            list(self.endpoints),
            self.log,
            epoch,
            leader,
            follower_timeout=self._follower_timeout,
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._spawn(self._writer_loop, "writer")
        self.catch_up_from_peers()
        roles = method_roles(self.id, self.endpoints)
        self.server = rpc.Server(
            self._endpoint,
            service="order",
            replica_id=self.id,
            workers=48,
            keys=self.keys,
            info_roles=roles["status"],
        )
        self.endpoint = self.server.endpoint
        for name, callers in roles.items():
            # `replicate` runs on the server's I/O thread: batches are applied in
            # the order they arrive (no reordering by the worker pool), and the
            # write it does is one short group-committed fsync. `catch_up` builds
            # pages of up to ~768 KB: a peer needs one at a time (plus the
            # retries of an idempotent call that timed out: up to 3 in flight),
            # so a flood from one key gets RESOURCE_EXHAUSTED, not every worker.
            self.server.register(
                name,
                getattr(self, f"rpc_{name}"),
                inline=name == "replicate",
                roles=callers,
                per_caller=CATCH_UP_PER_CALLER if name == "catch_up" else None,
            )
        self._spawn(self._replication_loop, "replication")
        self._spawn(self._leader_loop, "leader")
        self.server.start()
        log.info(
            "order %s serving on %s in %.0f ms (log opened in %.1f ms): %d records, "
            "epoch %s, leader %s",
            self.id,
            self.endpoint,
            (time.monotonic() - started) * 1000,
            (opened - started) * 1000,
            self.log.last_number + 1,
            epoch,
            leader,
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._changed.notify_all()
        self._wake()
        deadline = time.monotonic() + 0.6  # the CLI must return well under a second
        server = getattr(self, "server", None)
        if server is not None:
            server.stop(0.3)
        for t in self._threads:  # daemons: one blocked on a peer does not hold us up
            t.join(max(0.0, deadline - time.monotonic()))
        self.catalog.close()
        for c in self.peer_clients.values():
            c.close()
        if hasattr(self, "log"):
            self.log.close()

    def _spawn(self, target, name: str) -> threading.Thread:
        t = threading.Thread(target=target, name=f"order{self.id}-{name}", daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def _perform(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, rep.Persist | rep.Truncate):
                self._writes.append(action)
                self._changed.notify_all()
            elif isinstance(action, rep.Send):
                self._outbox.append(action)
                if not self._wake_pending:  # one wake-up per drain of the outbox
                    self._wake_pending = True
                    self._wake()
            elif isinstance(action, rep.Acknowledge):
                self._resolve(lambda n, upto=action.upto: n <= upto, None)
            elif isinstance(action, rep.Abort):
                self._resolve(lambda n, start=action.from_number: n >= start, action.error)
                self._serving = False
            elif isinstance(action, rep.SaveState):
                # The vote: durable before anything else happens in its epoch
                # (and before any reply leaves); a failed save raises here and
                # the machine, which moves only on `on_saved`, changes nothing.
                self.log.save_state(action.epoch, action.leader)
                self._perform(self.machine.on_saved(action.epoch, action.leader))
        self._changed.notify_all()

    def _resolve(self, selects, error: BazaarError | None) -> None:
        for number in [n for n in self._waiters if selects(n)]:
            waiter = self._waiters.pop(number)
            waiter.error = error
            waiter.set()


def run(config: Config, stop: threading.Event) -> None:
    """The CLI entry point: serve until `stop` is set."""
    replica = OrderReplica(config).start()
    metrics.watch("order", replica)
    try:
        stop.wait()
    finally:
        replica.stop()
