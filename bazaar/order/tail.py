"""An order replica's log as the replication machine sees it: durable records plus the tail.

Owns positions and reads, no decisions: `durable` (the last record on disk,
read through the service's `LogView`) and the `tail` (records appended but
not yet durable, in memory), with the reads across both (`get`, `epoch_at`,
`records_between`, `number_of`, `epoch_runs`) and the edits of the tail
(`append`, `cut`, `trim`, `reset`). Memory does not grow with the history:
only the records in flight are held. `bazaar.order.replication.Replica`
builds on it.
"""

from __future__ import annotations

from bazaar.errors import BazaarError
from bazaar.order.messages import LogView, Persist
from bazaar.order.record import Record


class LogTail:
    """The durable log (through `log`) and the records in flight after it (`tail`)."""

    def __init__(self, log: LogView):
        self.log = log
        self.durable = log.last()[0]  # records 0..durable are read through `log`
        self.tail: list[Record] = []  # durable+1..last_number: in flight, in memory
        self.tail_keys: dict[str, int] = {}

    @property
    def last_number(self) -> int:
        return self.durable + len(self.tail)

    def epoch_at(self, number: int) -> int | None:
        if number < 0 or number > self.last_number:
            return None
        if number > self.durable:
            return self.tail[number - self.durable - 1].epoch
        return self.log.epoch_at(number)

    def last_epoch(self) -> int:
        return self.epoch_at(self.last_number) or 0

    def get(self, number: int) -> Record | None:
        """Record `number` of this log (durable or in flight), or None."""
        if number < 0 or number > self.last_number:
            return None
        if number > self.durable:
            return self.tail[number - self.durable - 1]
        return self.log.get(number)

    def records_between(self, first: int, last: int) -> list[Record]:
        """Records first..last (inclusive, clipped to this log)."""
        first, last = max(first, 0), min(last, self.last_number)
        if first > last:
            return []
        durable = min(last, self.durable)
        records = self.log.records_between(first, durable) if first <= durable else []
        if last > self.durable:
            records += self.tail[max(first - self.durable - 1, 0) : last - self.durable]
        return records

    def number_of(self, key: str) -> int | None:
        """The number of the record with this key, durable or in flight."""
        number = self.tail_keys.get(key)
        if number is None:
            number = self.log.number_of(key)
            if number is not None and number > self.durable:
                number = None  # on disk, but being truncated
        return number

    def epoch_runs(self, upto: int | None = None) -> list[list[int]]:
        """[[epoch, first number], ...] of this log: enough to find where two logs diverge."""
        upto = self.last_number if upto is None else min(upto, self.last_number)
        runs = self.log.epoch_runs(min(upto, self.durable)) if self.durable >= 0 else []
        for r in self.tail[: max(0, upto - self.durable)]:
            if not runs or runs[-1][0] != r.epoch:
                runs.append([r.epoch, r.number])
        return runs

    # ---- edits ------------------------------------------------------------
    def append(self, records: list[Record]) -> Persist:
        for r in records:
            if r.number != self.last_number + 1:
                raise BazaarError("INVALID_ARGUMENT", f"record {r.number} is not consecutive")
            self.tail.append(r)
            self.tail_keys[r.key] = r.number
        return Persist(tuple(records))

    def cut(self, number: int) -> None:
        """Forget records >= number (durable ones go too: the disk drops them later)."""
        if number <= self.durable:
            self.tail, self.tail_keys = [], {}
            self.durable = number - 1
        else:
            for r in self.tail[number - self.durable - 1 :]:
                if self.tail_keys.get(r.key) == r.number:
                    del self.tail_keys[r.key]
            del self.tail[number - self.durable - 1 :]

    def trim(self, upto: int) -> None:
        """Records up to `upto` are durable: they leave the tail."""
        done = upto - self.durable
        for r in self.tail[:done]:
            if self.tail_keys.get(r.key) == r.number:
                del self.tail_keys[r.key]
        del self.tail[:done]
        self.durable = upto

    def reset_log(self) -> None:
        """After a disk error: what is on disk is the truth (a follower's view only)."""
        self.tail, self.tail_keys = [], {}
        self.durable = self.log.last()[0]
