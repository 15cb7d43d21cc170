"""Group commit and commit waits of an order replica (a part of `OrderReplica`).

Owns the write path: the machine's `Persist`/`Truncate` actions queue in
`_writes`; the first thread that finds writes queued writes everyone's in
one transaction (one fsync, and a re-stamp's cut and append land together),
then tells the machine what is durable. A failed write is a disk error: the
machine forgets what was not written. Also the waits on outcomes: a pending
order's `Waiter`, and `budget`, how long a wait may last inside an RPC.
Never decides anything about replication: `replication.Replica` does.
"""

from __future__ import annotations

import logging
import threading
import time

from bazaar import metrics, rpc
from bazaar.errors import BazaarError, unavailable
from bazaar.order import replication as rep

log = logging.getLogger("bazaar.order.service")

REPLY_MARGIN = 0.15  # an `order` answers this long before its caller's deadline
ACK_WAIT = 10.0  # how long an order waits for its commit
WRITER_SAFETY_NET = 0.25  # seconds between the writer thread's checks


def budget(default: float) -> float:
    """How long an `order` may still wait: `default`, cut to answer before the caller gives up.

    Timeouts nest: the front end's attempt outlasts everything a healthy
    leader may spend on it, so a slow catalog or commit comes back as an
    UNAVAILABLE reply (retried on the same leader), never as a silence that
    would get a healthy leader voted out.
    """
    return max(0.0, rpc.time_left(default + REPLY_MARGIN) - REPLY_MARGIN)


class Waiter:
    """One committed-or-not outcome that order threads wait for.

    A lock held from the start and released once by `set`, not an Event: an
    Event is a Condition with its own lock, twice the work on both sides of
    the one hand-off every order makes. Each waiter that gets through
    releases it again for the next (the same key may be awaited twice).
    """

    __slots__ = ("_done", "error")

    def __init__(self):
        self._done = threading.Lock()
        self._done.acquire()
        self.error: BazaarError | None = None

    def set(self) -> None:
        """Called once, by `_resolve` (which first pops it from `_waiters`)."""
        self._done.release()

    def wait(self, timeout: float) -> bool:
        if not self._done.acquire(timeout=max(timeout, 0.0)):
            return False
        self._done.release()
        return True


class GroupCommit:
    """Mixin of `OrderReplica`: group commit, durability and commit waits."""

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
        """A safety net: flushes writes queued by paths that did not flush themselves.

        Every path that queues writes flushes them itself; this catches what
        an exception left behind, so it runs rarely (idle CPU).
        """
        while not self._stop.wait(WRITER_SAFETY_NET):
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

    def _waiter(self, number: int) -> Waiter:
        waiter = self._waiters.get(number)
        if waiter is None:
            waiter = self._waiters[number] = Waiter()
        return waiter

    def _await(self, waiter: Waiter) -> None:
        if not waiter.wait(budget(ACK_WAIT)):
            raise unavailable("order not committed in time (replication stalled)")
        if waiter.error is not None:
            raise waiter.error
