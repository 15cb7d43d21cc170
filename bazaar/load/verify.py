"""Reading acknowledged orders back: every one stored as acknowledged, no number twice.

Pure comparisons (`check_order`, `find_duplicates`) and `verify_chunk`, which
reads one session's share of the orders with `GET /orders/<n>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bazaar.load.session import Ack, Recorder, Reply, Session, classify, timed


@dataclass(frozen=True)
class Mismatch:
    number: int
    problem: str  # "missing", "different", "duplicate", "error"
    detail: str

    def __str__(self) -> str:
        return f"order {self.number}: {self.problem}: {self.detail}"


def check_order(ack: Ack, reply: Reply | None, error: str = "") -> Mismatch | None:
    """Compare one acknowledged order with what GET /orders/<n> returned."""
    if reply is None:
        return Mismatch(ack.number, "error", error or "no answer")
    if reply.status == 404:
        return Mismatch(ack.number, "missing", "GET /orders answered 404")
    if reply.status != 200:
        return Mismatch(ack.number, "error", f"HTTP {reply.status}: {reply.body!r:.200}")
    data = reply.body.get("data") if isinstance(reply.body, dict) else None
    want = {"number": ack.number, "name": ack.name, "type": ack.type, "quantity": ack.quantity}
    got = {k: data.get(k) for k in want} if isinstance(data, dict) else None
    if got != want:
        return Mismatch(ack.number, "different", f"acknowledged {want}, stored {got}")
    return None


def find_duplicates(acks: Iterable[Ack]) -> list[Mismatch]:
    """Two different orders (different keys) acknowledged with one number."""
    by_number: dict[int, Ack] = {}
    out = []
    for ack in acks:
        first = by_number.setdefault(ack.number, ack)
        if first is not ack and first.key != ack.key:
            out.append(Mismatch(ack.number, "duplicate", f"given to {first} and {ack}"))
    return out


def verify_chunk(session: Session, acks: Sequence[Ack], rec: Recorder) -> list[Mismatch]:
    """GET every order in `acks`; record get_order latencies; return the mismatches."""
    out = []
    for ack in acks:
        reply, seconds, err = timed(session, "GET", f"/orders/{ack.number}")
        if reply is None:
            rec.record("get_order", "transport", None, err)
        else:
            rec.record("get_order", classify("get_order", reply), seconds)
        mismatch = check_order(ack, reply, err)
        if mismatch is not None:
            out.append(mismatch)
    return out
