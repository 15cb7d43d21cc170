"""A fake network, disks and clock for the pure replication machine (500-lines style).

`Sim` owns several `Replica` machines and performs their actions the way the
service does, but in memory: `Persist`/`Truncate` go to a per-replica disk
queue (flushed by `flush`), `Send` puts a message on the wire (which may drop,
duplicate or reorder it), `Acknowledge`/`Abort` are recorded. `tick(dt)`
moves the clock. Every step is deterministic for a given seed.
"""

from __future__ import annotations

import random

from bazaar.errors import BazaarError
from bazaar.order import replication as rep
from bazaar.order.log import Record


class MemoryLog:
    """The machine's read-only log view (`rep.LogView`) over a list: a replica's disk."""

    def __init__(self, records: list[Record] | None = None):
        self.records = [] if records is None else records

    def last(self) -> tuple[int, int]:
        return (len(self.records) - 1, self.records[-1].epoch) if self.records else (-1, 0)

    def get(self, number: int) -> Record | None:
        return self.records[number] if 0 <= number < len(self.records) else None

    def epoch_at(self, number: int) -> int | None:
        record = self.get(number)
        return record.epoch if record else None

    def records_between(self, first: int, last: int) -> list[Record]:
        return self.records[max(first, 0) : last + 1]

    def number_of(self, key: str) -> int | None:
        return next((r.number for r in self.records if r.key == key), None)

    def epoch_runs(self, upto: int | None = None) -> list[list[int]]:
        runs: list[list[int]] = []
        for r in self.records[: None if upto is None else upto + 1]:
            if not runs or runs[-1][0] != r.epoch:
                runs.append([r.epoch, r.number])
        return runs


class Sim:
    def __init__(self, ids=(1, 2, 3), seed=0, drop=0.0, dup=0.0, reorder=0.0, **machine_kw):
        self.rng = random.Random(seed)
        self.drop, self.dup, self.reorder = drop, dup, reorder
        self.now = 0.0
        self.ids = list(ids)
        self.disk: dict[int, list[Record]] = {i: [] for i in ids}
        self.machines = {
            i: rep.Replica(i, self.ids, MemoryLog(self.disk[i]), **machine_kw) for i in ids
        }
        self.pending: dict[int, list] = {i: [] for i in ids}
        self.wire: list[tuple] = []  # (src, dst, kind, payload)
        self.sent: list[tuple] = []
        self.acked: dict[int, int] = dict.fromkeys(ids, -1)  # leader id -> acknowledged upto
        self.aborted: list[tuple[int, int]] = []
        self.down: set[int] = set()
        self.saved: dict[int, tuple] = {}

    # ---- performing actions ----------------------------------------------------
    def perform(self, rid: int, actions: list) -> None:
        for a in actions:
            if isinstance(a, rep.Persist | rep.Truncate):
                self.pending[rid].append(a)
            elif isinstance(a, rep.Send):
                self.sent.append((rid, a.to, a.message))
                self.put((rid, a.to, "replicate", a.message))
            elif isinstance(a, rep.Acknowledge):
                self.acked[rid] = max(self.acked[rid], a.upto)
            elif isinstance(a, rep.Abort):
                self.aborted.append((rid, a.from_number))
            elif isinstance(a, rep.SaveState):
                # Saved at once and durably, as the service does (under its lock),
                # and only then does the machine move to the new epoch.
                self.saved[rid] = (a.epoch, a.leader)
                self.perform(rid, self.machines[rid].on_saved(a.epoch, a.leader))
                self.after_save(rid)

    def after_save(self, rid: int) -> None:
        """Hook: the simulation may crash a replica between a save and its reply."""

    def replying(self, rid: int, reply: rep.ReplicateReply) -> None:
        """Hook: a `replicate` reply is about to leave `rid`."""

    def put(self, message: tuple) -> None:
        if self.rng.random() < self.drop:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            if self.wire and self.rng.random() < self.reorder:
                self.wire.insert(self.rng.randrange(len(self.wire)), message)
            else:
                self.wire.append(message)

    def flush(self, rid: int) -> None:
        """The disk of `rid` finishes every queued write (one group commit)."""
        if rid in self.down:
            return
        disk = self.disk[rid]
        for op in self.pending[rid]:
            if isinstance(op, rep.Truncate):
                del disk[op.from_number :]
            else:
                assert op.records[0].number == len(disk), (rid, op, len(disk))
                disk.extend(op.records)
        self.pending[rid] = []
        self.perform(rid, self.machines[rid].on_durable(len(disk) - 1, self.now))

    # ---- the network -------------------------------------------------------------
    def deliver_one(self) -> bool:
        if not self.wire:
            return False
        src, dst, kind, payload = self.wire.pop(0)
        if dst in self.down or src in self.down:
            return True
        machine = self.machines[dst]
        if kind == "replicate":
            try:
                actions, reply = machine.on_replicate(payload)
                if reply is None:  # a new epoch: saved first, then the batch again
                    self.perform(dst, actions)
                    if dst in self.down:
                        return True  # it died between the save and the reply
                    actions, reply = machine.on_replicate(payload)
            except BazaarError as err:
                self.put((dst, src, "reply", err))
                return True
            self.perform(dst, actions)
            self.flush(dst)  # the reply leaves only once the records are durable
            self.replying(dst, reply)
            self.put((dst, src, "reply", reply))
        else:
            self.perform(dst, machine.on_reply(src, payload, self.now))
        return True

    def run(self, steps: int = 10_000) -> None:
        """Deliver messages and flush disks until the network is quiet."""
        for _ in range(steps):
            for rid in self.ids:
                self.flush(rid)
            if not self.deliver_one():
                return

    def tick(self, dt: float, step: float = 0.02) -> None:
        """Let `dt` seconds pass, the machines ticking every `step` (a pause: step=dt)."""
        end = self.now + dt
        while self.now < end - 1e-9:
            self.now = min(self.now + step, end)
            for rid, m in self.machines.items():
                if rid not in self.down:
                    self.perform(rid, m.tick(self.now))

    # ---- scenario helpers ----------------------------------------------------------
    def elect(self, leader: int, epoch: int) -> None:
        for rid, m in self.machines.items():
            if rid not in self.down:
                self.perform(rid, m.on_set_leader(leader, epoch))
        self.perform(leader, self.machines[leader].start_leading(self.now))

    def propose(self, leader: int, key: str, quantity: int = 1) -> Record:
        record, actions = self.machines[leader].propose(
            "GameStart", "buy", quantity, key, None, self.now
        )
        self.perform(leader, actions)
        return record

    def crash(self, rid: int) -> None:
        """Lose everything not flushed; the machine is rebuilt from disk on `restart`."""
        self.down.add(rid)
        self.pending[rid] = []

    def restart(self, rid: int, **machine_kw) -> None:
        self.down.discard(rid)
        epoch, leader = self.saved.get(rid, (0, None))
        log = MemoryLog(self.disk[rid])
        self.machines[rid] = rep.Replica(rid, self.ids, log, epoch, leader, **machine_kw)

    # ---- failover ---------------------------------------------------------------------
    def peer_log(self, rid: int) -> rep.PeerLog:
        """What `catch_up` of `rid` answers: its durable records and their epoch runs."""
        disk = MemoryLog(self.disk[rid])
        return rep.PeerLog(rid, len(disk.records) - 1, disk.epoch_runs(), list(disk.records))

    def fail_over(self, leader: int, epoch: int) -> None:
        """The front end elects `leader`; it recovers from the live peers, then leads."""
        live = [r for r in self.ids if r not in self.down]
        for rid in live:
            self.perform(rid, self.machines[rid].on_set_leader(leader, epoch))
        machine = self.machines[leader]
        answers = [self.peer_log(p) for p in live if p != leader]
        truncate, best = rep.plan_catch_up(machine, answers)
        if best is not None:
            self.perform(leader, machine.adopt(truncate, best.records))
        self.flush(leader)
        self.perform(leader, machine.start_leading(self.now))
