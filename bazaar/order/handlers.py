"""The RPC methods of an order replica (a part of `OrderReplica`).

Owns the arguments and answers of `order`, `get_order`, `set_leader`,
`replicate`, `catch_up` and `status`: checks their input (a malformed
request gets INVALID_ARGUMENT, never a crash), hands them to the machine
under the replica's lock and waits, within the caller's deadline, for what
they need (a recovering leader, the catalog's trade, a commit).
"""

from __future__ import annotations

import contextlib
import logging
import time

from bazaar import rpc, rules, security, wire
from bazaar.errors import BazaarError, invalid, not_found, unavailable
from bazaar.order import replication as rep
from bazaar.order.commit import Waiter, budget
from bazaar.order.recovering import LEAD
from bazaar.order.recovery import parse_records

log = logging.getLogger("bazaar.order.service")

READY_WAIT = 2.0  # how long an order waits for a recovering leader
CATALOG_TIMEOUT = 2.0
CATCH_UP_LIMIT = 4000  # records per catch_up reply
CATCH_UP_BYTES = 768 << 10  # and about this much: under wire.MAX_MESSAGE_BYTES (1 MiB)
DISK_COOLDOWN = 5.0  # a replica whose disk failed this recently refuses to lead


def method_roles(replica_id: int, replicas) -> dict[str, frozenset[str]]:
    """Who may call what on replica `replica_id` (SPEC section 2; roles are ZAP User-Ids)."""
    peers = frozenset(security.replica_role(r) for r in replicas if r != replica_id)
    everyone = frozenset({"frontend", "client"}) | {security.replica_role(r) for r in replicas}
    return {
        "order": frozenset({"frontend"}),
        "set_leader": frozenset({"frontend"}),
        "get_order": everyone,
        "status": everyone,
        "replicate": peers,
        "catch_up": peers,
    }


def check_epoch(epoch) -> None:
    if not wire.is_epoch(epoch):
        raise invalid(f"epoch must be an integer from 1 to {wire.MAX_EPOCH}")


def check_leader(leader, replicas) -> None:
    """`leader` names a replica, and a replica's key speaks only for itself."""
    if not wire.is_int(leader) or leader not in replicas:
        raise invalid(f"leader must be one of {sorted(replicas)}")
    role = rpc.caller()
    if role is not None and role != security.replica_role(leader):
        raise BazaarError("PERMISSION_DENIED", f"{role} cannot speak for order{leader}")


class Handlers:
    """Mixin of `OrderReplica`: the RPC methods."""

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
                    note = self._recovery.note if self._recovery else "recovering"
                    raise unavailable(
                        f"order leader {self.id} is recovering ({note})",
                        leader=self.id,
                        epoch=m.epoch,
                    )
                self._changed.wait(left)

    def rpc_order(self, key, name, type, quantity):
        rules.check_order(key, name, type, quantity)
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

    def rpc_set_leader(self, leader, epoch):
        if not wire.is_int(leader) or leader not in self.endpoints:
            raise invalid(f"leader must be one of {sorted(self.endpoints)}")
        check_epoch(epoch)
        with self._lock:
            broken = time.monotonic() - self._disk_error_at < DISK_COOLDOWN
            if leader == self.id and self._disk_error is not None and broken:
                # Refuse before accepting the epoch: the front end tries the next replica.
                raise unavailable(f"order {self.id} cannot lead: {self._disk_error.message}")
            was = (self.machine.role, self.machine.epoch)
            self._perform(self.machine.on_set_leader(leader, epoch))  # saves it first
            if self.machine.role == rep.RECOVERING and was != (rep.RECOVERING, epoch):
                self._serving = False
                run = self._recovery = self._recovering(LEAD, epoch)
                self._spawn(lambda: self._recover_as_leader(run), f"recover{epoch}")
            last = self.machine.durable
        return {"leader": leader, "epoch": epoch, "last_number": last if last >= 0 else None}

    def rpc_replicate(self, epoch, leader, records, prev_number=None, prev_epoch=None):
        check_epoch(epoch)
        check_leader(leader, self.endpoints)
        batch = parse_records(records)
        if prev_number is None:
            prev_number = batch[0].number - 1 if batch else -1
        with self._lock:
            if prev_epoch is None and prev_number >= 0:
                prev_epoch = self.machine.epoch_at(prev_number)
            msg = rep.Replicate(epoch, leader, prev_number, prev_epoch, tuple(batch))
            actions, reply = self.machine.on_replicate(msg)
            if reply is None:  # a new epoch: saved (and accepted) first, then the batch
                self._perform(actions)
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
                check_epoch(epoch)
                check_leader(leader, self.endpoints)
                try:
                    self._perform(self.machine.on_promise(leader, epoch))  # saves it first
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
                else self._recovery.promised
                if m.role == rep.RECOVERING and self._recovery is not None
                else None
            ),
            "followers": followers,
            "disk_error": self._disk_error.message if self._disk_error else None,
            # How long our latest election's recovery has run (the front end's grace).
            "recovering_for": (
                round(max(0.0, time.monotonic() - self._recovery.started), 3)
                if role == rep.RECOVERING and self._recovery is not None
                else None
            ),
        }
