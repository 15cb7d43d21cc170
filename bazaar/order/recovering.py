"""Recovery of an order replica as a pure machine (answers and `now` in, actions out).

Owns the sequencing of what a replica does before it serves, and of the
reconciliation it repeats while it leads, as a sans-I/O machine in the
manner of `bazaar.order.replication` (and h11): it never touches a socket,
a file, a thread or a clock. `bazaar.order.recovery` (the service) and
`tests/sim/world.py` (the simulation) both drive it, so the simulation runs
the very sequencing the service runs.

One `Recovering` is one run, in one of three modes:

- `catch_up` (a (re)started replica, before it serves): ask every peer for
  its log (`AskPeer`, no epoch), adopt the most up-to-date one
  (`plan_catch_up`), page by page (`FetchPage`), each page durable before
  the next is asked for; any failure ends the run (the replica then serves
  with what it has, like any lagging follower);
- `lead` (an elected replica): ask every peer for a promise of the epoch
  (`AskPeer` with the epoch); once a majority (itself counted) promised,
  adopt the best log among the promisers' (`plan_recovery`), lead
  (`Replica.start_leading`: the re-stamp), fence the catalog (`Fence`),
  reconcile orphaned trades (`FetchTrades`, then a proposal per trade whose
  key the log lacks, each committed), then `Serve`. Without a majority of
  promises, or on a failed page, it asks again after `retry`; on a catalog
  failure it fences again after `retry`. It stops as soon as the replica no
  longer recovers (or leads) this epoch;
- `reconcile` (a serving leader, every second): the reconciliation alone.

The replica's own actions (`Persist`, `Truncate`, `Send`, `Acknowledge`,
`Abort`, ...) come out mixed with the machine's and are performed as always.
The machine reads the replica's positions (`durable`, `commit`, `role`) on
each call; the driver calls `tick(now)` when anything changed or
`wake_at()` has come.

Invariants
- Requests carry the run's `round`; an answer to an older round is ignored.
- A leader leads only after a majority of promises of its epoch and after
  adopting the best log among them (so it holds every acknowledged record),
  and serves only after the catalog's fence holds its (epoch, leader) and
  every orphaned trade found is committed.
- Every wait is bounded (`ask_timeout`, `wait_timeout`): a lost answer costs
  a retry, never a stuck recovery.
"""

from __future__ import annotations

from typing import NamedTuple

from bazaar.errors import BazaarError
from bazaar.order.catch_up import PeerLog, plan_catch_up, plan_recovery
from bazaar.order.messages import FOLLOWER, LEADER, RECOVERING, not_leader
from bazaar.order.record import Record

CATCH_UP, LEAD, RECONCILE = "catch_up", "lead", "reconcile"
RETRY = 0.2  # seconds between attempts of a leader still recovering
ASK_TIMEOUT = 1.5  # a live peer answers in ms; an unreachable one fails in the connect timeout
WAIT_TIMEOUT = 10.0  # for our own writes (adopted pages) and the commit of reconciled orders
TRADES_PAGE = 1000


# ---- actions (the driver carries them out and feeds the answers back) ---------------
class AskPeer(NamedTuple):
    """`catch_up {after, epoch, leader}` to `peer`; with an epoch it is a promise request."""

    round: int
    peer: int
    after: int
    epoch: int | None


class FetchPage(NamedTuple):
    """`catch_up {after}` to `peer`: the next page of the log being adopted."""

    round: int
    peer: int
    after: int


class Fence(NamedTuple):
    """Catalog `fence {epoch, leader}`."""

    round: int
    epoch: int
    leader: int


class FetchTrades(NamedTuple):
    """Catalog `trades_since {after, limit}`; `after` None: the log's trade watermark."""

    round: int
    after: int | None
    limit: int = TRADES_PAGE


class Serve(NamedTuple):
    """Recovered, fenced, reconciled: take orders in `epoch`."""

    epoch: int


class Trade(NamedTuple):
    """One catalog trade, as `trades_since` lists it."""

    seq: int
    key: str
    name: str
    type: str
    quantity: int

    @classmethod
    def from_wire(cls, t) -> Trade:
        return cls(t["seq"], t["key"], t["name"], t["type"], t["quantity"])


ASKING, PAGING, FENCING, TRADES, COMMITTING, DONE = (
    "asking",
    "paging",
    "fencing",
    "trades",
    "committing",
    "done",
)


class Recovering:
    """One recovery run of `replica` (a `replication.Replica`); see the module docstring."""

    def __init__(
        self,
        replica,
        mode: str,
        epoch: int | None = None,
        *,
        retry: float = RETRY,
        ask_timeout: float = ASK_TIMEOUT,
        wait_timeout: float = WAIT_TIMEOUT,
    ):
        assert mode in (CATCH_UP, LEAD, RECONCILE)
        assert (epoch is None) == (mode == CATCH_UP)
        self.replica = replica
        self.mode = mode
        self.epoch = epoch
        self.retry = retry
        self.ask_timeout = ask_timeout
        self.wait_timeout = wait_timeout
        self.round = 0
        self.started = float("inf")  # when `start` ran
        self.phase = ""
        self.note = "starting recovery"
        self.promised: bool | None = None  # lead: None until a promise round ended
        self.error: BazaarError | None = None  # why the run ended early (None: it did not)
        self.adopted = 0  # pages adopted
        self.reconciled = 0  # orphaned trades committed
        self._answers: dict[int, PeerLog | None] = {}
        self._asked: tuple[int, ...] = ()
        self._due = float("inf")  # a timeout or a retry: tick acts then
        self._retry_at: float | None = None
        self._source: PeerLog | None = None  # whose log we adopt
        self._writing = False  # PAGING: our adopted page is being written (else: fetched)
        self._truncate: int | None = None  # where our log leaves the one we adopt
        self._target = -1  # our log must be durable up to here (or committed, COMMITTING)
        self._page_target: int | None = None  # where the previous page of this adoption ended
        self._more = False
        self._trades_more = False
        self._trades_after: int | None = None

    # ---- state ---------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.phase == DONE

    def wake_at(self) -> float:
        """When `tick` must run at the latest (it must also run after any change)."""
        return self._due

    # ---- events --------------------------------------------------------------------
    def start(self, now: float) -> list:
        self.started = now
        if self.mode == RECONCILE:
            return self._fetch_trades(None, now)
        return self._ask(now)

    def on_answer(self, round_: int, peer: int, answer: PeerLog | BazaarError, now) -> list:
        """A peer's answer to `AskPeer` (its log, maybe a promise), or why there is none."""
        if round_ != self.round or self.phase != ASKING or peer in self._answers:
            return []
        actions: list = []
        if isinstance(answer, BazaarError):
            self._answers[peer] = None
            epoch = answer.details.get("epoch") if answer.code == "ABORTED" else None
            if self.mode == LEAD and isinstance(epoch, int):
                # It granted this epoch (or a later one) to another: stop leading.
                actions += self.replica.fenced(epoch)
        else:
            self._answers[peer] = answer
        return actions + self._decide(now)

    def on_page(self, round_: int, records: list[Record] | BazaarError, more: bool, now) -> list:
        """The answer to `FetchPage`: the next records of the log we adopt."""
        if round_ != self.round or self.phase != PAGING or self._writing:
            return []
        if isinstance(records, BazaarError):
            return self._failed(records, now)
        truncate, self._truncate = self._truncate, None
        return self._adopt(truncate, records, bool(more) and bool(records), now)

    def on_fence(self, round_: int, answer: dict | BazaarError, now) -> list:
        if round_ != self.round or self.phase != FENCING:
            return []
        if isinstance(answer, BazaarError):
            fenced_by = answer.details.get("epoch") if answer.code == "ABORTED" else None
            if isinstance(fenced_by, int) and fenced_by >= self.epoch:
                # Another leader holds our epoch at the catalog: we can never trade in it.
                actions = self.replica.fenced(fenced_by)
                return actions + self._end(not_leader(None, fenced_by, answer.message))
            return self._failed(BazaarError("UNAVAILABLE", f"catalog fence failed: {answer}"), now)
        fenced_by = answer.get("epoch") if isinstance(answer, dict) else None
        if isinstance(fenced_by, int) and fenced_by > self.epoch:
            actions = self.replica.fenced(fenced_by)
            return actions + self._end(
                not_leader(None, fenced_by, "the catalog is fenced by a newer epoch")
            )
        return self._fetch_trades(None, now)

    def on_trades(
        self, round_: int, answer: list[Trade] | BazaarError, more: bool, now, busy=frozenset()
    ) -> list:
        """A page of catalog trades; `busy`: keys whose trade an order is placing right now."""
        if round_ != self.round or self.phase != TRADES:
            return []
        if isinstance(answer, BazaarError):
            why = BazaarError("UNAVAILABLE", f"catalog trades_since failed: {answer}")
            return self._failed(why, now)
        if not self._leading():
            return self._end(not_leader(self.replica.leader, self.replica.epoch))
        actions: list = []
        m = self.replica
        self._target = -1  # nothing to commit unless we propose
        for t in answer:
            if t.key in busy or m.number_of(t.key) is not None:
                continue
            record, proposed = m.propose(t.name, t.type, t.quantity, t.key, t.seq, now)
            actions += proposed
            self._target = record.number
            self.reconciled += 1
        self._trades_more = bool(answer) and bool(more)
        self._trades_after = answer[-1].seq if answer else None
        self.phase, self._due = COMMITTING, now + self.wait_timeout
        return actions + self.tick(now)

    def tick(self, now: float) -> list:
        """Time passed or the replica moved: timeouts, retries, durable pages, commits."""
        if self.phase == DONE:
            return []
        if not self._still_ours():
            return self._end(not_leader(self.replica.leader, self.replica.epoch, "no longer ours"))
        if self._retry_at is not None:
            if now < self._retry_at:
                return []
            self._retry_at = None
            return self._fence(now) if self.phase == FENCING else self._ask(now)
        m = self.replica
        if self.phase == ASKING and now >= self._due:
            for peer in self._asked:  # no answer in time: absent
                self._answers.setdefault(peer, None)
            return self._decide(now)
        if self.phase == PAGING and self._writing:  # waiting for our own writes
            if m.last_number < self._target:  # a disk error dropped them
                return self._failed(BazaarError("UNAVAILABLE", "order log write failed"), now)
            if m.durable >= self._target:
                return self._page_done(now)
        elif self.phase == COMMITTING and m.commit >= self._target:
            if self._trades_more:
                return self._fetch_trades(self._trades_after, now)
            return self._reconciled()
        if now >= self._due:
            return self._failed(BazaarError("UNAVAILABLE", f"recovery timed out {self.phase}"), now)
        return []

    # ---- the sequence ----------------------------------------------------------------
    def _ask(self, now: float) -> list:
        self.round += 1
        self.phase, self._due = ASKING, now + self.ask_timeout
        self.note = "catching up from peers"
        self._answers = {}
        self._asked = tuple(self.replica.peers)
        if not self._asked:
            return self._decide(now)
        after = self.replica.durable
        return [AskPeer(self.round, p, after, self.epoch) for p in self._asked]

    def _decide(self, now: float) -> list:
        """Enough answers: plan, or (lead) wait for more promises, or try again."""
        if not self._still_ours():
            return self.tick(now)
        answers = [a for a in self._answers.values() if a is not None]
        if self.mode == LEAD:
            promised = 1 + sum(1 for a in answers if a.promised)
            heard = len(self._answers) == len(self._asked)
            if promised < self.replica.quorum() and not heard:
                return []  # a majority may still promise
        elif len(self._answers) < len(self._asked):
            return []  # a (re)started replica hears every peer it can
        plan = plan_catch_up if self.mode == CATCH_UP else plan_recovery
        try:
            truncate, best = plan(self.replica, answers)
        except BazaarError as err:  # no majority of promises
            self.promised = False
            return self._failed(err, now)
        if self.mode == LEAD:
            self.promised = True
        self._page_target, self._truncate = None, None
        if best is None:
            return self._caught_up(now)
        self._source = best
        if truncate is None:
            return self._adopt(None, list(best.records), best.more, now)
        # We diverged below what we asked for: fetch the records from the fork
        # first, then cut and append in one write. Cutting first would leave
        # an acknowledged record (ours re-stamped in theirs) on too few disks
        # until the fetch comes back.
        self._truncate = truncate
        self.round += 1
        self.phase, self._due, self._writing = PAGING, now + self.ask_timeout * 3, False
        return [FetchPage(self.round, best.peer, truncate - 1)]

    def _adopt(self, truncate: int | None, page: list[Record], more: bool, now: float) -> list:
        if not self._still_ours():
            return self.tick(now)
        actions = self.replica.adopt(truncate, page)
        before, self._target = self._page_target, self.replica.last_number
        self._page_target = self._target
        self._more = more and self._target != before  # done, or our log moved under us
        self.adopted += 1
        self.phase, self._due, self._writing = PAGING, now + self.wait_timeout, True
        return actions + self.tick(now)

    def _page_done(self, now: float) -> list:
        self._writing = False
        if self._more and self._source is not None:
            self.round += 1
            self._due = now + self.ask_timeout * 3
            return [FetchPage(self.round, self._source.peer, self._target)]
        return self._caught_up(now)

    def _caught_up(self, now: float) -> list:
        if self.mode == CATCH_UP:
            return self._end(None)
        m = self.replica
        promised = [p for p, a in self._answers.items() if a is not None and a.promised]
        actions = m.start_leading(now, promised)  # the re-stamp: it commits our first records
        return actions + self._fence(now)

    def _fence(self, now: float) -> list:
        if not self._leading():
            return self._end(not_leader(self.replica.leader, self.replica.epoch))
        self.round += 1
        self.phase, self._due = FENCING, now + self.wait_timeout
        return [Fence(self.round, self.epoch, self.replica.id)]

    def _fetch_trades(self, after: int | None, now: float) -> list:
        self.round += 1
        self.phase, self._due = TRADES, now + self.wait_timeout
        return [FetchTrades(self.round, after)]

    def _reconciled(self) -> list:
        if self.mode == RECONCILE:
            return self._end(None)
        self._end(None)
        return [Serve(self.epoch)]

    def _failed(self, err: BazaarError, now: float) -> list:
        """An attempt failed: a leader still recovering tries again; anything else ends."""
        if self.mode == LEAD and self._still_ours() and not err.details.get("not_leader"):
            self.note = (
                f"waiting for a majority: {err.message}"
                if self.phase == ASKING
                else f"catalog: {err.message}"
                if self.phase in (FENCING, TRADES, COMMITTING)
                else f"catching up: {err.message}"
            )
            if self.phase in (TRADES, COMMITTING):
                self.phase = FENCING  # fence and reconcile again, from the watermark
            self._retry_at = now + self.retry
            self._due = self._retry_at
            return []
        return self._end(err)

    def _end(self, err: BazaarError | None) -> list:
        self.phase, self.error, self._due = DONE, err, float("inf")
        self.note = "recovered" if err is None else f"recovery failed: {err.message}"
        return []

    # ---- whether the replica is still the one we recover -------------------------------
    def _leading(self) -> bool:
        m = self.replica
        return m.role == LEADER and m.epoch == self.epoch

    def _still_ours(self) -> bool:
        m = self.replica
        if self.mode == CATCH_UP:
            return m.role == FOLLOWER
        if self.mode == LEAD and self.phase in ("", ASKING, PAGING):
            return m.role == RECOVERING and m.epoch == self.epoch
        return self._leading()
