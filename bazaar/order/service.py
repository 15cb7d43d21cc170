"""One order replica: RPC methods, group commit, replication I/O, recovery.

Owns the wiring of an order replica: the `rpc.Server` (`order`, `get_order`,
`set_leader`, `replicate`, `catch_up`, `status`), group commit (the first
thread with queued records writes and fsyncs everyone's), the replication
thread that moves `replicate` messages to followers over DEALER sockets and
ticks the machine's clock, and leader recovery (catch-up, catalog fence,
reconciliation of orphaned trades).

It never decides replication questions itself: every such decision is a
call into `bazaar.order.replication.Replica` under one lock, and this
module only performs the actions that come back. Blocking work (log writes,
the catalog, peers) never happens under that lock; the one exception is
saving a newly accepted epoch, which must be durable before the machine
acts on it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zmq

from bazaar import metrics, rpc, wire
from bazaar.config import Config
from bazaar.errors import BazaarError, invalid, not_found, unavailable
from bazaar.order import replication as rep
from bazaar.order.log import ORDER_TYPES, OrderLog, Record

log = logging.getLogger(__name__)

TICK = 0.02  # replication timer resolution
RECONCILE_EVERY = 1.0
READY_WAIT = 2.0  # how long an order waits for a recovering leader
ACK_WAIT = 10.0  # how long an order waits for its commit
CATALOG_TIMEOUT = 2.0
PEER_TIMEOUT = 1.5  # a live peer answers in ms; a dead one is skipped by `_listening`
CATCH_UP_LIMIT = 4000  # records per catch_up reply
CATCH_UP_BYTES = 768 << 10  # and about this much: under wire.MAX_MESSAGE_BYTES (1 MiB)
MAX_KEY_LEN = 256
DISK_COOLDOWN = 5.0  # a replica whose disk failed this recently refuses to lead
REPLY_MARGIN = 0.15  # an `order` answers this long before its caller's deadline


def budget(default: float) -> float:
    """How long an `order` may still wait: `default`, cut to answer before the caller gives up.

    Timeouts nest: the front end's attempt outlasts everything a healthy
    leader may spend on it, so a slow catalog or commit comes back as an
    UNAVAILABLE reply (retried on the same leader), never as a silence that
    would get a healthy leader voted out.
    """
    return max(0.0, rpc.time_left(default + REPLY_MARGIN) - REPLY_MARGIN)


class Waiter:
    """One committed-or-not outcome that order threads wait for."""

    __slots__ = ("event", "error")

    def __init__(self):
        self.event = threading.Event()
        self.error: BazaarError | None = None


def check_order_args(key, name, type, quantity) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LEN or not key.isprintable():
        raise invalid(f"key must be a printable string of 1..{MAX_KEY_LEN} characters")
    if not isinstance(name, str) or not name:
        raise invalid("name must be a non-empty string")
    if type not in ORDER_TYPES:
        raise invalid("type must be 'buy' or 'sell'")
    if not wire.is_int(quantity) or quantity <= 0:
        raise invalid("quantity must be an integer > 0")


def parse_records(raw) -> list[Record]:
    if not isinstance(raw, list):
        raise invalid("records must be a list")
    try:
        records = [Record.from_wire(r) for r in raw]
    except ValueError as exc:
        raise invalid(f"bad record: {exc}") from None
    for a, b in zip(records, records[1:], strict=False):
        if b.number != a.number + 1:
            raise invalid("records must have consecutive numbers")
    return records


class OrderReplica:
    """A running order replica; `start()` then `stop()` (or `run` for the CLI)."""

    def __init__(
        self,
        config: Config,
        *,
        endpoint: str | None = None,
        follower_timeout: float = 0.5,
        context: zmq.Context | None = None,
    ):
        self.config = config
        self.id = config.order_id
        self.endpoints = dict(config.order_replicas)
        self.peers = [p for p in self.endpoints if p != self.id]
        self.data_dir = Path(config.data_dir)
        self._ctx = context or zmq.Context.instance()
        self._endpoint = endpoint or rpc.bind_endpoint(self.endpoints[self.id])
        self._follower_timeout = follower_timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # log, durability, roles
        self._stop = threading.Event()
        self._writes: collections.deque = collections.deque()
        self._flushing = False
        self._outbox: collections.deque = collections.deque()
        self._waiters: dict[int, Waiter] = {}
        self._trading: set[str] = set()  # keys whose catalog trade is in flight here
        self._serving = False  # leader, recovered and reconciled
        self._promised = False  # elected, and a majority promised our epoch
        self._recovery_note = "not the leader"
        self._disk_error: BazaarError | None = None
        self._disk_errors = 0
        self._disk_error_at = float("-inf")
        self._trade_watermark = 0  # see _compute_watermark
        self._watermark_epoch: int | None = None
        self._threads: list[threading.Thread] = []
        self.catalog = rpc.Client(config.catalog, timeout=CATALOG_TIMEOUT, context=self._ctx)
        self.peer_clients = {
            p: rpc.Client(self.endpoints[p], timeout=PEER_TIMEOUT, context=self._ctx)
            for p in self.peers
        }

    # ---- lifecycle ------------------------------------------------------------
    def start(self) -> OrderReplica:
        started = time.monotonic()
        self.log = OrderLog(self.data_dir, self.id).load()
        epoch, leader = self.log.load_state()
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
        self.catch_up_from_peers(epoch=None)
        self.server = rpc.Server(self._endpoint, service="order", replica_id=self.id, workers=48)
        self.endpoint = self.server.endpoint
        for name in ("order", "get_order", "set_leader", "replicate", "catch_up", "status"):
            # `replicate` runs on the server's I/O thread: batches are applied in
            # the order they arrive (no reordering by the worker pool), and the
            # write it does is one short group-committed fsync.
            self.server.register(name, getattr(self, f"rpc_{name}"), inline=name == "replicate")
        self._spawn(self._replication_loop, "replication")
        self._spawn(self._leader_loop, "leader")
        self.server.start()
        log.info(
            "order %s serving on %s in %.0f ms: %d records, epoch %s, leader %s",
            self.id,
            self.endpoint,
            (time.monotonic() - started) * 1000,
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

    # ---- performing the machine's actions (always under self._lock) -------------
    def _perform(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, rep.Persist | rep.Truncate):
                self._writes.append(action)
                self._changed.notify_all()
            elif isinstance(action, rep.Send):
                self._outbox.append(action)
                self._wake()
            elif isinstance(action, rep.Acknowledge):
                self._resolve(lambda n, upto=action.upto: n <= upto, None)
            elif isinstance(action, rep.Abort):
                self._resolve(lambda n, start=action.from_number: n >= start, action.error)
                self._serving = False
            # SaveState: already persisted by _accept_epoch before the machine moved.
        self._changed.notify_all()

    def _resolve(self, selects, error: BazaarError | None) -> None:
        for number in [n for n in self._waiters if selects(n)]:
            waiter = self._waiters.pop(number)
            waiter.error = error
            waiter.event.set()

    def _accept_epoch(self, epoch: int, leader: int) -> None:
        """Persist a new (epoch, leader) before the machine acts on it (under the lock)."""
        if self.machine.epoch_change(epoch, leader):
            self.log.save_state(epoch, leader)

    def _wake(self) -> None:
        # BlockingIOError: already awake; OSError/AttributeError: shutting down.
        with contextlib.suppress(BlockingIOError, OSError, AttributeError):
            self._wake_w.send(b"x")

    # ---- group commit -------------------------------------------------------------
    def _flush(self) -> None:
        """Group commit: the first thread with queued writes writes everyone's (one fsync).

        Called by every thread right after it queued writes (outside the lock);
        a thread that finds a flush under way leaves its records to that one,
        which loops until the queue is empty.
        """
        with self._lock:
            if self._flushing or not self._writes:
                return
            self._flushing = True
        try:
            while True:
                with self._lock:
                    ops = list(self._writes)
                    self._writes.clear()
                    if not ops:
                        self._flushing = False
                        return
                with metrics.fsync_timer("order"):  # bazaar_order_fsync_duration_seconds
                    self._write(ops)
        except BaseException:
            with self._lock:
                self._flushing = False
            raise

    def _writer_loop(self) -> None:
        """A safety net: flushes writes queued by paths that did not flush themselves."""
        while not self._stop.wait(0.05):
            self._flush()

    def _write(self, ops: list) -> None:
        steps: list = []  # one transaction: a re-stamp's cut and append land together
        for op in ops:
            if isinstance(op, rep.Truncate):
                steps.append(op.from_number)
            elif steps and isinstance(steps[-1], list):
                steps[-1].extend(op.records)
            else:
                steps.append(list(op.records))
        try:
            self.log.write(steps)
        except BazaarError as err:
            self._on_disk_error(err)
            return
        with self._lock:
            self._disk_error = None
            self._perform(self.machine.on_durable(self.log.last_number, time.monotonic()))

    def _on_disk_error(self, err: BazaarError) -> None:
        log.error("order %s: %s", self.id, err.message)
        with self._lock:
            self._writes.clear()  # every queued record was decided on top of the lost ones
            self._disk_error = err
            self._disk_error_at = time.monotonic()
            self._disk_errors += 1
            self._perform(self.machine.on_disk_error(err))
            self.machine.reset_log()

    # ---- replication I/O ------------------------------------------------------------
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

    # ---- catch-up and leader recovery ----------------------------------------------
    def _ask_peers(self, after: int, epoch: int | None) -> list[rep.PeerLog]:
        args = {"after": after}
        if epoch is not None:
            args.update(epoch=epoch, leader=self.id)

        def ask(peer):
            if not self._listening(peer):
                log.info("order %s: peer %s is down (connection refused)", self.id, peer)
                return None
            try:
                # Idempotent either way: accepting the same epoch twice changes nothing.
                res = self.peer_clients[peer].call_args(
                    "catch_up", args, timeout=PEER_TIMEOUT, idempotent=True
                )
                last = res["last_number"]
                return rep.PeerLog(
                    peer,
                    -1 if last is None else last,
                    res["runs"],
                    parse_records(res["records"]),
                    bool(res.get("more")),
                    res.get("promised") is True,
                )
            except BazaarError as err:
                if err.code == "ABORTED" and isinstance(err.details.get("epoch"), int):
                    with self._lock:
                        self._perform(self.machine.fenced(err.details["epoch"]))
                log.info("order %s: catch_up from %s failed: %s", self.id, peer, err.message)
                return None

        if not self.peers:
            return []
        with ThreadPoolExecutor(len(self.peers)) as pool:
            return [a for a in pool.map(ask, self.peers) if a is not None]

    def _listening(self, peer: int) -> bool:
        """False when nothing listens on the peer's port (a killed process): skip it at once.

        A paused or slow peer still accepts the TCP connection, so it gets the
        full PEER_TIMEOUT to answer: its log may hold acknowledged records.
        """
        host, _, port = self.endpoints[peer].removeprefix("tcp://").rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=0.3):
                return True
        except OSError:
            return False
        except ValueError:
            return True  # not a tcp endpoint: let the RPC call find out

    def catch_up_from_peers(self, epoch: int | None) -> None:
        """Adopt the most up-to-date log among ours and our peers' (one call per peer).

        With an `epoch` (we were elected) the peers' answers are promises,
        and a majority of them (ourselves counted) must have promised: only
        then do we hold every record such a majority holds, hence every
        acknowledged one; else UNAVAILABLE, and recovery tries again.

        The records come in pages (`catch_up` answers about 1 MiB at most);
        each page is made durable before the next is asked for, so a replica
        that missed a million orders never holds them all in memory.
        """
        answers = self._ask_peers(self.machine.durable, epoch)
        if epoch is not None:
            votes = 1 + sum(1 for a in answers if a.promised)
            if votes < self.machine.quorum():
                raise unavailable(f"only {votes} of {len(self.endpoints)} replicas promised")
        with self._lock:
            truncate, best = rep.plan_catch_up(self.machine, answers)
        if best is None:
            return
        if truncate is None:
            page, more = list(best.records), best.more
        else:  # we diverged below what we asked for: fetch from the fork
            page, more = [], True
        pages, target = 0, None
        while True:
            before = target
            with self._lock:
                self._perform(self.machine.adopt(truncate, page))
                target, generation = self.machine.last_number, self._disk_errors
            self._flush()
            self._wait_durable(target, 10.0, generation)
            truncate, pages = None, pages + 1
            if not more or target == before:  # done, or our log moved under us
                break
            res = self.peer_clients[best.peer].call(
                "catch_up", after=target, timeout=PEER_TIMEOUT * 3, idempotent=True
            )
            page = parse_records(res["records"])
            more = bool(res.get("more")) and bool(page)
        log.info("order %s: caught up from %s to %s (%d pages)", self.id, best.peer, target, pages)

    def _wait_durable(self, number: int, timeout: float, generation: int) -> None:
        """Wait until `number` is durable; `generation` is `_disk_errors` when it was queued."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.machine.durable < number:
                if self._disk_errors != generation:
                    raise self._disk_error or unavailable("order log write failed")
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    raise unavailable(f"order log not durable up to {number} in time")
                self._changed.wait(left)

    def _recover_as_leader(self, epoch: int) -> None:
        """Catch up (promising our epoch to peers), lead, fence the catalog, reconcile."""
        started = time.monotonic()
        try:
            while True:
                self._recovery_note = "catching up from peers"
                try:
                    self.catch_up_from_peers(epoch)
                    break
                except BazaarError as err:
                    if err.code != "UNAVAILABLE" or not self._still_recovering(epoch):
                        raise
                    self._recovery_note = f"waiting for a majority: {err.message}"
                    if self._stop.wait(0.2):
                        return
            with self._lock:
                self._promised = True
                if self.machine.epoch != epoch or self.machine.role != rep.RECOVERING:
                    return
                self._perform(self.machine.start_leading(time.monotonic()))
            while not self._stop.is_set() and self._still_leading(epoch):
                try:
                    self._fence(epoch)
                    self.reconcile(epoch)
                    break
                except BazaarError as err:
                    if err.details.get("not_leader"):
                        return
                    self._recovery_note = f"catalog: {err.message}"
                    self._stop.wait(0.2)
            with self._lock:
                if self._still_leading_locked(epoch):
                    self._serving = True
                    self._changed.notify_all()
                    took = (time.monotonic() - started) * 1000
                    log.info("order %s leads epoch %s (recovered in %.0f ms)", self.id, epoch, took)
        except BazaarError as err:
            log.warning("order %s: recovery for epoch %s failed: %s", self.id, epoch, err)
            with self._lock:
                self._recovery_note = f"recovery failed: {err.message}"
                self._perform(self.machine.fenced(epoch))
        except Exception:
            log.exception("order %s: recovery for epoch %s crashed", self.id, epoch)

    def _still_recovering(self, epoch: int) -> bool:
        with self._lock:
            return self.machine.epoch == epoch and self.machine.role == rep.RECOVERING

    def _still_leading(self, epoch: int) -> bool:
        with self._lock:
            return self._still_leading_locked(epoch)

    def _still_leading_locked(self, epoch: int) -> bool:
        return self.machine.epoch == epoch and self.machine.role == rep.LEADER

    def _fence(self, epoch: int) -> None:
        try:
            res = self.catalog.call("fence", epoch=epoch, leader=self.id, idempotent=True)
        except BazaarError as err:
            raise unavailable(f"catalog fence failed: {err.message}") from None
        if isinstance(res, dict) and isinstance(res.get("epoch"), int) and res["epoch"] > epoch:
            with self._lock:
                self._perform(self.machine.fenced(res["epoch"]))
            raise rep.not_leader(None, res["epoch"], "the catalog is fenced by a newer epoch")

    def reconcile(self, epoch: int) -> int:
        """Commit an order for every catalog trade whose key is not in the log."""
        committed = 0
        after = self._compute_watermark()
        while True:
            try:
                res = self.catalog.call("trades_since", after=after, limit=1000, idempotent=True)
            except BazaarError as err:
                raise unavailable(f"catalog trades_since failed: {err.message}") from None
            trades = res.get("trades", [])
            waiters = []
            with self._lock:
                if not self._still_leading_locked(epoch):
                    raise rep.not_leader(self.machine.leader, self.machine.epoch)
                for t in trades:
                    key = t["key"]
                    if key in self._trading or self.machine.number_of(key) is not None:
                        continue
                    record, actions = self.machine.propose(
                        t["name"], t["type"], t["quantity"], key, t["seq"], time.monotonic()
                    )
                    waiters.append(self._waiter(record.number))
                    self._perform(actions)
                    committed += 1
            self._flush()
            for w in waiters:
                self._await(w)
            if not trades or not res.get("more", len(trades) >= 1000):
                break
            after = trades[-1]["seq"]
        if committed:
            log.warning("order %s: reconciled %d orphaned catalog trades", self.id, committed)
        return committed

    def _compute_watermark(self) -> int:
        """Highest catalog seq S such that trades 1..S all have durable records in our log.

        Computed from the log once per leadership (a follower's log may have
        been cut), then extended from there: while we lead, our log only grows.
        Records in flight do not count here (their keys are skipped anyway).
        """
        with self._lock:
            epoch = self.machine.epoch
        if self._watermark_epoch != epoch:
            self._watermark_epoch, self._trade_watermark = epoch, 0
        self._trade_watermark = self.log.trade_watermark(self._trade_watermark)
        return self._trade_watermark

    def _leader_loop(self) -> None:
        """While leading: reconcile orphaned trades every RECONCILE_EVERY seconds."""
        while not self._stop.wait(RECONCILE_EVERY):
            with self._lock:
                epoch, serving = self.machine.epoch, self._serving
            if not serving:
                continue
            try:
                self.reconcile(epoch)
            except BazaarError as err:
                log.info("order %s: reconcile: %s", self.id, err.message)
            except Exception:
                log.exception("order %s: reconcile crashed", self.id)

    # ---- orders -------------------------------------------------------------------
    def _waiter(self, number: int) -> Waiter:
        waiter = self._waiters.get(number)
        if waiter is None:
            waiter = self._waiters[number] = Waiter()
        return waiter

    def _await(self, waiter: Waiter) -> None:
        if not waiter.event.wait(budget(ACK_WAIT)):
            raise unavailable("order not committed in time (replication stalled)")
        if waiter.error is not None:
            raise waiter.error

    def _wait_serving(self) -> int:
        """The epoch we lead, once recovered; else UNAVAILABLE (not_leader when we are not)."""
        deadline = time.monotonic() + budget(READY_WAIT)
        with self._lock:
            while True:
                m = self.machine
                if m.role == rep.LEADER and self._serving:
                    return m.epoch
                if m.role == rep.FOLLOWER or self._stop.is_set():
                    raise rep.not_leader(self._known_leader(), m.epoch)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise unavailable(
                        f"order leader {self.id} is recovering ({self._recovery_note})",
                        leader=self.id,
                        epoch=m.epoch,
                    )
                self._changed.wait(left)

    def rpc_order(self, key, name, type, quantity):
        check_order_args(key, name, type, quantity)
        epoch = self._wait_serving()
        with self._lock:
            if not self.machine.has_majority() and self.machine.number_of(key) is None:
                # Refused before the catalog trades: nothing could commit it.
                raise unavailable(
                    f"order leader {self.id}: no majority of replicas answers",
                    leader=self.id,
                    epoch=epoch,
                    no_majority=True,
                )
            while key in self._trading:  # the same key in flight on another thread
                self._changed.wait(1.0)
            found = self._existing(key, name, type, quantity)
            if found is None:
                self._trading.add(key)
        if found is None:
            try:
                trade = self._trade(key, name, type, quantity, epoch)
                with self._lock:
                    found = self._existing(key, name, type, quantity)
                    if found is None:
                        record, actions = self.machine.propose(
                            name, type, quantity, key, trade.get("seq"), time.monotonic()
                        )
                        found = (record.number, self._waiter(record.number))
                        self._perform(actions)
                self._flush()
            finally:
                with self._lock:
                    self._trading.discard(key)
                    self._changed.notify_all()
        number, waiter = found
        if waiter is not None:
            self._await(waiter)
        return {"transaction_number": number}

    def _existing(self, key, name, kind, quantity) -> tuple[int, Waiter | None] | None:
        """Under the lock: (number, pending commit or None) of a key we already hold."""
        number = self.machine.number_of(key)
        if number is None:
            return None
        r = self.machine.get(number)
        if (r.name, r.type, r.quantity) != (name, kind, quantity):
            raise BazaarError(
                "ALREADY_EXISTS", f"key {key!r} was used for order {number}, a different order"
            )
        if number <= self.machine.commit:
            return number, None
        return number, self._waiter(number)

    def _trade(self, key, name, kind, quantity, epoch) -> dict:
        timeout = budget(CATALOG_TIMEOUT)
        if timeout < 0.05:
            raise unavailable("order: no time left to trade before the caller's deadline")
        try:
            result = self.catalog.call(
                "trade",
                key=key,
                name=name,
                type=kind,
                quantity=quantity,
                epoch=epoch,
                leader=self.id,  # the catalog refuses any other leader of this epoch
                timeout=timeout,
            )
        except BazaarError as err:
            if err.remote and err.code == "ABORTED":
                fenced_by = err.details.get("epoch")
                with self._lock:
                    if isinstance(fenced_by, int):
                        self._perform(self.machine.fenced(fenced_by))
                raise rep.not_leader(None, fenced_by or epoch, "fenced by the catalog") from None
            if not err.remote or err.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise unavailable(f"catalog unavailable: {err.message}") from None
            raise
        return result if isinstance(result, dict) else {}

    def rpc_get_order(self, number):
        if not wire.is_int(number):
            raise invalid("number must be an integer")
        record = self.log.get(number) if number >= 0 else None
        if record is None:
            raise not_found(f"no order number {number}")
        return record.public()

    # ---- election and replication -------------------------------------------------
    def rpc_set_leader(self, leader, epoch):
        if not wire.is_int(leader) or leader not in self.endpoints:
            raise invalid(f"leader must be one of {sorted(self.endpoints)}")
        if not wire.is_int(epoch) or epoch < 1:
            raise invalid("epoch must be an integer >= 1")
        with self._lock:
            broken = time.monotonic() - self._disk_error_at < DISK_COOLDOWN
            if leader == self.id and self._disk_error is not None and broken:
                # Refuse before accepting the epoch: the front end tries the next replica.
                raise unavailable(f"order {self.id} cannot lead: {self._disk_error.message}")
            self._accept_epoch(epoch, leader)
            was = (self.machine.role, self.machine.epoch)
            self._perform(self.machine.on_set_leader(leader, epoch))
            if self.machine.role == rep.RECOVERING and was != (rep.RECOVERING, epoch):
                self._serving = self._promised = False
                self._recovery_note = "starting recovery"
                self._spawn(lambda: self._recover_as_leader(epoch), f"recover{epoch}")
            last = self.machine.durable
        return {"leader": leader, "epoch": epoch, "last_number": last if last >= 0 else None}

    def rpc_replicate(self, epoch, leader, records, prev_number=None, prev_epoch=None):
        if not wire.is_int(epoch) or not wire.is_int(leader):
            raise invalid("epoch and leader must be integers")
        batch = parse_records(records)
        if prev_number is None:
            prev_number = batch[0].number - 1 if batch else -1
        with self._lock:
            if prev_epoch is None and prev_number >= 0:
                prev_epoch = self.machine.epoch_at(prev_number)
            self._accept_epoch(epoch, leader)
            msg = rep.Replicate(epoch, leader, prev_number, prev_epoch, tuple(batch))
            actions, reply = self.machine.on_replicate(msg)
            self._perform(actions)
            generation = self._disk_errors
        self._flush()
        if reply.ok:
            self._wait_durable(reply.matched, 2.0, generation)
        return reply._asdict()

    def rpc_catch_up(self, after, epoch=None, leader=None, limit=None):
        if not wire.is_int(after):
            raise invalid("after must be an integer")
        limit = CATCH_UP_LIMIT if not wire.is_int(limit) else max(1, min(limit, CATCH_UP_LIMIT))
        with self._lock:
            if epoch is not None:
                if not wire.is_int(epoch) or not wire.is_int(leader):
                    raise invalid("epoch and leader must be integers")
                try:
                    self._accept_epoch(epoch, leader)
                    self._perform(self.machine.on_promise(leader, epoch))
                    promised = True
                except BazaarError as err:
                    if err.code == "ABORTED":
                        raise
                    # Our disk cannot record the promise: share our log, but
                    # an unsaved promise is no vote.
                    log.warning("order %s: no promise to %s: %s", self.id, leader, err.message)
                    promised = False
                # Records still being written belong in the answer: the old
                # leader may count them as held here once they are durable.
                target, generation = self.machine.last_number, self._disk_errors
        if epoch is not None:
            self._flush()
            with contextlib.suppress(BazaarError):  # a disk error: answer what is durable
                self._wait_durable(target, budget(2.0), generation)
        with self._lock:
            durable = self.machine.durable
            # Records <= durable are read from the log: a page of at most
            # `limit` records and about CATCH_UP_BYTES; the caller asks again.
            records = (
                self.log.records_after(
                    max(after, -1), min(limit, durable - after), max_bytes=CATCH_UP_BYTES
                )
                if durable > after
                else []
            )
            runs = self.machine.epoch_runs(durable)
        return {
            "records": [r.to_wire() for r in records],
            "last_number": durable if durable >= 0 else None,
            "runs": runs,
            "more": bool(records) and records[-1].number < durable,
            "promised": epoch is not None and promised,
        }

    def _known_leader(self) -> int | None:
        """The leader of our epoch, or None when that is us but we do not lead.

        After a restart or a step-down we never lead again in the same epoch
        (records we streamed but did not persist could be renumbered), so we
        must not look like a leader to the front end: it then elects anew.
        """
        m = self.machine
        return None if m.leader == self.id and m.role == rep.FOLLOWER else m.leader

    def rpc_status(self):
        with self._lock:
            return self._status()

    def _status(self) -> dict:
        m = self.machine
        followers = {str(p): s for p, s in m.follower_status().items()}
        role = m.role if m.role != rep.LEADER or self._serving else rep.RECOVERING
        return {
            "id": self.id,
            "role": role,
            "leader": self._known_leader(),
            "epoch": m.epoch,
            "last_number": m.durable if m.durable >= 0 else None,
            "last_epoch": m.last_epoch() if m.durable >= 0 else None,
            "commit": m.commit if m.role == rep.LEADER else None,
            "majority": (
                m.has_majority()
                if m.role == rep.LEADER
                else self._promised
                if m.role == rep.RECOVERING
                else None
            ),
            "followers": followers,
            "disk_error": self._disk_error.message if self._disk_error else None,
        }


def run(config: Config, stop: threading.Event) -> None:
    """The CLI entry point: serve until `stop` is set."""
    replica = OrderReplica(config).start()
    metrics.watch("order", replica)
    try:
        stop.wait()
    finally:
        replica.stop()
