"""Catch-up and leader recovery of an order replica (a part of `OrderReplica`).

Owns what a replica does before it serves: a (re)started replica adopts the
most up-to-date log among its peers'; an elected one asks every peer for a
promise of its epoch, needs a majority of them (itself counted), adopts the
best log among them, leads (the machine re-stamps its last record), fences
the catalog with (epoch, leader) and reconciles orphaned catalog trades
(traded, never recorded) under new numbers; while leading it reconciles
every RECONCILE_EVERY seconds. The choices (which log, from where) are the
machine's (`replication.plan_catch_up`); this module moves the records.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from bazaar.errors import BazaarError, invalid, unavailable
from bazaar.order import replication as rep
from bazaar.order.record import Record

log = logging.getLogger("bazaar.order.service")

RECONCILE_EVERY = 1.0
PEER_TIMEOUT = 1.5  # a live peer answers in ms; an unreachable one fails in CONNECT_TIMEOUT


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


class Recovery:
    """Mixin of `OrderReplica`: catch-up, promises, fencing and reconciliation."""

    def _ask_peers(self, after: int, epoch: int | None) -> list[rep.PeerLog]:
        args = {"after": after}
        if epoch is not None:
            args.update(epoch=epoch, leader=self.id)

        def ask(peer):
            try:
                # One attempt: a peer that is not connected fails within the
                # client's connect timeout (0.3 s), so a dead peer costs the
                # failover no more; the recovery loop asks again if it must.
                res = self.peer_clients[peer].call_args(
                    "catch_up", args, timeout=PEER_TIMEOUT, retry=False
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
        plan = rep.plan_catch_up if epoch is None else rep.plan_recovery
        with self._lock:
            truncate, best = plan(self.machine, answers)
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
            self._flush()  # the re-stamp: it commits our first records
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

        The log keeps it (a lower bound that truncations lower and that is
        saved now and then), so this costs a few indexed counts, whatever the
        history. Records in flight do not count here (their keys are skipped
        anyway).
        """
        return self.log.trade_watermark()

    def _leader_loop(self) -> None:
        """While leading: reconcile orphaned trades every RECONCILE_EVERY seconds.

        A follower keeps its log's trade watermark current meanwhile (a few
        indexed counts per second), so the reconciliation of its first
        leadership does not count from zero through a long history.
        """
        while not self._stop.wait(RECONCILE_EVERY):
            with self._lock:
                epoch, serving = self.machine.epoch, self._serving
            if not serving:
                with contextlib.suppress(BazaarError):  # a disk error: status shows it
                    self.log.trade_watermark()
                continue
            try:
                self.reconcile(epoch)
            except BazaarError as err:
                log.info("order %s: reconcile: %s", self.id, err.message)
            except Exception:
                log.exception("order %s: reconcile crashed", self.id)
