"""The election's rules, pure: which replica to keep or appoint, and when to try.

`bazaar.frontend.leader.OrderRouter` asks the replicas and acts; this module
only judges their answers (`status` maps) and paces the attempts (`Backoff`).
No sockets, no threads, no clock of its own: the caller passes the time.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from bazaar.wire import MAX_EPOCH, is_int


class Backoff:
    """The pause before the next election: randomised, growing, reset by a served order.

    The first election after a quiet spell runs at once (failover stays
    fast); each further one waits for a random part of a delay that doubles
    from `base` up to `cap`. Pure: the caller passes the time.
    """

    def __init__(self, base: float = 0.05, cap: float = 1.0, quiet: float = 10.0, rng=None):
        self.base, self.cap, self.quiet = base, cap, quiet
        self.rng = rng or random.Random()
        self.delay = 0.0
        self.last = float("-inf")
        self.next_at = float("-inf")

    def wait(self, now: float) -> float:
        """Seconds to wait before an election may start."""
        return max(0.0, self.next_at - now)

    def started(self, now: float) -> None:
        if now - self.last > self.quiet:
            self.delay = 0.0
        self.delay = self.base if self.delay == 0 else min(self.cap, self.delay * 2)
        self.last = now
        self.next_at = now + self.delay * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.delay = 0.0
        self.next_at = float("-inf")


def answered_epoch(value: Any) -> int:
    """An epoch from a replica's answer; 0 for anything outside 1..2^53-1."""
    return value if is_int(value) and 1 <= value <= MAX_EPOCH else 0


RECOVERY_GRACE = 3.0  # seconds a recovering leader may report `majority: false`


def without_majority(st: dict[str, Any]) -> bool:
    """The replica leads (or recovers) and its `status` says it cannot commit.

    A leader that serves (`role: leader`) and reports `majority: false` lost
    its followers: it is replaced as promptly as ever. A leader still
    recovering reports `majority: false` once a promise round ended without
    a majority; under load its rounds (and the catalog's fence) take longer,
    and deposing it then only costs another election and another recovery
    (test_paused_leader_is_fenced saw one). So it gets RECOVERY_GRACE
    seconds from the start of its recovery (`recovering_for`, its own
    clock) before that counts, but no more: a leader that cannot gather
    its majority is replaced within the grace plus the usual two checks.
    A status without `recovering_for` gets no grace.
    """
    if st.get("majority") is not False:
        return False
    role = st.get("role")
    if role == "recovering":
        took = st.get("recovering_for")
        in_grace = isinstance(took, int | float) and not isinstance(took, bool)
        return not (in_grace and 0 <= took < RECOVERY_GRACE)
    return role in (None, "leader")


def serving_leader(
    live: dict[int, dict[str, Any]], top_epoch: int, suspected: Callable[[int], bool]
) -> int | None:
    """A live replica that leads `top_epoch` and has (or, within its grace, is gathering)
    its majority."""
    for rid, st in live.items():
        if (
            top_epoch > 0
            and st.get("leader") == rid
            and answered_epoch(st.get("epoch")) == top_epoch
            and st.get("role") in (None, "leader", "recovering")
            and not without_majority(st)
            and not suspected(rid)
        ):
            return rid
    return None


def candidates(live: dict[int, dict[str, Any]], suspected: Callable[[int], bool]) -> list[int]:
    """Best first: not suspected, most up-to-date log (last epoch, then number), highest id."""

    def rank(rid: int) -> tuple:
        st = live[rid]
        last = st.get("last_number")
        return (
            not suspected(rid),
            answered_epoch(st.get("last_epoch")),
            last if is_int(last) else -1,
            rid,
        )

    return sorted(live, key=rank, reverse=True)
