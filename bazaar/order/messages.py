"""The replication machine's vocabulary: messages, actions, errors and its log view.

Owns the shapes that pass between `bazaar.order.replication.Replica` and the
service that drives it: the `replicate` message and its reply, the actions the
machine returns (`SaveState`, `Persist`, `Truncate`, `Send`, `Acknowledge`,
`Abort`), the errors it raises (`aborted`, `not_leader`), the roles, and
`LogView`, the read-only view of the durable log it reads through. No logic.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from bazaar.errors import BazaarError
from bazaar.order.record import Record

FOLLOWER, RECOVERING, LEADER = "follower", "recovering", "leader"


# ---- messages -------------------------------------------------------------
class Replicate(NamedTuple):
    epoch: int
    leader: int
    prev_number: int
    prev_epoch: int | None
    records: tuple[Record, ...]


class ReplicateReply(NamedTuple):
    epoch: int
    ok: bool
    last_number: int  # the follower's last record (on ok=False: where to resend after)
    matched: int  # ok=True: the follower holds the leader's log up to here, durably
    prev: int | None = None  # the prev_number of the request answered (stale answers: ignored)
    conflict_epoch: int | None = None  # ok=False: the follower's epoch at prev (fast back-up)


# ---- actions --------------------------------------------------------------
class SaveState(NamedTuple):
    epoch: int
    leader: int | None


class Persist(NamedTuple):
    records: tuple[Record, ...]


class Truncate(NamedTuple):
    from_number: int


class Send(NamedTuple):
    to: int
    message: Replicate


class Acknowledge(NamedTuple):
    upto: int  # every pending order numbered <= upto is committed


class Abort(NamedTuple):
    from_number: int  # pending orders numbered >= this will not be acknowledged here
    error: BazaarError


def aborted(message: str, epoch: int) -> BazaarError:
    return BazaarError("ABORTED", message, {"epoch": epoch})


def not_leader(leader: int | None, epoch: int, why: str = "not the leader") -> BazaarError:
    return BazaarError(
        "UNAVAILABLE",
        f"order replica: {why}",
        {"not_leader": True, "leader": leader, "epoch": epoch},
    )


class LogView(Protocol):
    """The read-only view of the durable log that `Replica` reads through.

    The service passes its `OrderLog` (SQLite); tests pass a list in memory.
    The machine reads it only at numbers it knows durable (<= `durable`), so a
    write or truncation still under way never shows through it.
    """

    def last(self) -> tuple[int, int]: ...  # (number, epoch) of the last record; (-1, 0)
    def get(self, number: int) -> Record | None: ...
    def epoch_at(self, number: int) -> int | None: ...
    def records_between(self, first: int, last: int) -> list[Record]: ...  # inclusive
    def number_of(self, key: str) -> int | None: ...
    def epoch_runs(self, upto: int | None = None) -> list[list[int]]: ...  # [[epoch, first]]
