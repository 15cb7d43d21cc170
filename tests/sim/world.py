"""A seeded world for the replication machine: replicas, front ends, faults, invariants.

`World` extends the fake network (`tests.unit.fake_network.Sim`: replicas'
`Replica` machines, their disks, a lossy wire) with what a cluster does around
them, driven by one `random.Random(seed)` so a seed replays exactly:

- one or two front ends that elect as `bazaar.frontend.leader` does, with
  its rules (`bazaar.frontend.election`) over `status` maps built as the
  service builds them: only with a majority of replicas reachable, keeping
  a leader that serves (or recovers) the top epoch with its majority, else
  the most up-to-date log first (last record's epoch, then number, then the
  highest id), at an epoch above every epoch they have seen; each front end
  only knows what it saw, so two of them may pick the same epoch for
  different replicas; half their elections send `set_leader` a step late
  (a stale view), and now and then one is a stale failover (`lose_leader`:
  the serving leader's status times out, the replica elected instead is
  cut off from its peers until after its first promise rounds);
- recovery run by the service's own machine (`bazaar.order.recovering`):
  a restarted replica catches up from its peers before it serves (requests
  to it wait meanwhile), an elected one asks for promises, adopts the best
  log, leads, fences the catalog, reconciles orphaned trades and only then
  serves; a serving leader reconciles every second. Its requests
  (`catch_up` to peers, the catalog's `fence` and `trades_since`) and their
  answers travel over the same lossy wire, paged small so paging runs;
- a catalog as the service uses it: a trade per key at most once (a retry
  gets the first result), a fence of (epoch, leader) that refuses older
  leaders and any other leader of its epoch; a leader trades before it
  proposes;
- clients placing orders at whichever replica they believe leads, and
  retrying an unanswered order with the same key; now and then an order is
  overtaken between its trade and its record, so numbers and trade seqs
  differ in order (a leader rebuilding the log from the catalog alone would
  then renumber acknowledged orders);
- faults: crashes (unflushed writes lost; now and then right after an
  epoch was saved, before the answer leaves), restarts, pauses, partitions
  (per link, both directions), disk errors (a flush fails), and the wire's
  losses, duplicates and reorderings.

After every step `check()` asserts: an acknowledged number never names
another order, and no key is acknowledged under two numbers; every
acknowledged order is durable on a majority; at most one leader
acknowledges in an epoch; and as they happen: no answer in an epoch (a
`set_leader` done, a promise, a `replicate` ok) leaves a replica before
that epoch is saved on it. `settle()` heals everything and checks that the
logs converge, identical and complete, and that the log holds every catalog
trade exactly once (conservation: orders and trades match one to one).
"""

from __future__ import annotations

import contextlib

from bazaar.errors import BazaarError
from bazaar.frontend.election import candidates, serving_leader
from bazaar.order import recovering as rec
from bazaar.order import replication as rep
from tests.unit.fake_network import MemoryLog, Sim

PAGE = 4  # records per catch_up answer: small, so recoveries page
TRADES_PAGE = 3
RECONCILE_EVERY = 1.0
STALE_FAILOVER = 0.5  # of elections seeing a serving leader and every replica: `lose_leader`
OVERTAKEN = 0.2  # of orders: traded, then overtaken by the next order before it is numbered
SPELL = 80  # steps after a stale failover's set_leader calls, then its partition heals
REQUESTS = ("replicate", "catch_up")  # what a replica still starting up cannot take yet


def nobody(_rid: int) -> bool:
    return False


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
        self.appointing: dict[int, tuple[int, int]] = {}  # fe -> (leader, epoch) not sent yet
        self.fe_names = [f"fe{i}" for i in range(front_ends)]
        self.acked_keys: dict[int, str] = {}  # number -> key of the acknowledged order
        self.ack_leader: dict[int, int] = {}  # epoch -> the replica that acknowledged in it
        self.keys = 0
        self.open_keys: list[str] = []  # placed, not acknowledged yet: clients retry them
        self.trades: dict[str, int] = {}  # the catalog: key -> seq
        self.fence = (0, None)  # the catalog's (epoch, leader)
        self.trace: list[str] = []
        self.runs: dict[int, tuple[int, rec.Recovering]] = {}  # rid -> (serial, its recovery)
        self.serial = 0
        self.serving: dict[int, int] = {}  # rid -> the epoch it serves (while it leads it)
        self.starting: set[int] = set()  # restarted, catching up before it serves
        self.reconciled_at: dict[int, float] = {}
        self.steps = 0
        self.held: tuple[int, str, int] | None = None  # an order overtaken: (leader, key, seq)
        self.spell: tuple[int, int] | None = None  # a stale failover's (isolated, step it heals)

    # ---- the network ------------------------------------------------------------
    def linked(self, a, b) -> bool:
        return frozenset((a, b)) not in self.cut

    def reachable(self, src, dst: int) -> bool:
        return dst not in self.down and dst not in self.paused and self.linked(src, dst)

    def deliver_one(self) -> bool:
        if not self.wire:
            return False
        src, dst, kind, payload = self.wire[0]
        if not self.linked(src, dst):
            self.wire.pop(0)  # lost in the partition
            return True
        if dst in self.paused or src in self.paused:
            self.wire.append(self.wire.pop(0))  # waits until the process runs again
            return True
        if (dst in self.starting or dst in self.down) and kind in REQUESTS and src not in self.down:
            # Its server is not up (yet): a pipelined `replicate` is dropped, a
            # call fails in the client's connect timeout.
            self.wire.pop(0)
            if kind == "catch_up":
                refused = BazaarError("UNAVAILABLE", f"order{dst} not connected")
                self.put((dst, src, "answer", (payload[0], payload[1], refused)))
            return True
        if kind in ("replicate", "reply"):
            super().deliver_one()
            self.poke(dst)
            return True
        self.wire.pop(0)
        if src in self.down or dst in self.down:
            return True
        if kind == "catch_up":
            self.answer_catch_up(src, dst, payload)
        elif kind in ("fence", "trades_since"):
            self.answer_catalog(src, kind, payload)
        else:  # an answer to a recovery's request
            serial, call, answer = payload
            current = self.runs.get(dst)
            if current is None or current[0] != serial:
                return True  # for a run that ended
            run = current[1]
            if isinstance(call, rec.AskPeer):
                actions = run.on_answer(call.round, src, answer, self.now)
            elif isinstance(call, rec.FetchPage):
                records = answer if isinstance(answer, BazaarError) else answer.records
                actions = run.on_page(call.round, records, getattr(answer, "more", False), self.now)
            elif isinstance(call, rec.Fence):
                actions = run.on_fence(call.round, answer, self.now)
            else:
                trades, more = answer if isinstance(answer, tuple) else (answer, False)
                actions = run.on_trades(call.round, trades, more, self.now)
            self.perform(dst, actions)
            self.poke(dst)
        return True

    def tick(self, dt: float, step: float = 0.02) -> None:
        """Time passes; a paused process does not run (its timers see the gap on resume)."""
        end = self.now + dt
        while self.now < end - 1e-9:
            self.now = min(self.now + step, end)
            for rid, m in self.machines.items():
                if rid not in self.down and rid not in self.paused:
                    self.perform(rid, m.tick(self.now))
                    self.poke(rid)
                    self.reconcile_now_and_then(rid)

    def flush(self, rid: int) -> None:
        if rid not in self.paused:
            super().flush(rid)
            self.poke(rid)

    # ---- recovery: the service's machine, its requests over the wire -------------------
    # ---- votes: saved before they leave ---------------------------------------------
    def after_save(self, rid: int) -> None:
        """Now and then the process dies right after saving an epoch, before it answers."""
        if self.faults and self.rng.random() < 0.03:
            self.trace.append(f"crash {rid} between a save and its reply")
            self.crash(rid)

    def check_vote(self, rid: int, epoch: int, leader: int | None = None) -> None:
        """An answer in `epoch` leaves `rid`: that epoch (for that leader) must be on its disk."""
        saved_epoch, saved_leader = self.saved.get(rid, (0, None))
        if saved_epoch < epoch or (
            saved_epoch == epoch and leader is not None and saved_leader != leader
        ):
            raise Violation(
                f"replica {rid} answered in epoch {epoch} (leader {leader}) "
                f"with only {(saved_epoch, saved_leader)} saved"
            )

    def replying(self, rid: int, reply: rep.ReplicateReply) -> None:
        if reply.ok:
            self.check_vote(rid, reply.epoch)

    def start_run(self, rid: int, mode: str, epoch: int | None = None) -> None:
        self.serial += 1
        run = rec.Recovering(
            self.machines[rid], mode, epoch, ask_timeout=0.2, wait_timeout=1.0, retry=0.1
        )
        self.runs[rid] = (self.serial, run)
        self.perform(rid, run.start(self.now))
        self.poke(rid)

    def poke(self, rid) -> None:
        """What the service's driver does on every change: tick the run, note its end."""
        current = self.runs.get(rid)
        if current is None or rid in self.down or rid in self.paused:
            return
        run = current[1]
        self.perform(rid, run.tick(self.now))
        if not run.finished or self.runs.get(rid) is not current:
            return
        del self.runs[rid]
        if run.mode == rec.CATCH_UP:
            self.starting.discard(rid)
            self.trace.append(f"{rid} started ({run.note})")
        elif run.mode == rec.LEAD and run.error is not None:
            self.trace.append(f"{rid} recovery for {run.epoch} ended: {run.note}")
            self.perform(rid, self.machines[rid].fenced(run.epoch))

    def reconcile_now_and_then(self, rid: int) -> None:
        """A serving leader reconciles orphaned trades every second (the service's loop)."""
        if rid in self.runs or not self.is_serving(rid):
            return
        if self.now - self.reconciled_at.get(rid, float("-inf")) >= RECONCILE_EVERY:
            self.reconciled_at[rid] = self.now
            self.start_run(rid, rec.RECONCILE, self.machines[rid].epoch)

    def is_serving(self, rid: int) -> bool:
        m = self.machines[rid]
        return m.role == rep.LEADER and self.serving.get(rid) == m.epoch

    def answer_catch_up(self, src: int, dst: int, payload) -> None:
        """`catch_up` at replica `dst`, as the service answers it (a promise with an epoch)."""
        serial, call = payload
        epoch = getattr(call, "epoch", None)
        answer: rep.PeerLog | BazaarError
        try:
            if epoch is not None:
                self.perform(dst, self.machines[dst].on_promise(src, epoch))  # saved first
        except BazaarError as err:
            answer = err
        else:
            if dst in self.down:
                return  # it died between the save and the reply
            if epoch is not None:
                self.check_vote(dst, epoch, src)
            self.flush(dst)  # a promise waits for the records in flight
            log = MemoryLog(self.disk[dst])
            last = len(self.disk[dst]) - 1
            records = self.disk[dst][call.after + 1 : call.after + 1 + PAGE]
            more = bool(records) and records[-1].number < last
            answer = rep.PeerLog(dst, last, log.epoch_runs(), records, more, epoch is not None)
        self.put((dst, src, "answer", (serial, call, answer)))

    def answer_catalog(self, src: int, kind: str, payload) -> None:
        serial, call = payload
        if kind == "fence":
            fenced_epoch, fenced_leader = self.fence
            answer: object
            if call.epoch < fenced_epoch:
                answer = {"epoch": fenced_epoch, "leader": fenced_leader}
            elif call.epoch == fenced_epoch and call.leader != fenced_leader:
                answer = BazaarError("ABORTED", "epoch taken", {"epoch": fenced_epoch})
            else:
                self.fence = (call.epoch, call.leader)
                answer = {"epoch": call.epoch, "leader": call.leader}
        else:
            after = call.after or 0
            trades = sorted((seq, key) for key, seq in self.trades.items() if seq > after)
            page = [rec.Trade(seq, key, "GameStart", "buy", 1) for seq, key in trades]
            answer = (page[:TRADES_PAGE], len(page) > TRADES_PAGE)
        self.put(("catalog", src, "answer", (serial, call, answer)))

    # ---- actions ------------------------------------------------------------------
    def perform(self, rid: int, actions: list) -> None:
        for a in actions:
            if isinstance(a, rec.AskPeer | rec.FetchPage):
                self.put((rid, a.peer, "catch_up", (self.runs[rid][0], a)))
            elif isinstance(a, rec.Fence):
                self.put((rid, "catalog", "fence", (self.runs[rid][0], a)))
            elif isinstance(a, rec.FetchTrades):
                self.put((rid, "catalog", "trades_since", (self.runs[rid][0], a)))
            elif isinstance(a, rec.Serve):
                self.serving[rid] = a.epoch
                self.trace.append(f"{rid} serves {a.epoch}")
            else:
                if isinstance(a, rep.Acknowledge):
                    self._acknowledged(rid, a.upto)
                super().perform(rid, [a])

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
    def status(self, rid: int) -> dict:
        """Replica `rid`'s `status`, as `bazaar.order.handlers` builds it."""
        m = self.machines[rid]
        run = self.runs.get(rid, (0, None))[1]
        lead_run = run if run is not None and run.mode == rec.LEAD else None
        role = rep.RECOVERING if m.role == rep.LEADER and not self.is_serving(rid) else m.role
        return {
            "id": rid,
            "role": role,
            "leader": None if m.leader == rid and m.role == rep.FOLLOWER else m.leader,
            "epoch": m.epoch,
            "last_number": m.durable if m.durable >= 0 else None,
            "last_epoch": m.last_epoch() if m.durable >= 0 else None,
            "majority": (
                m.has_majority()
                if m.role == rep.LEADER
                else lead_run.promised
                if m.role == rep.RECOVERING and lead_run is not None
                else None
            ),
            "recovering_for": (
                self.now - lead_run.started
                if role == rep.RECOVERING and lead_run is not None
                else None
            ),
        }

    def elect(self, fe: int, spurious: float = 0.1, defer: bool | None = None) -> None:
        """Front end `fe` elects with the front end's rules, seeing only the replicas it reaches.

        It keeps a leader that serves (or recovers) the top epoch with its
        majority, except with probability `spurious` (a call timed out
        anyway). Half the time (while faults run) its `set_leader` calls go
        out only at its next election step, from a view that is stale by
        then: the old leader may have committed more meanwhile, and only
        the new leader's majority of promises keeps those records.
        `defer` decides that instead (a directed scenario). Now and then it
        is a stale failover (`lose_leader`): always late, its choice cut off.
        """
        pending = self.appointing.pop(fe, None)
        if pending is not None:
            if self.spell is not None and self.spell == (pending[0], -1):
                self.spell = (pending[0], self.steps + SPELL)
            self.appoint(fe, *pending)
            return
        name = self.fe_names[fe]
        live = {
            r: self.status(r)
            for r in self.ids
            if self.reachable(name, r) and r not in self.starting
        }
        if len(live) < len(self.ids) // 2 + 1:
            return  # no majority: no epoch spent
        lost = self.lose_leader(live)
        top = max([st["epoch"] for st in live.values()] + [self.fe_epoch[fe]])
        if (
            lost is None
            and serving_leader(live, top, nobody) is not None
            and self.rng.random() >= spurious
        ):
            return  # it keeps that leader (now and then a call times out anyway)
        epoch = top + 1
        leader = candidates(live, nobody)[0]
        self.trace.append(f"{name} elects {leader} at {epoch}")
        self.fe_epoch[fe] = epoch
        if lost is not None:
            defer = True
            self.isolate(leader)
            self.spell = (leader, -1)  # no other fault until SPELL steps after the calls
        if defer is None:
            defer = self.faults and self.rng.random() < 0.5
        if defer:
            self.appointing[fe] = (leader, epoch)  # the calls are still on their way
        else:
            self.appoint(fe, leader, epoch)

    def lose_leader(self, live: dict) -> int | None:
        """A stale failover: the serving leader's `status` answer times out.

        With every replica reachable and one serving, now and then
        (STALE_FAILOVER) the front end loses the leader's answer and elects
        among the others: their logs may look equal, so it picks one the
        leader goes on committing without. Its `set_leader` calls go out at
        the next election step; the elected replica is cut off from its
        peers meanwhile, so its first promise rounds fail; nothing else
        fails for SPELL steps, then that partition heals. Only its majority
        of promises keeps the records the old leader committed meanwhile.
        """
        if not self.faults or self.spell is not None or len(live) < len(self.ids):
            return None
        serving = [r for r in live if self.is_serving(r)]
        if not serving or self.rng.random() >= STALE_FAILOVER:
            return None
        del live[serving[0]]
        self.trace.append(f"status of leader {serving[0]} lost")
        return serving[0]

    def isolate(self, rid: int) -> None:
        """Cut `rid` off from its peers (not from the front ends or the catalog)."""
        self.cut |= {frozenset((rid, p)) for p in self.ids if p != rid}
        self.trace.append(f"isolate {rid} from its peers")

    def appoint(self, fe: int, leader: int, epoch: int) -> None:
        """`set_leader(leader, epoch)` to the leader, then to the others, as the front end
        reaches them now."""
        name = self.fe_names[fe]
        for r in [leader, *(r for r in self.ids if r != leader)]:
            if not self.reachable(name, r) or r in self.starting:
                if r == leader:
                    return
                continue
            m = self.machines[r]
            was = (m.role, m.epoch)
            try:
                self.perform(r, m.on_set_leader(leader, epoch))  # saved first
            except BazaarError as err:
                self.fe_epoch[fe] = max(self.fe_epoch[fe], err.details.get("epoch", 0))
                if r == leader:
                    return
                continue
            if r in self.down:  # died between the save and the reply: no answer
                if r == leader:
                    return
                continue
            self.check_vote(r, epoch, leader)
            if m.role == rep.RECOVERING and was != (rep.RECOVERING, epoch):
                self.start_run(r, rec.LEAD, epoch)  # what set_leader starts in the service

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
            if r not in self.down and r not in self.paused and self.is_serving(r)
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
        if self.held is None and self.faults and self.rng.random() < OVERTAKEN:
            self.held = (leader, key, seq)  # numbered after the next order: numbers and
            return  # trade seqs then differ in order, as with two clients at once
        with contextlib.suppress(BazaarError):  # e.g. no longer leading
            self._propose(leader, key, seq)
        if self.held is not None:
            held, key, seq = self.held
            self.held = None
            if held == leader and self.number_of(leader, key) is None:
                with contextlib.suppress(BazaarError):
                    self._propose(leader, key, seq)

    def disk_error(self, rid: int) -> None:
        """The next flush of `rid` fails: nothing queued reaches the disk."""
        if rid in self.down or rid in self.paused or not self.pending[rid]:
            return
        self.pending[rid] = []
        m = self.machines[rid]
        self.perform(rid, m.on_disk_error(BazaarError("UNAVAILABLE", "disk full")))
        m.reset_log()

    def crash(self, rid: int) -> None:
        super().crash(rid)
        self.paused.discard(rid)
        self.starting.discard(rid)
        self.runs.pop(rid, None)
        self.serving.pop(rid, None)

    def restart(self, rid: int, **machine_kw) -> None:
        """The process starts again: it catches up from its peers before it serves."""
        super().restart(rid, **machine_kw)
        self.starting.add(rid)
        self.start_run(rid, rec.CATCH_UP)

    # ---- one random step --------------------------------------------------------------
    def step(self) -> None:
        rng = self.rng
        roll = rng.random()
        nodes = self.ids
        self.steps += 1
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
        elif self.faults and self.spell is None:
            self.fault(rng.random())
        if self.spell is not None and 0 <= self.spell[1] <= self.steps:
            isolated = self.spell[0]
            self.cut -= {frozenset((isolated, p)) for p in self.ids}
            self.trace.append(f"{isolated} rejoins its peers")
            self.spell = None
        self.check()

    def fault(self, roll: float) -> None:
        rng = self.rng
        rid = rng.choice(self.ids)
        if roll < 0.2 and rid not in self.down:
            self.trace.append(f"crash {rid}")
            self.crash(rid)
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
        self.faults = False
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
                self.is_serving(m.id) and m.commit == len(disks[0]) - 1
                for m in self.machines.values()
            )
            if committed and all(d == disks[0] for d in disks) and self._all_acked(disks[0]):
                keys = [r.key for r in disks[0]]
                if sorted(keys) == sorted(self.trades):
                    return
                if len(set(keys)) != len(keys):
                    raise Violation("a key was committed twice")
                # else: the serving leader reconciles the orphans within a second
        raise Violation("logs did not converge: " + str({r: len(self.disk[r]) for r in self.ids}))

    def _all_acked(self, log) -> bool:
        return all(n < len(log) and log[n].key == k for n, k in self.acked_keys.items())
