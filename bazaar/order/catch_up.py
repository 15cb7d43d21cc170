"""Catch-up planning (pure): which peer's log a replica adopts, and from where.

Owns the comparison of logs by their epoch runs (`common_prefix`,
`up_to_date`: Raft's order; `resend_from`: a leader's fast back-up) and the two plans a replica acts on: a
(re)started replica's `plan_catch_up` and an elected one's `plan_recovery`
(which also needs a majority of promises). `bazaar.order.recovery` moves the
records; nothing here touches a socket or a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from bazaar.errors import BazaarError
from bazaar.order.messages import ReplicateReply
from bazaar.order.record import Record

if TYPE_CHECKING:
    from bazaar.order.replication import Replica


class PeerLog(NamedTuple):
    """A peer's answer to `catch_up`: its epoch runs, its last record, the records sent."""

    peer: int
    last_number: int
    runs: list[list[int]]
    records: list[Record]
    more: bool = False
    promised: bool = False  # it saved our epoch: a vote for us


def common_prefix(a_runs, a_last, b_runs, b_last) -> int:
    """Last number where two logs agree (log matching: same epoch there => same prefix)."""
    best = -1
    for epoch_a, first_a in a_runs:
        for epoch_b, first_b in b_runs:
            if epoch_a != epoch_b:
                continue
            end_a = run_end(a_runs, a_last, first_a)
            end_b = run_end(b_runs, b_last, first_b)
            start, end = max(first_a, first_b), min(end_a, end_b)
            if start <= end:
                best = max(best, end)
    return best


def run_end(runs, last, first) -> int:
    """Last number of the run that starts at `first`, in a log ending at `last`."""
    later = [f for _, f in runs if f > first]
    return min(later) - 1 if later else last


def up_to_date(runs: list[list[int]], last: int) -> tuple[int, int]:
    """Raft's order of logs: the later last epoch wins, then the longer log."""
    return (runs[-1][0] if runs else 0, last)


def plan_catch_up(replica: Replica, answers: list[PeerLog]) -> tuple[int | None, PeerLog | None]:
    """Which peer to adopt and from where: (truncate_from or None, peer) or (None, None).

    Adopt the most up-to-date log among ours and the peers'; when it is a
    peer's, keep our common prefix with it and take the rest from it.
    """
    mine = up_to_date(replica.epoch_runs(), replica.last_number)
    best = max(answers, key=lambda a: up_to_date(a.runs, a.last_number), default=None)
    if best is None or up_to_date(best.runs, best.last_number) <= mine:
        return None, None
    prefix = common_prefix(replica.epoch_runs(), replica.last_number, best.runs, best.last_number)
    truncate = prefix + 1 if prefix < replica.last_number else None
    return truncate, best


def plan_recovery(replica: Replica, answers: list[PeerLog]) -> tuple[int | None, PeerLog | None]:
    """An elected replica's catch-up plan from its peers' answers to its promise request.

    Only a majority of promises (ourselves counted) lets it lead: any
    majority shares a replica with the one that holds each acknowledged
    record, so adopting the best log among the promisers' keeps them all.
    Raises UNAVAILABLE (ask again later) without one; else `plan_catch_up`.
    """
    votes = 1 + sum(1 for a in answers if a.promised)
    if votes < replica.quorum():
        raise BazaarError(
            "UNAVAILABLE", f"only {votes} of {len(replica.peers) + 1} replicas promised"
        )
    return plan_catch_up(replica, answers)


def resend_from(runs: list[list[int]], last: int, reply: ReplicateReply) -> int:
    """Where a leader (log: `runs`, `last`) restarts a follower that refused a batch.

    Raft's fast back-up: the follower names the start of its run of
    `conflict_epoch` holding `prev` (`last_number` + 1). Where the leader's
    log holds that epoch too over part of that run, the logs agree up to its
    end (log matching), so the leader restarts after it instead of resending
    the follower's whole run.
    """
    restart = min(reply.last_number, last) + 1
    if reply.conflict_epoch is None or reply.prev is None:
        return restart
    for epoch, first in runs:
        if epoch == reply.conflict_epoch:
            end = run_end(runs, last, first)
            lo, hi = max(restart, first), min(reply.prev - 1, end)
            if lo <= hi:
                restart = hi + 1
    return restart
