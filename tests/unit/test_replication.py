"""The pure replication machine on a fake network and clock (no sockets, no files)."""

from __future__ import annotations

import random

import pytest

from bazaar.errors import BazaarError
from bazaar.order import replication as rep
from bazaar.order.log import Record
from tests.unit.fake_network import MemoryLog, Sim


def content(record: Record) -> tuple:
    """An order as its client knows it: everything but the epoch that stored it."""
    return (record.number, record.key, record.name, record.type, record.quantity)


def r(n: int, epoch: int = 1, key: str | None = None) -> Record:
    return Record(n, "GameStart", "buy", 1, key or f"k{n}-{epoch}", None, epoch)


# ---- epochs ----------------------------------------------------------------------
def accept(m: rep.Replica, leader: int, epoch: int) -> list:
    """What the service does with `set_leader`: save the epoch, then tell the machine."""
    actions = m.on_set_leader(leader, epoch)
    assert actions in ([], [rep.SaveState(epoch, leader)])
    return m.on_saved(epoch, leader) if actions else []


def test_set_leader_accepts_growing_epochs_and_refuses_stale_ones():
    m = rep.Replica(1, [1, 2, 3], MemoryLog([]))
    assert m.on_set_leader(3, 1) == [rep.SaveState(1, 3)]
    m.on_saved(1, 3)
    assert m.on_set_leader(3, 1) == []  # the same election again: nothing changes
    with pytest.raises(BazaarError) as err:
        m.on_set_leader(2, 1)  # same epoch, another leader
    assert err.value.code == "ABORTED" and err.value.details == {"epoch": 1}
    accept(m, 2, 5)
    with pytest.raises(BazaarError) as err:
        m.on_set_leader(3, 4)
    assert err.value.details == {"epoch": 5}
    assert (m.epoch, m.leader, m.role) == (5, 2, rep.FOLLOWER)


def test_an_epoch_is_accepted_only_once_saved():
    """Two steps: SaveState alone (nothing moves), then on_saved; a failed save
    (on_saved never comes) leaves the machine where it was, yet refuses older epochs."""
    m = rep.Replica(1, [1, 2, 3], MemoryLog([r(0)]), epoch=1, leader=3)
    msg = rep.Replicate(2, 2, 0, 1, (r(1, 2),))
    actions, reply = m.on_replicate(msg)
    assert actions == [rep.SaveState(2, 2)] and reply is None
    assert (m.epoch, m.leader, m.last_number) == (1, 3, 0)  # nothing moved yet
    with pytest.raises(BazaarError) as err:  # the save is pending: epoch 1 is stale already
        m.on_replicate(rep.Replicate(1, 3, 0, 1, (r(1, 1),)))
    assert err.value.details == {"epoch": 2}
    assert m.on_promise(2, 2) == [rep.SaveState(2, 2)]  # not saved yet: asked again, no vote
    assert m.on_saved(2, 2) == []
    assert (m.epoch, m.leader) == (2, 2) and m.pending_state is None
    actions, reply = m.on_replicate(msg)
    assert actions == [rep.Persist((r(1, 2),))] and reply.ok and reply.epoch == 2
    assert m.on_promise(2, 2) == []  # saved: the promise may leave


def test_a_leader_steps_down_only_once_the_newer_epoch_is_saved():
    sim = Sim()
    sim.elect(3, 1)
    sim.run()
    sim.propose(3, "x")
    m = sim.machines[3]
    assert m.on_set_leader(2, 2) == [rep.SaveState(2, 2)]
    assert m.role == rep.LEADER
    (abort,) = m.on_saved(2, 2)
    assert abort.from_number == 0 and abort.error.details["not_leader"]
    assert m.role == rep.FOLLOWER and m.on_saved(1, 3) == []  # a late, older save: ignored
    assert (m.epoch, m.leader) == (2, 2)


def test_replicate_from_a_stale_epoch_is_aborted_and_changes_nothing():
    m = rep.Replica(1, [1, 2, 3], MemoryLog([r(0)]), epoch=3, leader=2)
    with pytest.raises(BazaarError) as err:
        m.on_replicate(rep.Replicate(2, 3, 0, 1, (r(1, 2),)))
    assert err.value.code == "ABORTED" and err.value.details == {"epoch": 3}
    assert m.last_number == 0


def test_a_replica_named_leader_recovers_before_it_leads():
    m = rep.Replica(3, [1, 2, 3], MemoryLog([]))
    accept(m, 3, 1)
    assert m.role == rep.RECOVERING
    with pytest.raises(BazaarError) as err:
        m.propose("GameStart", "buy", 1, "k", None, 0.0)
    assert err.value.details["not_leader"] is True
    m.start_leading(0.0)
    assert m.role == rep.LEADER


def test_a_new_leader_counts_as_heard_only_the_peers_that_promised():
    """A peer cut off since before the election is never assumed present: it does
    not count toward the majority nor show as heard until it answers."""
    m = rep.Replica(3, [1, 2, 3], MemoryLog([]))
    accept(m, 3, 1)
    m.start_leading(0.0, heard_from=[1])
    assert {p: s["heard"] for p, s in m.follower_status().items()} == {1: True, 2: False}
    assert m.has_majority()  # 3 and 1
    lone = rep.Replica(3, [1, 2, 3], MemoryLog([]))
    accept(lone, 3, 1)
    lone.start_leading(0.0, heard_from=[])
    assert not lone.has_majority()


# ---- follower side -----------------------------------------------------------------
def test_gap_answers_with_own_last_number():
    m = rep.Replica(1, [1, 2, 3], MemoryLog([r(0)]), epoch=1, leader=3)
    actions, reply = m.on_replicate(rep.Replicate(1, 3, 4, 1, (r(5),)))
    assert actions == [] and reply[:4] == (1, False, 0, -1) and reply.prev == 4


def test_a_batch_that_does_not_follow_prev_is_refused_and_changes_nothing():
    m = rep.Replica(1, [1, 2, 3], MemoryLog([r(0)]), epoch=1, leader=3)
    with pytest.raises(BazaarError) as err:
        m.on_replicate(rep.Replicate(2, 3, 0, 1, (r(2), r(3))))
    assert err.value.code == "INVALID_ARGUMENT" and (m.epoch, m.last_number) == (1, 0)


def test_duplicates_are_ignored():
    m = rep.Replica(1, [1, 2, 3], MemoryLog([r(0), r(1)]), epoch=1, leader=3)
    actions, reply = m.on_replicate(rep.Replicate(1, 3, -1, None, (r(0), r(1), r(2))))
    assert actions == [rep.Persist((r(2),))]
    assert reply[:4] == (1, True, 2, 2)
    actions, reply = m.on_replicate(rep.Replicate(1, 3, -1, None, (r(0), r(1), r(2))))
    assert actions == [] and reply.ok and m.last_number == 2


def test_conflicting_tail_of_an_old_leader_is_truncated():
    m = rep.Replica(1, [1, 2, 3], MemoryLog([r(0), r(1, 1), r(2, 1)]), epoch=1, leader=3)
    msg = rep.Replicate(2, 2, 0, 1, (r(1, 2),))
    assert m.on_replicate(msg) == ([rep.SaveState(2, 2)], None)
    m.on_saved(2, 2)
    actions, reply = m.on_replicate(msg)
    assert rep.Truncate(1) in actions and actions[-1] == rep.Persist((r(1, 2),))
    assert m.records_between(0, m.last_number) == [r(0), r(1, 2)] and reply.ok


def test_prev_epoch_mismatch_points_before_the_conflicting_run():
    m = rep.Replica(1, [1, 2, 3], MemoryLog([r(0), r(1, 1), r(2, 1)]), epoch=2, leader=2)
    _, reply = m.on_replicate(rep.Replicate(2, 2, 2, 2, (r(3, 2),)))
    assert reply[:4] == (2, False, -1, -1) and reply.conflict_epoch == 1


# ---- leader side ---------------------------------------------------------------------
def test_ack_only_once_durable_on_leader_and_a_follower():
    sim = Sim()
    sim.elect(3, 1)
    sim.run()
    rec = sim.propose(3, "a")
    assert sim.acked[3] < rec.number
    sim.flush(3)  # durable on the leader: not enough while followers are up
    assert sim.acked[3] < rec.number
    sim.run()
    assert sim.acked[3] == rec.number
    assert any(rec in sim.disk[f] for f in (1, 2))


def test_follower_records_are_streamed_pipelined():
    sim = Sim(batch=2, window=3)
    sim.elect(3, 1)
    sim.run()
    for i in range(10):
        sim.propose(3, f"k{i}")
    in_flight = [m for (src, dst, m) in sim.sent if dst == 1 and m.records]
    assert len(in_flight) == 3  # the window, without waiting for any answer
    sim.run()
    assert sim.disk[1] == sim.disk[2] == sim.disk[3] and sim.acked[3] == 9


def test_no_acknowledgement_without_a_majority_however_long_followers_are_down():
    sim = Sim(follower_timeout=0.5)
    sim.elect(3, 1)
    sim.run()
    sim.crash(1)
    sim.propose(3, "a")
    sim.run()
    assert sim.acked[3] == 0  # follower 2 acknowledged: 2 of 3
    assert sim.machines[3].has_majority()
    sim.crash(2)
    sim.propose(3, "b")
    sim.run()
    sim.tick(5.0)
    sim.run()
    assert sim.acked[3] == 0  # the leader alone is never a majority
    assert not sim.machines[3].has_majority()
    assert sim.machines[3].follower_status()[1]["up"] is False


def test_follower_comes_back_catches_up_then_commits():
    sim = Sim(follower_timeout=0.5, probe_interval=0.1)
    sim.elect(3, 1)
    sim.run()
    sim.crash(1)
    sim.crash(2)
    for i in range(5):
        sim.propose(3, f"k{i}")
    sim.run()
    sim.tick(0.6)
    sim.run()
    assert sim.acked[3] == -1
    sim.restart(1)
    sim.tick(0.2)
    sim.run()
    assert sim.disk[1] == sim.disk[3]
    assert sim.acked[3] == 4  # 1 holds them now: a majority
    assert sim.machines[3].follower_status()[1]["up"] is True
    sim.propose(3, "after")
    sim.flush(3)
    assert sim.acked[3] == 4
    sim.run()
    assert sim.acked[3] == 5


def test_a_five_replica_leader_needs_two_followers():
    sim = Sim(ids=(1, 2, 3, 4, 5))
    sim.elect(5, 1)
    sim.run()
    sim.crash(1)
    sim.crash(2)
    sim.crash(3)
    sim.propose(5, "a")
    sim.run()
    assert sim.acked[5] == -1  # leader + 4: two of five
    sim.restart(3)
    for _ in range(10):
        sim.tick(0.2)
        sim.run()
    assert sim.acked[5] == 0


def test_a_follower_with_a_newer_epoch_deposes_the_leader():
    sim = Sim()
    sim.elect(3, 1)
    sim.run()
    accept(sim.machines[1], 2, 2)
    accept(sim.machines[2], 2, 2)
    sim.propose(3, "x")
    sim.run()
    assert sim.machines[3].role == rep.FOLLOWER
    assert (3, 0) in sim.aborted and sim.acked[3] == -1


def test_a_paused_leader_does_not_take_its_own_silence_for_dead_followers():
    sim = Sim(follower_timeout=0.5)
    sim.elect(3, 1)
    sim.run()
    sim.propose(3, "in-flight")
    sim.flush(3)  # durable on 3; the stream to 1 and 2 is on the wire
    for rid in (1, 2):  # meanwhile a new leader was elected
        accept(sim.machines[rid], 2, 2)
    sim.tick(5.0, step=5.0)  # SIGCONT after five seconds: the first tick sees a big gap
    assert sim.acked[3] == -1
    sim.run()  # the followers answer ABORTED: 3 steps down
    assert sim.machines[3].role == rep.FOLLOWER and sim.acked[3] == -1
    assert (3, 0) in sim.aborted


def live(sim: Sim, seconds: float) -> None:
    """Time passes as on a quiet, healthy network: every tick's messages are delivered."""
    for _ in range(round(seconds / 0.02)):
        sim.tick(0.02)
        sim.run()


def heartbeats(sim: Sim, to: int) -> int:
    return sum(1 for _, dst, m in sim.sent if dst == to and not m.records)


def test_an_idle_leader_keeps_its_majority_by_heartbeats():
    sim = Sim(follower_timeout=0.5)
    sim.elect(3, 1)
    sim.propose(3, "a")
    sim.run()
    before = heartbeats(sim, 1)
    live(sim, 10.0)  # no orders: the heartbeats are answered
    assert sim.machines[3].has_majority()
    assert all(s["alive"] and s["up"] for s in sim.machines[3].follower_status().values())
    # One every heartbeat_interval (0.1 s), give or take a tick: about 100 in 10 s.
    assert 80 <= heartbeats(sim, 1) - before <= 101


def idle_leader() -> tuple[Sim, rep.Replica]:
    """Replica 3 leads epoch 1, one order committed, then a second of quiet."""
    sim = Sim(follower_timeout=0.5, probe_interval=0.1)
    sim.elect(3, 1)
    sim.propose(3, "a")
    sim.run()
    live(sim, 1.0)
    return sim, sim.machines[3]


def test_an_idle_leader_whose_followers_fall_silent_loses_its_majority():
    """No order in flight, nothing to send: only the unanswered heartbeats show the
    silence; the majority goes after MAJORITY_SILENCE, and comes back with one answer."""
    sim, leader = idle_leader()
    sim.crash(1)
    sim.crash(2)
    silent_since = sim.now
    live(sim, rep.MAJORITY_SILENCE - 0.3)
    assert leader.has_majority()  # a loaded machine may answer late: not yet
    assert not any(s["alive"] for s in leader.follower_status().values())  # but both are down
    while leader.has_majority() and sim.now < silent_since + 10:
        live(sim, 0.02)
    # The last answer came at most a heartbeat before the silence began.
    lost_after = sim.now - silent_since
    assert rep.MAJORITY_SILENCE - leader.heartbeat_interval < lost_after
    assert lost_after <= rep.MAJORITY_SILENCE + 0.04
    live(sim, 5.0)
    assert not leader.has_majority()  # however long it stays idle
    sim.restart(1)  # one follower answers again: the leader's probes reach it
    live(sim, leader.probe_interval + 0.04)
    assert leader.has_majority()
    assert leader.follower_status()[1]["up"] and not leader.follower_status()[2]["alive"]
    assert sim.acked[3] == 0


def test_follower_status_says_which_followers_the_leader_heard_lately():
    """`heard` (what `has_majority` counts, and what /health's `replicating` shows):
    one follower cut off while the other answers; the majority holds."""
    sim, leader = idle_leader()
    assert {p: s["heard"] for p, s in leader.follower_status().items()} == {1: True, 2: True}
    sim.crash(2)
    live(sim, rep.MAJORITY_SILENCE - 0.3)
    assert leader.follower_status()[2]["heard"]  # late answers on a loaded machine: not yet
    live(sim, 0.5)
    assert {p: s["heard"] for p, s in leader.follower_status().items()} == {1: True, 2: False}
    assert leader.has_majority()
    sim.restart(2)
    live(sim, leader.probe_interval + 0.04)
    assert leader.follower_status()[2]["heard"]


def test_heartbeats_only_when_idle_and_one_at_a_time():
    sim = Sim(follower_timeout=0.5, batch=2, window=4)
    sim.elect(3, 1)
    sim.run()
    leader = sim.machines[3]
    assert leader.heartbeat_interval == pytest.approx(0.1)  # the default: follower_timeout / 5
    # Streaming (records in flight, unanswered): no heartbeat, whatever the time.
    for i in range(6):
        sim.propose(3, f"k{i}")
    sent = len(sim.sent)
    sim.tick(0.4)  # nothing delivered meanwhile
    assert [m for _, _, m in sim.sent[sent:] if not m.records] == []
    sim.run()
    sim.flush(3)
    sim.run()
    assert sim.acked[3] == 5 and leader.quiet()
    # Idle: a heartbeat per follower once heartbeat_interval passed since the last
    # message, and no second one while the first is unanswered.
    sim.tick(0.02)  # the last batch left 0.4 s ago: a heartbeat at once
    assert sorted(dst for _, dst, m in sim.sent[-2:] if not m.records) == [1, 2]
    sim.run()
    sent = len(sim.sent)
    sim.tick(leader.heartbeat_interval - 0.04)
    assert sim.sent[sent:] == []
    assert 0 < leader.idle_for(sim.now) <= 0.04 + 1e-9
    sim.tick(0.06)
    beats = sim.sent[sent:]
    assert sorted(dst for _, dst, _ in beats) == [1, 2]
    assert all(m.records == () and (m.prev_number, m.prev_epoch) == (5, 1) for _, _, m in beats)
    assert not leader.quiet() and leader.idle_for(sim.now) == 0
    sim.tick(0.3)  # still unanswered, not yet timed out (0.5 s): nothing more
    assert sim.sent[sent:] == beats
    sim.run()  # answered: quiet again, the next one a heartbeat_interval after the last
    assert leader.quiet() and leader.has_majority()
    assert leader.follower_status()[1]["last_number"] == 5


def test_an_unanswered_heartbeat_marks_the_follower_down():
    sim = Sim(follower_timeout=0.5, probe_interval=0.1)
    sim.elect(3, 1)
    sim.run()
    sim.crash(1)
    live(sim, 0.1 + 0.5 + 0.06)  # the heartbeat's interval, its timeout, a tick or two
    status = sim.machines[3].follower_status()
    assert not status[1]["alive"] and not status[1]["up"]
    assert status[2]["alive"] and status[2]["up"]
    assert sim.machines[3].has_majority()  # 2 answers: leader + follower 2


def test_a_heartbeat_on_a_follower_persists_nothing():
    """An empty replicate: the follower's existing reply path answers it, with no write."""
    m = rep.Replica(1, [1, 2, 3], MemoryLog([r(0), r(1)]), epoch=1, leader=3)
    actions, reply = m.on_replicate(rep.Replicate(1, 3, 1, 1, ()))
    assert actions == [] and reply.ok and (reply.last_number, reply.matched) == (1, 1)
    actions, reply = m.on_replicate(rep.Replicate(1, 3, 4, 1, ()))  # we lack records: a gap
    assert actions == [] and not reply.ok and reply.last_number == 1
    actions, reply = m.on_replicate(rep.Replicate(1, 3, 1, 0, ()))  # another epoch at 1
    assert actions == [] and not reply.ok
    assert m.last_number == 1 and m.durable == 1


def test_a_heartbeat_finds_a_follower_that_lost_its_tail():
    """A follower that came back with fewer records answers the heartbeat with a gap:
    the leader resends from there without waiting for a new order."""
    sim = Sim(follower_timeout=0.5)
    sim.elect(3, 1)
    for i in range(3):
        sim.propose(3, f"k{i}")
    sim.run()
    assert sim.disk[1] == sim.disk[3]
    del sim.disk[1][1:]  # its disk lost the last two records (restored from an old copy)
    sim.restart(1)
    sim.machines[1].on_saved(1, 3)
    live(sim, 0.2)
    assert sim.disk[1] == sim.disk[3]


def test_silent_followers_are_declared_down_only_after_a_timeout_we_lived_through():
    sim = Sim(follower_timeout=0.5)
    sim.elect(3, 1)
    sim.run()
    sim.crash(1)
    sim.crash(2)
    sim.propose(3, "a")
    sim.flush(3)
    for _ in range(20):
        sim.tick(0.02)
    assert sim.machines[3].follower_status()[1]["alive"]  # 0.4 s of silence: not yet down
    for _ in range(10):
        sim.tick(0.02)
    assert not sim.machines[3].follower_status()[1]["alive"]
    assert sim.machines[3].has_majority()  # a loaded machine may answer late: not yet
    for _ in range(80):
        sim.tick(0.02)
    assert not sim.machines[3].has_majority()  # 2 s without a word
    assert sim.acked[3] == -1


@pytest.mark.parametrize("seed", range(12))
def test_lossy_network_converges_and_never_acks_unreplicated(seed):
    rng = random.Random(seed)
    print("seed", seed)
    # Followers never time out while we check the rule (so none may be skipped)...
    sim = Sim(seed=seed, drop=0.1, dup=0.1, reorder=0.3, batch=3, window=4, follower_timeout=1e9)
    sim.elect(3, 1)
    for i in range(60):
        sim.propose(3, f"k{i}")
        for _ in range(rng.randrange(4)):
            sim.deliver_one()
        if rng.random() < 0.3:
            sim.flush(3)
        sim.tick(0.05)
        for n in range(sim.acked[3] + 1):  # the commit rule, checked at every step
            assert any(len(sim.disk[f]) > n for f in (1, 2)), (n, seed)
            assert len(sim.disk[3]) > n
    sim.machines[3].follower_timeout = 0.3  # ...then a lost tail is resent after a timeout
    for _ in range(100):
        sim.run()
        sim.tick(0.2)
    sim.run()
    assert sim.disk[1] == sim.disk[2] == sim.disk[3]
    assert [x.number for x in sim.disk[1]] == list(range(60)) and sim.acked[3] == 59


def test_failover_new_leader_adopts_then_old_leader_is_repaired():
    sim = Sim(follower_timeout=0.3)
    sim.elect(3, 1)
    for i in range(3):
        sim.propose(3, f"a{i}")
    sim.run()
    # 3 writes two more records that reach nobody, then dies.
    sim.down.update({1, 2})
    sim.propose(3, "lost1")
    sim.propose(3, "lost2")
    sim.flush(3)
    sim.wire.clear()
    sim.down.difference_update({1, 2})
    sim.crash(3)
    # 2 is elected: plan_catch_up over 1's log changes nothing (same log).
    truncate, best = rep.plan_catch_up(sim.machines[2], [_peer_log(sim.machines[1])])
    assert best is None
    accept(sim.machines[1], 2, 2)
    accept(sim.machines[2], 2, 2)
    sim.perform(2, sim.machines[2].start_leading(sim.now))
    sim.run()
    sim.propose(2, "b0")
    sim.run()
    # 3 restarts with its divergent tail; 2's stream repairs it.
    sim.restart(3)
    sim.tick(0.5)
    sim.run()
    sim.tick(0.5)
    sim.run()
    assert sim.disk[1] == sim.disk[2] == sim.disk[3]
    assert [x.key for x in sim.disk[3]] == ["a0", "a1", "a2", "b0"]


def _peer_log(m: rep.Replica) -> rep.PeerLog:
    return rep.PeerLog(m.id, m.last_number, m.epoch_runs(), m.records_between(0, m.last_number))


# ---- catch-up planning ------------------------------------------------------------------
def test_an_elected_replica_needs_a_majority_of_promises():
    me = rep.Replica(3, [1, 2, 3], MemoryLog([r(0)]))
    longer = rep.PeerLog(1, 1, [[1, 0]], [r(1)])
    with pytest.raises(BazaarError) as err:  # an answer, but no promise (its disk failed)
        rep.plan_recovery(me, [longer])
    assert err.value.code == "UNAVAILABLE" and "1 of 3" in err.value.message
    assert rep.plan_recovery(me, [longer._replace(promised=True)]) == (
        None,
        longer._replace(promised=True),
    )


def test_plan_prefers_the_later_epoch_then_the_longer_log():
    me = rep.Replica(3, [1, 2, 3], MemoryLog([r(0), r(1), r(2)]))  # old leader's tail
    peer = rep.PeerLog(2, 1, [[1, 0], [2, 1]], [r(1, 2)])  # newer epoch from number 1
    truncate, best = rep.plan_catch_up(me, [peer])
    assert best is peer and truncate == 1
    longer = rep.PeerLog(1, 4, [[1, 0]], [r(3), r(4)])
    truncate, best = rep.plan_catch_up(me, [longer])
    assert best is longer and truncate is None
    shorter = rep.PeerLog(1, 0, [[1, 0]], [])
    assert rep.plan_catch_up(me, [shorter]) == (None, None)
    assert rep.plan_catch_up(me, []) == (None, None)


def test_common_prefix():
    assert rep.common_prefix([[1, 0], [2, 3]], 5, [[1, 0], [3, 2]], 4) == 1
    assert rep.common_prefix([[1, 0]], 5, [[1, 0]], 2) == 2
    assert rep.common_prefix([], -1, [[1, 0]], 2) == -1
    assert rep.common_prefix([[2, 0]], 3, [[1, 0]], 3) == -1


def test_adopt_truncates_then_appends():
    m = rep.Replica(1, [1, 2, 3], MemoryLog([r(0), r(1), r(2)]))
    actions = m.adopt(1, [r(1, 2), r(2, 2)])
    assert actions == [rep.Truncate(1), rep.Persist((r(1, 2), r(2, 2)))]
    assert [m.number_of(k) for k in ("k0-1", "k1-1", "k1-2", "k2-2")] == [0, None, 1, 2]


@pytest.mark.parametrize("seed", range(20))
def test_random_leader_crashes_lose_no_acknowledged_record(seed):
    """One failure at a time: the leader crashes at random points, the highest live id
    recovers (plan_catch_up) and leads; every acknowledged record survives unchanged."""
    rng = random.Random(seed)
    print("seed", seed)
    sim = Sim(seed=seed, dup=0.1, reorder=0.2, batch=4, window=4, follower_timeout=1.0)
    epoch, leader = 1, 3
    sim.elect(leader, epoch)
    committed: dict[int, Record] = {}
    crashed_at = crashed_at_id = None
    keys = 0
    for step in range(400):
        if rng.random() < 0.6:
            keys += 1
            sim.propose(leader, f"k{keys}")
        for _ in range(rng.randrange(6)):
            sim.deliver_one()
        for rid in sim.ids:
            if rng.random() < 0.5:
                sim.flush(rid)
        sim.tick(0.01, step=0.01)
        for n in range(sim.acked[leader] + 1):  # what the leader acknowledged so far
            order = content(sim.disk[leader][n])  # a new leader may re-stamp the epoch
            assert committed.setdefault(n, order) == order, (seed, n)
        if crashed_at is not None and step - crashed_at > 20:
            sim.restart(crashed_at_id)
            crashed_at = None
        elif crashed_at is None and rng.random() < 0.04:
            sim.crash(leader)
            crashed_at, crashed_at_id = step, leader
            sim.acked[leader] = -1
            epoch += 1
            leader = max(r for r in sim.ids if r not in sim.down)
            sim.acked[leader] = -1
            sim.fail_over(leader, epoch)
    if crashed_at is not None:
        sim.restart(crashed_at_id)
    for _ in range(200):
        sim.run()
        sim.tick(0.05, step=0.01)
    sim.run()
    assert sim.disk[1] == sim.disk[2] == sim.disk[3], seed
    for n, order in committed.items():
        assert content(sim.disk[1][n]) == order, (seed, n)
    assert [r.number for r in sim.disk[1]] == list(range(len(sim.disk[1])))


def test_quiet_only_when_no_timer_can_fire():
    """The service ticks a quiet machine rarely: quiet must mean nothing in flight."""
    sim = Sim()
    leader = sim.machines[3]
    assert leader.quiet()  # a follower has no timers
    sim.elect(3, 1)  # probes every follower: in flight
    assert not leader.quiet()
    sim.run()
    assert leader.quiet()
    sim.propose(3, "a")
    assert not leader.quiet()  # a record to stream and wait for
    sim.run()
    sim.flush(3)
    sim.run()
    assert leader.quiet()
    sim.crash(1)
    sim.propose(3, "b")
    sim.run()
    sim.flush(3)
    sim.tick(1.0)  # follower 1 never answers: down, probed
    assert not leader.quiet()


def test_idle_for_is_the_time_to_the_next_heartbeat():
    """The service sleeps `idle_for` seconds: a quiet leader until its next heartbeat,
    a follower indefinitely, anything with a request out not at all."""
    sim = Sim()
    leader = sim.machines[3]
    assert leader.idle_for(0.0) == float("inf")  # a follower
    sim.elect(3, 1)
    assert leader.idle_for(sim.now) == 0  # probes out
    sim.run()
    assert leader.idle_for(sim.now) == pytest.approx(leader.heartbeat_interval)
    sim.tick(0.06)
    assert leader.idle_for(sim.now) == pytest.approx(leader.heartbeat_interval - 0.06)
    sim.tick(0.04)  # due: sent, and out
    assert leader.idle_for(sim.now) == 0
