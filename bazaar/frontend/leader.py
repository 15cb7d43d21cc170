"""Order routing: which replica leads, elections, and invisible retries.

The front end is the single election authority (SPEC section 3, as in the seed).
`OrderRouter` owns:

- the current `(leader, epoch)`, replaced as one tuple so readers never see a
  leader with another leader's epoch;
- elections, one at a time (`_election_lock`): ask every replica's `status`
  in parallel; without answers from a majority nothing happens (no epoch is
  spent: no leader could commit anyway). A live leader that still serves the
  top epoch with a majority behind it is kept, so a slow call never deposes
  a healthy leader. Otherwise the candidate is the replica with the most
  up-to-date log (last record's epoch, then number), highest id first, a
  leader that just lacked a majority last; it gets `set_leader` with an
  epoch above every epoch seen, then the others are told. The leader itself
  serves only once a majority promised its epoch (bazaar.order.service);
- back-off: elections that spend an epoch follow each other only after a
  randomised, growing pause (`Backoff`), so a leader that keeps failing
  never burns thousands of epochs; a round that finds no majority spends
  nothing and is paced by its own status calls, so the first election
  after a majority is back is not held up; epochs stay in 1..2^53-1;
- `order` / `get_order` with failover: a local failure (timeout, unreachable),
  a `not_leader` answer, ABORTED (fenced) or a leader without a majority
  leads to an election and a retry with the same order key, so the client
  never sees it and nothing trades twice; any other remote UNAVAILABLE (the
  catalog is down, the leader is recovering) is retried on the same leader
  with backoff. All of it within one overall deadline, then the last error
  (503/504) goes out;
- a monitor thread that elects when no leader is known, notices a leader that
  stopped answering or lost its majority (a leader still recovering gets a
  bounded grace first: `election.without_majority`), and tells replicas
  that missed a `set_leader` (restarted, were down during the election) who
  leads.

It never decides HTTP statuses: it raises `BazaarError` and the app maps it.
The election's pure rules (which replica to keep, whom to appoint, the
back-off) are in `bazaar.frontend.election`; this module asks and acts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from bazaar.errors import BazaarError
from bazaar.frontend.election import (
    Backoff,
    answered_epoch,
    candidates,
    serving_leader,
    without_majority,
)
from bazaar.rpc import Client
from bazaar.security import Keys, replica_role
from bazaar.wire import MAX_EPOCH

log = logging.getLogger(__name__)

SUSPECT_FOR = 10.0  # seconds a leader that lost its majority is a candidate of last resort


class OrderRouter:
    def __init__(
        self,
        replicas: dict[int, str],
        *,
        deadline: float = 10.0,
        call_timeout: float = 2.0,
        status_timeout: float = 1.0,
        set_leader_timeout: float = 5.0,
        monitor_interval: float = 1.0,
        keys: Keys | None = None,
    ):
        self.deadline = deadline
        self.call_timeout = call_timeout
        self.status_timeout = status_timeout
        self.set_leader_timeout = set_leader_timeout
        self.monitor_interval = monitor_interval
        self.clients = {
            rid: Client(ep, timeout=call_timeout, keys=keys, server_role=replica_role(rid))
            for rid, ep in sorted(replicas.items())
        }
        self._current: tuple[int | None, int] = (None, 0)
        self._election_lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._leader_misses = 0
        self._suspects: dict[int, float] = {}  # lost its majority as leader: rid -> until
        self.backoff = Backoff()
        self.quorum = len(self.clients) // 2 + 1
        self.elections = 0

    # ---- state ----------------------------------------------------------
    @property
    def leader(self) -> int | None:
        return self._current[0]

    @property
    def epoch(self) -> int:
        return self._current[1]

    # ---- lifecycle ------------------------------------------------------
    def start(self) -> OrderRouter:
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="leader-monitor", daemon=True
        )
        self._monitor.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            # It may be waiting on a status call; it is a daemon and checks
            # `_stop` between rounds, so shutdown does not wait for that call.
            self._monitor.join(0.1)
        for client in self.clients.values():
            client.close()

    # ---- client-facing calls -------------------------------------------
    def order(self, key: str, name: str, type: str, quantity: int) -> dict[str, Any]:
        args = {"key": key, "name": name, "type": type, "quantity": quantity}
        return self._call_leader("order", args)

    def get_order(self, number: int) -> dict[str, Any]:
        return self._call_leader("get_order", {"number": number})

    def _call_leader(self, method: str, args: dict[str, Any]) -> Any:
        deadline = time.monotonic() + self.deadline
        backoff = 0.05
        last: BazaarError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                raise _give_up(last, method)
            current = self._current
            leader, _ = current
            if leader is None:
                try:
                    self.elect(current, deadline)
                except BazaarError as err:
                    last = err
                    backoff = _sleep(backoff, deadline)
                continue
            try:
                # retry=False: a transport failure goes straight to an election
                # below instead of being retried on a leader that may be dead.
                # The leader bounds its own waits by this call's deadline
                # (rpc.time_left), so a healthy one answers within it.
                result = self.clients[leader].call_args(
                    method, args, timeout=min(self.call_timeout, remaining), retry=False
                )
            except BazaarError as err:
                last = err
                no_majority = err.remote and err.details.get("no_majority")
                if no_majority:
                    self._suspect(leader)
                if (
                    not err.remote
                    or err.code == "ABORTED"
                    or err.details.get("not_leader")
                    or no_majority
                ):
                    log.info("%s on replica %s failed (%s): electing", method, leader, err)
                    try:
                        if self.elect(current, deadline) == current:
                            # Same leader kept (alive, e.g. recovering): give it a moment.
                            backoff = _sleep(backoff, deadline)
                    except BazaarError as elect_err:
                        last = elect_err
                        backoff = _sleep(backoff, deadline)
                elif err.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"):
                    backoff = _sleep(backoff, deadline)  # e.g. catalog down: same leader
                else:
                    raise
            else:
                if method == "order":
                    self.backoff.reset()  # the leader serves: the next failure elects at once
                return result

    def _suspect(self, rid: int) -> None:
        self._suspects[rid] = time.monotonic() + SUSPECT_FOR

    def _suspected(self, rid: int) -> bool:
        return self._suspects.get(rid, float("-inf")) > time.monotonic()

    # ---- election -------------------------------------------------------
    def statuses(self, timeout: float | None = None) -> dict[int, dict[str, Any] | None]:
        """Every replica's `status` in parallel; None for those that did not answer."""
        timeout = self.status_timeout if timeout is None else timeout

        def one(rid: int) -> dict[str, Any] | None:
            try:
                # One attempt: a dead replica then costs the connect timeout
                # (a fraction of a second), not the whole status timeout.
                result = self.clients[rid].call("status", timeout=timeout, retry=False)
            except BazaarError:
                return None
            return result if isinstance(result, dict) else None

        return in_parallel(one, self.clients, timeout + 1.0)

    def elect(
        self, observed: tuple[int | None, int], deadline: float | None = None
    ) -> tuple[int | None, int]:
        """Elect a leader unless someone already replaced `observed`; return the result.

        Waits for a running election, and for the back-off, at most until
        `deadline` (monotonic). Raises UNAVAILABLE when no majority of
        replicas answers or the wait ran out.
        """
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._election_lock.acquire(timeout=wait):
            raise BazaarError("UNAVAILABLE", "leader election still in progress")
        try:
            if self._current != observed:
                return self._current
            pause = self.backoff.wait(time.monotonic())
            if pause > 0:
                if deadline is not None and time.monotonic() + pause > deadline:
                    raise BazaarError("UNAVAILABLE", "leader election backing off after failures")
                if self._stop.wait(pause):
                    raise BazaarError("UNAVAILABLE", "front end is shutting down")
            self.elections += 1
            return self._elect_locked()
        finally:
            self._election_lock.release()

    def _elect_locked(self) -> tuple[int, int]:
        for _round in range(3):
            statuses = self.statuses()
            live = {rid: st for rid, st in statuses.items() if st is not None}
            if len(live) < self.quorum:
                # No epoch spent: without a majority no leader could commit.
                self._current = (None, self.epoch)
                raise BazaarError(
                    "UNAVAILABLE",
                    f"only {len(live)} of {len(self.clients)} order replicas answer: no majority",
                )
            top_epoch = max(
                [answered_epoch(st.get("epoch")) for st in live.values()] + [self.epoch]
            )
            kept = serving_leader(live, top_epoch, self._suspected)
            if kept is not None:
                self._current = (kept, top_epoch)
                log.info("replica %s leads at epoch %s: kept", kept, top_epoch)
                self._inform_others(kept, top_epoch, live)
                return self._current
            if top_epoch >= MAX_EPOCH:
                raise BazaarError("UNAVAILABLE", "order epochs exhausted (2^53-1)")
            # Only a round that spends an epoch grows the back-off: one that found
            # no majority (or kept a leader) spent nothing, and pacing it would
            # only delay the election once the majority is back (SPEC: orders
            # within 1 s of that).
            self.backoff.started(time.monotonic())
            result = self._appoint(candidates(live, self._suspected), top_epoch + 1)
            if result is None:
                continue
            leader, epoch = result
            self._current = (leader, epoch)
            log.info("elected replica %s at epoch %s", leader, epoch)
            # Only the replicas that answered just now: the monitor tells
            # the others once they are back, so a dead one costs nothing here.
            granted, higher = self._inform_others(leader, epoch, live)
            if higher is None:
                if granted < self.quorum:
                    log.warning("epoch %s granted by %s replicas only", epoch, granted)
                return self._current
            # Someone knew a higher epoch: run the election again above it.
        raise BazaarError("UNAVAILABLE", "leader election did not converge")

    def _appoint(self, candidates: list[int], epoch: int) -> tuple[int, int] | None:
        """Send set_leader to the first candidate that accepts; None if none does."""
        for rid in candidates:
            for _attempt in range(3):
                if epoch > MAX_EPOCH:
                    return None
                try:
                    self.clients[rid].call(
                        "set_leader", leader=rid, epoch=epoch, timeout=self.set_leader_timeout
                    )
                    return rid, epoch
                except BazaarError as err:
                    if err.remote and err.code == "ABORTED":
                        epoch = max(epoch, answered_epoch(err.details.get("epoch"))) + 1
                        continue
                    log.warning("set_leader to replica %s failed: %s", rid, err)
                    epoch += 1  # it may have taken `epoch` late: never reuse it
                    break
        return None

    def _inform_others(
        self, leader: int, epoch: int, statuses: dict[int, dict[str, Any]]
    ) -> tuple[int, int | None]:
        """Tell the replicas in `statuses` other than `leader` who leads.

        Returns (replicas now holding (leader, epoch), the leader counted;
        the highest epoch one of them knows above `epoch`, or None).
        """
        holding = [
            rid
            for rid, st in statuses.items()
            if rid != leader and (st.get("leader"), st.get("epoch")) == (leader, epoch)
        ]
        targets = [rid for rid in statuses if rid != leader and rid not in holding]

        def one(rid: int) -> bool | int:
            try:
                self.clients[rid].call(
                    "set_leader", leader=leader, epoch=epoch, timeout=self.status_timeout * 2
                )
                return True
            except BazaarError as err:
                if err.remote and err.code == "ABORTED":
                    return answered_epoch(err.details.get("epoch"))
            return False

        answers = in_parallel(one, targets, self.status_timeout * 2 + 1.0).values()
        granted = 1 + len(holding) + sum(1 for a in answers if a is True)
        higher = [a for a in answers if a is not True and a is not False and a and a >= epoch]
        if higher:
            # Raise our epoch above theirs; the caller re-runs the election.
            self._current = (self.leader, max(higher))
            return granted, max(higher)
        return granted, None

    # ---- monitor --------------------------------------------------------
    def _monitor_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:
                log.exception("leader monitor")
            self._stop.wait(self.monitor_interval)

    def check(self) -> None:
        """One monitor round: elect if needed, fix replicas that missed set_leader."""
        current = self._current
        leader, epoch = current
        if leader is None:
            try:
                self.elect(current)
            except BazaarError as err:
                log.debug("no leader yet: %s", err)
            return
        statuses = self.statuses()
        st = statuses.get(leader)
        lost_majority = (
            st is not None
            and st.get("role") in ("leader", "recovering")
            and without_majority(st)  # a recovering leader gets its grace first
        )
        if (
            st is None
            or st.get("leader") != leader
            or answered_epoch(st.get("epoch")) != epoch
            or lost_majority
        ):
            self._leader_misses += 1
            if self._leader_misses >= 2:
                self._leader_misses = 0
                if lost_majority:
                    self._suspect(leader)
                log.info("leader %s not serving as leader: electing", leader)
                try:
                    self.elect(current)
                except BazaarError as err:
                    log.warning("election failed: %s", err)
            return
        self._leader_misses = 0
        if any(s is not None and answered_epoch(s.get("epoch")) > epoch for s in statuses.values()):
            with contextlib.suppress(BazaarError):
                self.elect(current)
            return
        live = {rid: s for rid, s in statuses.items() if s is not None}
        with self._election_lock:
            if self._current == current:
                self._inform_others(leader, epoch, live)


def in_parallel(func: Callable[[Any], Any], items: Iterable[Any], timeout: float) -> dict[Any, Any]:
    """`{item: func(item)}` computed on daemon threads; None for any not done in `timeout`.

    Daemon threads, not an executor: a call still waiting on a dead peer must
    never hold up the process exit (SIGTERM stops the front end at once).
    """
    results: dict[Any, Any] = {}

    def run(item: Any) -> None:
        try:
            results[item] = func(item)
        except Exception:
            log.exception("parallel call failed")

    threads = [threading.Thread(target=run, args=(item,), daemon=True) for item in items]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return {item: results.get(item) for item in items} if threads else {}


def _sleep(backoff: float, deadline: float) -> float:
    time.sleep(max(0.0, min(backoff, deadline - time.monotonic())))
    return min(backoff * 2, 0.5)


def _give_up(last: BazaarError | None, method: str) -> BazaarError:
    if last is None:
        return BazaarError("UNAVAILABLE", f"no order replica could serve {method} in time")
    if last.code in ("DEADLINE_EXCEEDED", "UNAVAILABLE"):
        return BazaarError(last.code, f"order service: {last.message}")
    return last
