"""Recovery of an order replica, the I/O side (a part of `OrderReplica`).

Drives `bazaar.order.recovering.Recovering`, the pure machine that owns the
sequencing (catch-up from peers, promises of an epoch, adopting the best
log, leading, fencing the catalog, reconciling orphaned trades): this module
sends the RPCs its actions ask for (`catch_up` to peers, the catalog's
`fence` and `trades_since`), feeds the answers back under the replica's
lock, performs the replica's own actions and ticks the machine's clock. A
(re)started replica runs it in `catch_up` mode before it serves, an elected
one in `lead` mode (on a thread of its own), a serving leader in
`reconcile` mode every RECONCILE_EVERY seconds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from bazaar.errors import BazaarError, invalid
from bazaar.order import recovering as rec
from bazaar.order import replication as rep
from bazaar.order.record import Record

log = logging.getLogger("bazaar.order.service")

RECONCILE_EVERY = 1.0
PEER_TIMEOUT = 1.5  # a live peer answers in ms; an unreachable one fails in CONNECT_TIMEOUT
IDLE_WAIT = 0.25  # the driver re-checks this often even when nothing woke it


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


def peer_log(peer: int, res) -> rep.PeerLog:
    """A `catch_up` answer as the machine reads it."""
    if not isinstance(res, dict):
        raise invalid("catch_up answer must be a map")
    try:
        last = res["last_number"]
        return rep.PeerLog(
            peer,
            -1 if last is None else last,
            res["runs"],
            parse_records(res["records"]),
            bool(res.get("more")),
            res.get("promised") is True,
        )
    except (KeyError, TypeError) as exc:
        raise invalid(f"bad catch_up answer: {exc}") from None


class Recovery:
    """Mixin of `OrderReplica`: runs `Recovering` machines and carries out their actions."""

    def _recovering(self, mode: str, epoch: int | None = None) -> rec.Recovering:
        # A peer's answer is awaited a little longer than the call itself may take.
        return rec.Recovering(self.machine, mode, epoch, ask_timeout=PEER_TIMEOUT + 0.5)

    def catch_up_from_peers(self) -> None:
        """Start-up: adopt the most up-to-date log among ours and our peers' (pages).

        A peer that dies in the middle of it (or our disk failing) ends it:
        we then serve with what we have, like any lagging follower; the
        leader's stream, or our own recovery if we are elected, brings the rest.
        """
        run = self._run_recovery(self._recovering(rec.CATCH_UP))
        if run.error is not None:
            log.warning("order %s: start-up catch-up incomplete: %s", self.id, run.error.message)
        elif run.adopted:
            durable, pages = self.machine.durable, run.adopted
            log.info("order %s: caught up to %s (%d pages)", self.id, durable, pages)

    def _recover_as_leader(self, run: rec.Recovering) -> None:
        """Promises, best log, lead, fence, reconcile, serve (see `recovering`)."""
        started, epoch = time.monotonic(), run.epoch
        try:
            self._run_recovery(run)
        except Exception:
            log.exception("order %s: recovery for epoch %s crashed", self.id, epoch)
        if run.error is not None or not run.finished:
            why = run.error.message if run.error is not None else "stopped"
            log.warning("order %s: recovery for epoch %s ended: %s", self.id, epoch, why)
            with self._lock:  # never left recovering for good: the front end elects anew
                self._perform(self.machine.fenced(epoch))
            return
        if run.reconciled:
            log.warning("order %s: reconciled %d orphaned catalog trades", self.id, run.reconciled)
        took = (time.monotonic() - started) * 1000
        log.info("order %s leads epoch %s (recovered in %.0f ms)", self.id, epoch, took)

    def _run_recovery(
        self, run: rec.Recovering, pool: ThreadPoolExecutor | None = None
    ) -> rec.Recovering:
        """Drive `run` until it finishes (or the replica stops); blocking, on this thread.

        Its RPCs run on `pool`, or on a pool of its own that goes with it.
        """
        own = pool is None
        if own:
            pool = self._request_pool("rec")
        try:
            with self._lock:
                self._carry_out(run, run.start(time.monotonic()), pool)
            while True:
                self._flush()
                with self._lock:
                    if run.finished or self._stop.is_set():
                        return run
                    self._carry_out(run, run.tick(time.monotonic()), pool)
                    if not run.finished and not (self._writes and not self._flushing):
                        # Woken by any change (durable, committed, an answer fed).
                        wake = min(run.wake_at(), time.monotonic() + IDLE_WAIT)
                        self._changed.wait(max(0.0, wake - time.monotonic()))
        finally:
            if own:
                pool.shutdown(wait=False, cancel_futures=True)

    def _request_pool(self, name: str) -> ThreadPoolExecutor:
        # A thread per peer and one for the catalog: a run's requests never wait for a thread.
        return ThreadPoolExecutor(len(self.peers) + 1, thread_name_prefix=f"order{self.id}-{name}")

    def _carry_out(self, run: rec.Recovering, actions: list, pool) -> None:
        """Under the lock: the machine's requests go to the pool, the replica's are performed."""
        for action in actions:
            if isinstance(action, rec.AskPeer | rec.FetchPage | rec.Fence | rec.FetchTrades):
                pool.submit(self._request, run, action, pool)
            elif isinstance(action, rec.Serve):
                if self.machine.role == rep.LEADER and self.machine.epoch == action.epoch:
                    self._serving = True  # orders waiting in _wait_serving go ahead
            else:
                self._perform([action])
        self._changed.notify_all()

    def _request(self, run: rec.Recovering, action, pool) -> None:
        """On a pool thread: one RPC of the machine's, its answer fed back."""
        try:
            feed = self._call_for(run, action)
        except Exception:  # a bug here must not leave the run waiting for its timeout
            log.exception("order %s: recovery request %s crashed", self.id, action)
            return
        with self._lock:
            if not run.finished:
                self._carry_out(run, feed(time.monotonic()), pool)
        self._flush()

    def _call_for(self, run: rec.Recovering, action):
        """Make the call `action` asks for; returns `feed(now)`, the answer as a machine event."""
        if isinstance(action, rec.AskPeer):
            args = {"after": action.after}
            if action.epoch is not None:
                args.update(epoch=action.epoch, leader=self.id)
            try:
                # One attempt: a peer that is not connected fails within the
                # client's connect timeout (0.3 s), so a dead peer costs the
                # failover no more; the machine asks again if it must.
                res = self.peer_clients[action.peer].call_args(
                    "catch_up", args, timeout=PEER_TIMEOUT, retry=False
                )
                answer = peer_log(action.peer, res)
            except BazaarError as err:
                log.info("order %s: catch_up from %s failed: %s", self.id, action.peer, err.message)
                answer = err
            return lambda now: run.on_answer(action.round, action.peer, answer, now)
        if isinstance(action, rec.FetchPage):
            try:
                res = self.peer_clients[action.peer].call(
                    "catch_up", after=action.after, timeout=PEER_TIMEOUT * 3, idempotent=True
                )
                page = peer_log(action.peer, res)
                records, more = page.records, page.more
            except BazaarError as err:
                records, more = err, False
            return lambda now: run.on_page(action.round, records, more, now)
        if isinstance(action, rec.Fence):
            try:
                answer = self.catalog.call(
                    "fence", epoch=action.epoch, leader=action.leader, idempotent=True
                )
            except BazaarError as err:
                answer = err
            return lambda now: run.on_fence(action.round, answer, now)
        after = action.after
        try:
            if after is None:  # from the log's watermark: a few indexed counts
                after = self.log.trade_watermark()
            res = self.catalog.call(
                "trades_since", after=after, limit=action.limit, idempotent=True
            )
            trades = [rec.Trade.from_wire(t) for t in res.get("trades", [])]
            more = bool(res.get("more", len(trades) >= action.limit))
        except BazaarError as err:
            trades, more = err, False
        except (AttributeError, KeyError, TypeError) as exc:
            trades, more = invalid(f"bad trades_since answer: {exc}"), False

        def feed(now):
            return run.on_trades(action.round, trades, more, now, busy=frozenset(self._trading))

        return feed

    def _leader_loop(self) -> None:
        """While leading: reconcile orphaned trades every RECONCILE_EVERY seconds.

        A follower keeps its log's trade watermark current meanwhile (a few
        indexed counts per second), so the reconciliation of its first
        leadership does not count from zero through a long history.
        """
        # One pool for all the reconcile runs: a pool per run started (and
        # dropped) a thread every second for as long as the replica leads.
        # Runs follow one another on this thread, and a run's requests end
        # within their timeouts, so a run rarely waits for a thread freed by
        # the previous one.
        pool = self._request_pool("reconcile")
        try:
            self._reconcile_every_second(pool)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _reconcile_every_second(self, pool: ThreadPoolExecutor) -> None:
        while not self._stop.wait(RECONCILE_EVERY):
            with self._lock:
                epoch, serving = self.machine.epoch, self._serving
            if not serving:
                with contextlib.suppress(BazaarError):  # a disk error: status shows it
                    self.log.trade_watermark()
                continue
            try:
                run = self._run_recovery(self._recovering(rec.RECONCILE, epoch), pool)
            except Exception:
                log.exception("order %s: reconcile crashed", self.id)
                continue
            if run.error is not None:
                log.info("order %s: reconcile: %s", self.id, run.error.message)
            elif run.reconciled:
                log.warning(
                    "order %s: reconciled %d orphaned catalog trades", self.id, run.reconciled
                )
