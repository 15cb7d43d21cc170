"""Replication of the order log: a pure state machine (messages and `now` in, actions out).

This module owns every replication decision of one order replica: which
epochs and leaders it accepts, which records a follower lacks and when to send
them, when a proposed order may be acknowledged, when a follower counts as
down and when as back, and how a log that diverged is repaired. It never
touches a socket, a file, a thread or a clock: `bazaar.order.service` feeds it
requests, replies, durability notices and the time, and performs the actions
it returns (`Persist`, `Truncate`, `SaveState`, `Send`, `Acknowledge`,
`Abort`, in `bazaar.order.messages`). Tests drive it with a fake network
and clock. Its log (durable records plus the tail in flight) is a
`bazaar.order.tail.LogTail`; catch-up planning is `bazaar.order.catch_up`.

Memory: the machine holds positions (last number, `durable`, `commit`, each
follower's `match`/`next`) and the records in flight (`tail`, appended but
not yet durable). Older records it reads through a read-only `LogView` (the
service's SQLite `OrderLog`, a list in the tests), and only at numbers up to
`durable`, so nothing it holds grows with the history.

Invariants
- One leader per epoch. Epochs only grow; a replica accepts an epoch once
  and refuses `set_leader`/`replicate`/promises from a lower epoch, or from
  the same epoch naming another leader, with ABORTED details {"epoch"}.
- A vote is durable before it leaves. A message naming a new (epoch,
  leader) changes nothing at first: it gets `SaveState` alone (and
  `on_replicate` no reply). The driver persists it, reports `on_saved`
  (only then does the machine move to that epoch: stepping down, or
  recovering when it names us), and hands the message in again. So no
  answer in an epoch (`set_leader` done, a promise, a `replicate` reply)
  leaves before that epoch is on disk, a save that fails changes nothing,
  and `SaveState` is the only way the epoch is persisted. While a save is
  pending, lower epochs (and its epoch with another leader) are refused
  already.
- Log matching. A record is created only by the leader of its epoch, once per
  number, so (number, epoch) names one record everywhere, and two logs that
  hold the same (number, epoch) are identical up to it. A follower appends
  only after the record before the batch matches (`prev_number`,
  `prev_epoch`); a record that conflicts with the leader's (same number, other
  epoch) is an unacknowledged leftover of an old leader and is truncated.
- Commit rule. Record n is acknowledged only when durable on a majority of
  the replicas, the leader counted (2 of 3): on the leader and on at least
  one follower. Never on the leader alone, however long its followers are
  silent: a record only the leader holds dies with it. A follower is down
  after `follower_timeout` without an answer to an outstanding request (it
  then gets probes instead of a stream), and up again once it holds
  everything acknowledged; `has_majority` tells the service whether an
  order could commit at all.
- Majority is heard, never assumed. A leader always has a request out to
  every follower or sends one within `heartbeat_interval` (a heartbeat when
  there is nothing to stream), so "heard from within MAJORITY_SILENCE" is
  the only test `has_majority` makes: an idle leader cut off from its
  followers loses its majority like a busy one, and the front end, which
  reads it in `status`, replaces it or reports the cluster unavailable.
- Only records of the leader's own epoch commit by counting replicas; older
  ones commit with the first of those after them. A new leader re-stamps its
  last record with its epoch (same order, same number) to get one at once.
- Acknowledgements are monotonic: `commit` never goes down while leading.

Theory of operation: the leader streams batches (at most `batch` records)
to each follower, up to `window` full batches in flight but at most two
partial ones (records arriving meanwhile then share the next batch, and the
follower's fsync); a follower that
answers `ok=False` (a gap or a conflict) tells the leader where to restart
from. A down follower gets one probe per `probe_interval` instead of a
stream. A live follower with nothing in flight and nothing to send gets a
heartbeat every `heartbeat_interval`: an empty `replicate` (prev_number is
the leader's last record), answered as any batch is, with no write and no
fsync on the follower; one heartbeat at most is in flight per follower, and
one unanswered for `follower_timeout` marks the follower down as any other
request does. Heartbeats keep a quiet leader's timers running, so the
service ticks it when `idle_for()` says the next one is due, not rarely. A
new leader first adopts the most up-to-date log of its reachable peers
(`plan_catch_up`), so every record acknowledged by a previous leader
(durable on some follower) survives a single failure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from bazaar.errors import BazaarError
from bazaar.order.catch_up import (  # noqa: F401 (re-exported: `rep.plan_catch_up`, ...)
    PeerLog,
    common_prefix,
    plan_catch_up,
    plan_recovery,
    resend_from,
    up_to_date,
)
from bazaar.order.messages import (
    FOLLOWER,
    LEADER,
    RECOVERING,
    Abort,
    Acknowledge,
    LogView,
    Persist,
    Replicate,
    ReplicateReply,
    SaveState,
    Send,
    Truncate,
    aborted,
    not_leader,
)
from bazaar.order.record import Record
from bazaar.order.tail import LogTail

MAJORITY_SILENCE = 2.0  # seconds without a word from enough followers: no majority


@dataclass
class Follower:
    """What the leader knows about one follower."""

    match: int = -1  # highest number known durable and identical on the follower
    next: int = 0  # next number to send
    alive: bool = True  # answers in time: gets the stream (else only probes)
    up: bool = True  # alive and caught up: counts for the commit rule
    inflight: list[tuple[int, int, float]] = field(default_factory=list)  # (prev, last, sent at)
    last_probe: float = float("-inf")
    heard: float = float("-inf")  # when it last answered anything
    sent: float = float("-inf")  # when it was last sent anything (heartbeats follow silence)


class Replica(LogTail):
    """The replication state of one order replica.

    It holds positions (last, durable, commit, each follower's match/next)
    and only the records in flight (`tail`: appended but not yet durable);
    everything older is read through `log`, so memory does not grow with
    the history.
    """

    def __init__(
        self,
        replica_id: int,
        peers: list[int],
        log: LogView,
        epoch: int = 0,
        leader: int | None = None,
        *,
        follower_timeout: float = 0.5,
        probe_interval: float = 0.1,
        heartbeat_interval: float | None = None,
        batch: int = 256,
        window: int = 8,
    ):
        self.id = replica_id
        self.peers = [p for p in peers if p != replica_id]
        super().__init__(log)
        self.epoch = epoch
        self.leader = leader
        self.pending_state: tuple[int, int | None] | None = None  # SaveState not yet saved
        self.role = FOLLOWER
        self.commit = -1  # highest acknowledged number while leading
        self.last_tick = float("-inf")
        self.followers: dict[int, Follower] = {}
        self.follower_timeout = follower_timeout
        self.probe_interval = probe_interval
        # A fifth of the shorter of follower_timeout and MAJORITY_SILENCE (0.1 s
        # by default): a healthy idle follower is then heard about 20 times per
        # MAJORITY_SILENCE, so a late answer or two never costs the majority;
        # and a quiet leader, ticked only at its heartbeats (`idle_for`), is
        # ticked well within follower_timeout / 2, the gap `tick` would take for
        # a pause of its own (`_restart_timers`). One heartbeat at most in
        # flight per follower: an idle 3-replica cluster sends 2 x 10
        # requests/s and gets as many answers, none of them written to disk.
        self.heartbeat_interval = (
            heartbeat_interval
            if heartbeat_interval is not None
            else min(follower_timeout, MAJORITY_SILENCE) / 5
        )
        self.batch = batch
        self.window = window

    # ---- epochs -----------------------------------------------------------
    def _newest_state(self) -> tuple[int, int | None]:
        """The (epoch, leader) accepted, or the one being saved if that is newer."""
        pending = self.pending_state
        return (
            pending
            if pending is not None and pending[0] >= self.epoch
            else (
                self.epoch,
                self.leader,
            )
        )

    def _check_epoch(self, epoch: int, leader: int) -> list:
        """[] when (epoch, leader) is the accepted one; [SaveState] when it must be
        saved first; ABORTED when it is stale. Changes nothing but the pending save."""
        newest, holder = self._newest_state()
        if epoch < newest or (epoch == newest and holder not in (None, leader)):
            raise aborted(
                f"epoch {epoch} (leader {leader}) is stale: accepted {newest} (leader {holder})",
                newest,
            )
        if (epoch, leader) == (self.epoch, self.leader):
            return []
        self.pending_state = (epoch, leader)
        return [SaveState(epoch, leader)]

    def on_saved(self, epoch: int, leader: int | None) -> list:
        """The driver persisted `SaveState(epoch, leader)`: now the machine moves to it."""
        if self.pending_state == (epoch, leader):
            self.pending_state = None
        if epoch < self.epoch or (epoch, leader) == (self.epoch, self.leader):
            return []  # an older save finished after a newer one was accepted
        actions = self._step_down(f"replica {leader} leads epoch {epoch}", leader, epoch)
        self.epoch, self.leader = epoch, leader
        if leader == self.id:
            self.role = RECOVERING
        return actions

    def _step_down(self, why: str, leader: int | None, epoch: int) -> list:
        was_leading = self.role != FOLLOWER
        self.role = FOLLOWER
        self.followers = {}
        if not was_leading or self.commit >= self.last_number:
            return []
        return [Abort(self.commit + 1, not_leader(leader, epoch, why))]

    def on_set_leader(self, leader: int, epoch: int) -> list:
        """`set_leader`: raises ABORTED if stale; [SaveState] to persist (then `on_saved`);
        [] once accepted. When it names us, the service recovers us."""
        return self._check_epoch(epoch, leader)

    def on_promise(self, leader: int, epoch: int) -> list:
        """A new leader's catch-up carries its epoch: once saved we refuse the old leader;
        the promise is given only when this returns [] (the epoch is accepted)."""
        return self._check_epoch(epoch, leader)

    def fenced(self, epoch: int) -> list:
        """The catalog (or a peer) knows a higher epoch: stop leading at once."""
        if epoch < self.epoch or self.role == FOLLOWER:
            return []
        return self._step_down(f"fenced by epoch {epoch}", None, epoch)

    # ---- follower side ------------------------------------------------------
    def on_replicate(self, msg: Replicate) -> tuple[list, ReplicateReply | None]:
        """Apply a batch. Returns actions and the reply to send once they are durable;
        ([SaveState], None) when its epoch must be saved first: hand it in again then."""
        numbers = [r.number for r in msg.records]
        if numbers != list(range(msg.prev_number + 1, msg.prev_number + 1 + len(numbers))):
            raise BazaarError("INVALID_ARGUMENT", "records must follow prev_number, consecutively")
        save = self._check_epoch(msg.epoch, msg.leader)
        if save:
            return save, None
        actions: list = []
        if msg.prev_number > self.last_number:
            return actions, ReplicateReply(self.epoch, False, self.last_number, -1, msg.prev_number)
        if msg.prev_number >= 0 and self.epoch_at(msg.prev_number) != msg.prev_epoch:
            restart = self._run_start(msg.prev_number) - 1
            mine = self.epoch_at(msg.prev_number)
            return actions, ReplicateReply(self.epoch, False, restart, -1, msg.prev_number, mine)
        new: list[Record] = []
        for record in msg.records:
            mine = self.epoch_at(record.number) if not new else None
            if mine == record.epoch:
                continue  # a duplicate: we hold it already
            if mine is not None:
                actions.append(self._cut(record.number))
            new.append(record)
        if new:
            actions.append(self._append(new))
        matched = msg.records[-1].number if msg.records else msg.prev_number
        return actions, ReplicateReply(self.epoch, True, self.last_number, matched, msg.prev_number)

    def _run_start(self, number: int) -> int:
        """First number of the run of equal epochs that holds `number` (conflict hint)."""
        runs = self.epoch_runs(number)
        return runs[-1][1] if runs else 0

    # ---- leading ------------------------------------------------------------
    def start_leading(self, now: float, heard_from: Iterable[int] | None = None) -> list:
        """Recovery is done (peers' records adopted): lead, probing every follower.

        `heard_from`: the peers that just promised this epoch (the recovery's
        answers), counted as heard now; the others only once they answer, so
        a peer cut off since before the election never counts toward the
        majority or shows as heard (None: every peer, for drivers without a
        promise round).
        """
        if self.role != RECOVERING:
            raise not_leader(self.leader, self.epoch, "no longer elected")
        self.role = LEADER
        self.last_tick = now
        self.commit = self.durable if not self.peers else -1
        heard = set(self.peers if heard_from is None else heard_from)
        self.followers = {
            p: Follower(next=self.last_number + 1, heard=now if p in heard else float("-inf"))
            for p in self.peers
        }
        actions: list = self._restamp()
        for peer, f in self.followers.items():
            f.inflight.append((f.next - 1, f.next - 1, now))
            f.sent = now
            actions.append(Send(peer, self._message(f.next - 1, ())))
        return actions + self._advance_commit()

    def _restamp(self) -> list:
        """Our last record, rewritten with our epoch (same order, same number).

        The commit rule counts only records of the current epoch (an older
        record on a majority can still be overwritten by a log whose last
        record is newer: Raft's "figure 8"). Re-stamping the last record is
        our no-op entry without a new number: once it is on a majority, it
        and everything before it are committed. The service writes the cut
        and the append in one transaction, so no crash sees the record gone.
        """
        last = self.last_number
        if last < 0 or self.epoch_at(last) == self.epoch:
            return []
        record = dataclasses.replace(self.get(last), epoch=self.epoch)
        return [self._cut(last), self._append([record])]

    def propose(self, name: str, kind: str, quantity: int, key: str, trade_seq: int | None, now):
        """Assign the next number to a traded order. Returns (record, actions).

        The record is streamed to followers while it is being persisted here;
        it is acknowledged only once durable on both sides (commit rule).
        """
        if self.role != LEADER:
            raise not_leader(self.leader, self.epoch)
        record = Record(self.last_number + 1, name, kind, quantity, key, trade_seq, self.epoch)
        return record, [self._append([record]), *self._stream(now)]

    def on_durable(self, upto: int, now: float) -> list:
        """Records up to `upto` are on our disk: stream them, maybe acknowledge.

        The disk may report a write that finished before a later truncation
        of ours reached it: the records count as durable only when the disk's
        record at `upto` is ours (same number and epoch: log matching).
        """
        upto = min(upto, self.last_number)
        if upto > self.durable and self.log.epoch_at(upto) == self.epoch_at(upto):
            self.trim(upto)
        if self.role != LEADER:
            return []
        return self._stream(now) + self._advance_commit()

    def on_disk_error(self, error: BazaarError) -> list:
        """Records not yet durable were not written: forget them; a leader steps down.

        A leader may already have streamed them, so it must never reuse their
        numbers in this epoch: only a new epoch (a new election) may.
        """
        lost = self.durable + 1
        actions: list = []
        if self.role != FOLLOWER:
            self.role = FOLLOWER
            self.followers = {}
            if self.commit + 1 <= self.last_number:
                actions.append(Abort(self.commit + 1, error))
        self._cut(lost)
        return actions

    def adopt(self, truncate_from: int | None, records: list[Record]) -> list:
        """Catch-up: drop our divergent tail, append a peer's records that follow our log."""
        if self.role == LEADER:
            raise BazaarError("FAILED_PRECONDITION", "a serving leader does not adopt logs")
        actions: list = []
        if truncate_from is not None and truncate_from <= self.last_number:
            actions.append(self._cut(truncate_from))
        new = [r for r in records if r.number > self.last_number]
        if new and new[0].number == self.last_number + 1:
            actions.append(self._append(new))
        return actions

    def _append(self, records: list[Record]) -> Persist:
        return self.append(records)

    def _cut(self, number: int) -> Truncate:
        self.cut(number)
        for f in self.followers.values():
            f.next = min(f.next, number)
        return Truncate(number)

    def on_reply(self, peer: int, reply: ReplicateReply | BazaarError, now: float) -> list:
        """A follower answered (or refused) one of our `replicate` messages."""
        f = self.followers.get(peer)
        if self.role != LEADER or f is None:
            return []
        if isinstance(reply, BazaarError):
            return self._on_refusal(reply)
        if reply.epoch != self.epoch:
            return []  # an answer to an older leadership of ours
        f.alive = True
        f.heard = now
        if reply.ok:
            f.match = max(f.match, min(reply.matched, self.last_number))
            f.inflight = [m for m in f.inflight if m[1] > reply.matched]
            if not f.up and f.match >= self.commit:
                f.up = True
        else:
            if reply.prev is not None and all(p != reply.prev for p, _, _ in f.inflight):
                return []  # answers a message from before our last restart: already handled
            f.next = resend_from(self.epoch_runs(), self.last_number, reply)
            f.inflight = []
        return self._stream(now) + self._advance_commit()

    def _on_refusal(self, error: BazaarError) -> list:
        epoch = error.details.get("epoch") if error.code == "ABORTED" else None
        if isinstance(epoch, int) and epoch >= self.epoch:
            return self._step_down(f"a follower accepted epoch {epoch}", None, epoch)
        return []  # e.g. its disk failed: no answer, the timeout will mark it down

    def tick(self, now: float) -> list:
        """Time passed: mark silent followers down, probe down ones, resend stalled streams,
        send idle ones a heartbeat."""
        if self.role != LEADER:
            return []
        if now - self.last_tick > self.follower_timeout / 2:
            self._restart_timers(now)
        self.last_tick = now
        actions: list = []
        for peer, f in self.followers.items():
            limit = self.follower_timeout if f.alive else self.probe_interval
            if f.inflight and now - f.inflight[0][2] > limit:
                f.alive = f.up = False
                f.inflight = []
                f.next = f.match + 1
            if not f.alive and not f.inflight and now - f.last_probe >= self.probe_interval:
                f.last_probe = now
                actions += self._send_batch(peer, f, now)
            elif self._heartbeat_due(f, now):
                actions += self._send_batch(peer, f, now)  # empty: a heartbeat
        return actions + self._stream(now) + self._advance_commit()

    def _heartbeat_due(self, f: Follower, now: float) -> bool:
        """A live follower that has nothing to answer and nothing to get, and has not
        been sent anything for `heartbeat_interval`."""
        return (
            f.alive
            and not f.inflight
            and f.next > self.last_number
            and now - f.sent >= self.heartbeat_interval
        )

    def _restart_timers(self, now: float) -> None:
        """We did not run for a while (paused, starved): the silence may be ours.

        A leader resumed after SIGSTOP must not take its followers' silence
        for their death and acknowledge alone: give them a full timeout
        again, in which they answer (and a newer epoch deposes us).
        """
        for f in self.followers.values():
            f.inflight = [(p, n, now) for p, n, _ in f.inflight]
            f.heard = max(f.heard, now - self.follower_timeout)

    def _stream(self, now: float) -> list:
        actions: list = []
        for peer, f in self.followers.items():
            if not f.alive:
                continue
            while len(f.inflight) < self.window and f.next <= self.last_number:
                if len(f.inflight) >= 2 and self.last_number - f.next + 1 < self.batch:
                    break  # a partial batch waits for an answer and grows meanwhile
                actions += self._send_batch(peer, f, now)
        return actions

    def _send_batch(self, peer: int, f: Follower, now: float) -> list:
        end = min(f.next + self.batch, self.last_number + 1)
        records = tuple(self.records_between(f.next, end - 1))
        f.inflight.append((f.next - 1, end - 1, now))
        f.sent = now
        message = self._message(f.next - 1, records)
        f.next = end
        return [Send(peer, message)]

    def _message(self, prev: int, records: tuple[Record, ...]) -> Replicate:
        return Replicate(self.epoch, self.id, prev, self.epoch_at(prev), records)

    def quorum(self) -> int:
        """Replicas (the leader counted) that must hold a record before it is acknowledged."""
        return (len(self.peers) + 1) // 2 + 1

    def has_majority(self) -> bool:
        """Leading with enough followers heard from lately that a new record could commit.

        Slower to turn false than `alive` (MAJORITY_SILENCE, not one
        `follower_timeout`): a loaded machine that answers late must not
        make the leader refuse orders and the front end depose it. Only an
        answer counts, never an idle follower's silence: heartbeats ask
        every follower something at least every `heartbeat_interval`.
        """
        recent = sum(1 for f in self.followers.values() if self._heard_lately(f))
        return self.role == LEADER and recent + 1 >= self.quorum()

    def _heard_lately(self, f: Follower) -> bool:
        """`f` answered within MAJORITY_SILENCE (of the last tick)."""
        return self.last_tick - f.heard <= MAJORITY_SILENCE

    def _advance_commit(self) -> list:
        # The (quorum-1)-th best follower match, capped by our own durable
        # record: then `quorum` replicas, the leader among them, hold it.
        matches = sorted((f.match for f in self.followers.values()), reverse=True)
        need = self.quorum() - 1
        target = self.durable if need == 0 else min(self.durable, matches[need - 1])
        if target <= self.commit or (need and self.epoch_at(target) != self.epoch):
            # Only a record of our own epoch commits by counting (see _restamp).
            return []
        if target <= self.commit:
            return []
        self.commit = target
        return [Acknowledge(target)]

    def quiet(self) -> bool:
        """No timer can fire but the heartbeats': a follower, or a leader with every
        follower alive, nothing in flight and nothing left to send."""
        if self.role == RECOVERING:
            return False
        return self.role == FOLLOWER or all(
            f.alive and not f.inflight and f.next > self.last_number
            for f in self.followers.values()
        )

    def idle_for(self, now: float) -> float:
        """Seconds before `tick` may have anything to do: 0 unless `quiet`; for a quiet
        leader, until its next heartbeat is due; infinity for a follower."""
        if not self.quiet():
            return 0.0
        if self.role != LEADER or not self.followers:
            return float("inf")
        due = min(f.sent for f in self.followers.values()) + self.heartbeat_interval
        return max(0.0, due - now)

    # ---- status ---------------------------------------------------------------
    def follower_status(self) -> dict[int, dict]:
        """Per follower: caught up (`up`), answering requests (`alive`), heard from
        within MAJORITY_SILENCE (`heard`: what `has_majority` counts), its last record."""
        return {
            p: {
                "up": f.up,
                "alive": f.alive,
                "heard": self._heard_lately(f),
                "last_number": f.match if f.match >= 0 else None,
            }
            for p, f in self.followers.items()
        }
