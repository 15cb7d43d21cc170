"""A seeded world for the replication machine: replicas, front ends, faults, invariants.

`World` extends the fake network (`tests.unit.fake_network.Sim`: replicas'
`Replica` machines, their disks, a lossy wire) with what a cluster does around
them, driven by one `random.Random(seed)` so a seed replays exactly:

- one or two front ends that elect as `bazaar.frontend.leader` does: only
  with a majority of replicas reachable, the most up-to-date log first
  (last record's epoch, then number, then the highest id), at an epoch above
  every epoch they have seen; each front end only knows what it saw, so two
  of them may pick the same epoch for different replicas;
- a new leader's recovery as the service does it: promises from the peers
  it reaches (each flushes its in-flight records first), a majority of
  promises or no leading, the most up-to-date log adopted (`plan_catch_up`);
- a catalog as the service uses it: a trade per key at most once (a retry
  gets the first result), a fence of (epoch, leader) that refuses older
  leaders and any other leader of its epoch; a leader trades before it
  proposes, a new leader fences and then reconciles every trade whose key
  its log lacks (an orphan: traded, never committed) under a new number;
- clients placing orders at whichever replica they believe leads, and
  retrying an unanswered order with the same key;
- faults: crashes (unflushed writes lost), restarts, pauses, partitions
  (per link, both directions), disk errors (a flush fails), and the wire's
  losses, duplicates and reorderings.

After every step `check()` asserts: an acknowledged number never names
another order, and no key is acknowledged under two numbers; every
acknowledged order is durable on a majority; at most one leader
acknowledges in an epoch. `settle()` heals everything and checks that the
logs converge, identical and complete, and that the log holds every catalog
trade exactly once (conservation: orders and trades match one to one).
"""

from __future__ import annotations

import contextlib

from bazaar.errors import BazaarError
from bazaar.order import replication as rep
from tests.unit.fake_network import Sim


class Violation(AssertionError):
    pass


class World(Sim):
    def __init__(self, seed: int, front_ends: int = 1, faults: bool = True):
        super().__init__(
            seed=seed,
            drop=0.05 if faults else 0.0,
            dup=0.05 if faults else 0.0,
            reorder=0.2 if faults else 0.0,
            batch=3,
            window=3,
            follower_timeout=0.5,
            probe_interval=0.1,
        )
        self.seed = seed
        self.faults = faults
        self.paused: set[int] = set()
        self.cut: set[frozenset] = set()  # links that drop everything
        self.fe_epoch = [0] * front_ends  # the highest epoch each front end saw
        self.fe_names = [f"fe{i}" for i in range(front_ends)]
        self.acked_keys: dict[int, str] = {}  # number -> key of the acknowledged order
        self.ack_leader: dict[int, int] = {}  # epoch -> the replica that acknowledged in it
        self.keys = 0
        self.open_keys: list[str] = []  # placed, not acknowledged yet: clients retry them
        self.trades: dict[str, int] = {}  # the catalog: key -> seq
        self.fence = (0, None)  # the catalog's (epoch, leader)
        self.trace: list[str] = []

    # ---- the network ------------------------------------------------------------
    def linked(self, a, b) -> bool:
        return frozenset((a, b)) not in self.cut

    def reachable(self, src, dst: int) -> bool:
        return dst not in self.down and dst not in self.paused and self.linked(src, dst)

    def deliver_one(self) -> bool:
        if not self.wire:
            return False
        src, dst = self.wire[0][0], self.wire[0][1]
        if not self.linked(src, dst):
            self.wire.pop(0)  # lost in the partition
            return True
        if dst in self.paused or src in self.paused:
            self.wire.append(self.wire.pop(0))  # waits until the process runs again
            return True
        return super().deliver_one()

    def tick(self, dt: float, step: float = 0.02) -> None:
        """Time passes; a paused process does not run (its timers see the gap on resume)."""
        end = self.now + dt
        while self.now < end - 1e-9:
            self.now = min(self.now + step, end)
            for rid, m in self.machines.items():
                if rid not in self.down and rid not in self.paused:
                    self.perform(rid, m.tick(self.now))

    def flush(self, rid: int) -> None:
        if rid not in self.paused:
            super().flush(rid)

    # ---- actions ------------------------------------------------------------------
    def perform(self, rid: int, actions: list) -> None:
        for a in actions:
            if isinstance(a, rep.Acknowledge):
                self._acknowledged(rid, a.upto)
        super().perform(rid, actions)

    def _acknowledged(self, rid: int, upto: int) -> None:
        m = self.machines[rid]
        leader = self.ack_leader.setdefault(m.epoch, rid)
        if leader != rid:
            raise Violation(f"epoch {m.epoch}: replicas {leader} and {rid} both acknowledged")
        for n in range(upto + 1):
            record = self._record(rid, n)
            known = self.acked_keys.setdefault(n, record.key)
            if known != record.key:
                raise Violation(f"order {n} acknowledged as {known}, now acknowledged as {record}")
            if record.key in self.open_keys:
                self.open_keys.remove(record.key)
        if len(set(self.acked_keys.values())) != len(self.acked_keys):
            raise Violation("a key was acknowledged under two numbers")

    def _record(self, rid: int, n: int):
        return self.machines[rid].get(n)

    # ---- the cluster around the machines ------------------------------------------
    def elect(self, fe: int, spurious: float = 0.1) -> None:
        """Front end `fe` elects, seeing only the replicas it reaches.

        It keeps a leader that serves the top epoch with a majority, except
        with probability `spurious` (a call timed out anyway).
        """
        name = self.fe_names[fe]
        live = [r for r in self.ids if self.reachable(name, r)]
        if len(live) < len(self.ids) // 2 + 1:
            return  # no majority: no epoch spent
        top = max([self.machines[r].epoch for r in live] + [self.fe_epoch[fe]])
        for r in live:  # a leader still recovering tries again (the service's loop)
            if self.machines[r].role == rep.RECOVERING and self.machines[r].epoch == top:
                self.recover(r, top)
        serving = [
            r
            for r in live
            if self.machines[r].role == rep.LEADER
            and self.machines[r].epoch == top
            and self.machines[r].has_majority()
        ]
        if serving and self.rng.random() >= spurious:
            return  # it keeps a serving leader (now and then a call times out anyway)
        epoch = top + 1

        def rank(r):
            m = self.machines[r]
            return (m.last_epoch(), m.durable, r)

        leader = max(live, key=rank)
        self.trace.append(f"{name} elects {leader} at {epoch}")
        self.fe_epoch[fe] = epoch
        for r in live:
            try:
                self.perform(r, self.machines[r].on_set_leader(leader, epoch))
            except BazaarError as err:
                self.fe_epoch[fe] = max(self.fe_epoch[fe], err.details.get("epoch", 0))
                if r == leader:
                    return
        self.recover(leader, epoch)

    def recover(self, leader: int, epoch: int) -> None:
        """The service's recovery: promises from a majority, adopt the best log, lead."""
        m = self.machines[leader]
        if m.role != rep.RECOVERING or m.epoch != epoch:
            return
        answers = []
        for peer in self.ids:
            if peer == leader or not self.reachable(leader, peer):
                continue
            try:
                self.perform(peer, self.machines[peer].on_promise(leader, epoch))
            except BazaarError:
                continue  # ABORTED: it granted this epoch (or a later one) to another
            self.flush(peer)  # a promise waits for the records in flight
            answers.append(self.peer_log(peer)._replace(promised=True))
        try:
            truncate, best = rep.plan_recovery(m, answers)  # what the service runs
        except BazaarError:
            self.trace.append(f"{leader} has no majority for {epoch}")
            return
        if best is not None:
            self.perform(leader, m.adopt(truncate, best.records))
        self.flush(leader)
        if m.durable < m.last_number:
            return  # its disk failed meanwhile
        self.perform(leader, m.start_leading(self.now))
        if self.catalog_admits(leader, epoch):  # fence, then reconcile orphaned trades
            for key in sorted(self.trades, key=self.trades.get):
                if self.number_of(leader, key) is None:
                    self.trace.append(f"{leader} reconciles {key}")
                    self._propose(leader, key, self.trades[key])

    # ---- the catalog ------------------------------------------------------------------
    def catalog_admits(self, leader: int, epoch: int) -> bool:
        """`fence`/`trade` at (epoch, leader): raises the fence, or fences the leader off."""
        if not self.reachable(leader, "catalog"):
            return False
        fenced_epoch, fenced_leader = self.fence
        if epoch < fenced_epoch or (epoch == fenced_epoch and leader != fenced_leader):
            self.perform(leader, self.machines[leader].fenced(fenced_epoch))
            return False
        self.fence = (epoch, leader)
        return True

    def number_of(self, rid: int, key: str) -> int | None:
        m = self.machines[rid]
        lookup = getattr(m, "number_of", None)
        return lookup(key) if lookup is not None else m.keys.get(key)

    def _propose(self, leader: int, key: str, seq: int) -> None:
        record, actions = self.machines[leader].propose("GameStart", "buy", 1, key, seq, self.now)
        self.perform(leader, actions)

    def client_order(self) -> None:
        leaders = [
            r
            for r in self.ids
            if r not in self.down and r not in self.paused and self.machines[r].role == rep.LEADER
        ]
        if not leaders:
            return
        leader = self.rng.choice(leaders)
        m = self.machines[leader]
        if self.open_keys and self.rng.random() < 0.3:
            key = self.rng.choice(self.open_keys)  # a client retries with the same key
        else:
            self.keys += 1
            key = f"k{self.keys}"
            self.open_keys.append(key)
        if self.number_of(leader, key) is not None:
            return  # the leader holds it: the retry waits for its commit
        if not self.catalog_admits(leader, m.epoch):
            return
        seq = self.trades.setdefault(key, len(self.trades) + 1)  # at most once per key
        if self.rng.random() < 0.05:
            return  # the leader dies (or the call times out) between trade and record
        with contextlib.suppress(BazaarError):  # e.g. no longer leading
            self._propose(leader, key, seq)

    def disk_error(self, rid: int) -> None:
        """The next flush of `rid` fails: nothing queued reaches the disk."""
        if rid in self.down or rid in self.paused or not self.pending[rid]:
            return
        self.pending[rid] = []
        m = self.machines[rid]
        self.perform(rid, m.on_disk_error(BazaarError("UNAVAILABLE", "disk full")))
        m.reset_log()

    # ---- one random step --------------------------------------------------------------
    def step(self) -> None:
        rng = self.rng
        roll = rng.random()
        nodes = self.ids
        if roll < 0.35:
            for _ in range(rng.randrange(1, 6)):
                self.deliver_one()
        elif roll < 0.55:
            self.client_order()
        elif roll < 0.70:
            self.flush(rng.choice(nodes))
        elif roll < 0.78:
            self.tick(rng.choice((0.02, 0.1, 0.3)), step=0.02)
        elif roll < 0.83:
            self.elect(rng.randrange(len(self.fe_names)))
        elif self.faults:
            self.fault(rng.random())
        self.check()

    def fault(self, roll: float) -> None:
        rng = self.rng
        rid = rng.choice(self.ids)
        if roll < 0.2 and rid not in self.down:
            self.trace.append(f"crash {rid}")
            self.crash(rid)
            self.paused.discard(rid)
        elif roll < 0.45 and rid in self.down:
            self.trace.append(f"restart {rid}")
            self.restart(rid)
        elif roll < 0.55:
            self.paused ^= {rid}
            self.trace.append(f"pause/resume {rid}")
        elif roll < 0.75:
            a, b = rng.sample([*self.ids, *self.fe_names], 2)
            self.cut ^= {frozenset((a, b))}
            self.trace.append(f"cut/heal {a}-{b}")
        elif roll < 0.85:
            self.disk_error(rid)
        else:
            self.cut.clear()
            self.trace.append("heal all")

    # ---- invariants ----------------------------------------------------------------------
    def check(self) -> None:
        quorum = len(self.ids) // 2 + 1
        for n, key in self.acked_keys.items():
            holders = sum(
                1 for r in self.ids if len(self.disk[r]) > n and self.disk[r][n].key == key
            )
            if holders < quorum:
                raise Violation(f"acknowledged order {n} ({key}) is durable on {holders} only")

    def settle(self) -> None:
        """Heal every fault, elect, let the wire drain: logs converge, identical and complete."""
        self.cut.clear()
        self.paused.clear()
        self.drop = self.dup = self.reorder = 0.0
        for rid in list(self.down):
            self.restart(rid)
        for _ in range(30):
            self.elect(0, spurious=0.0)  # its monitor: elect unless a leader serves
            for _ in range(20_000):  # the backlog of a long chaotic run, then quiet
                for rid in self.ids:
                    self.flush(rid)
                if not self.deliver_one():
                    break
            self.tick(0.2, step=0.05)
            self.check()
            disks = [self.disk[r] for r in self.ids]
            committed = any(
                m.role == rep.LEADER and m.commit == len(disks[0]) - 1
                for m in self.machines.values()
            )
            if committed and all(d == disks[0] for d in disks) and self._all_acked(disks[0]):
                keys = [r.key for r in disks[0]]
                if sorted(keys) == sorted(self.trades):
                    return
                if len(set(keys)) != len(keys):
                    raise Violation("a key was committed twice")
                for m in self.machines.values():  # the serving leader reconciles each second
                    if m.role == rep.LEADER:
                        self.recover_orphans(m.id)
        raise Violation("logs did not converge: " + str({r: len(self.disk[r]) for r in self.ids}))

    def recover_orphans(self, leader: int) -> None:
        for key in sorted(self.trades, key=self.trades.get):
            if self.number_of(leader, key) is None:
                self._propose(leader, key, self.trades[key])

    def _all_acked(self, log) -> bool:
        return all(n < len(log) and log[n].key == k for n, k in self.acked_keys.items())
