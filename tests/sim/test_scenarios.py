"""Directed simulation scenarios: situations the random seeds reach too rarely.

Each builds one situation step by step on `tests.sim.world.World` (the
fake network, the real `Replica` and `Recovering` machines, the front end's
election rules) with the world's own invariant checks after every step.

A leader needs a majority of promises. The random seeds almost never show
what happens without that rule, because a front end elects the best log
among a live majority. Here a front end's view goes stale instead: it
elects replica 3 while 3's log still equals the others', and before its
`set_leader` arrives the old leader acknowledges more orders without 3.
3's whole promise round then fails (it is cut off from both peers); the
peers that hold the acknowledged records come back afterwards. With the
rule, 3 keeps asking and adopts their records; without it, 3 leads with its
short log, reconciles the catalog's trades in their own order (not the
order the old leader numbered them in) and overwrites acknowledged numbers.
"""

from __future__ import annotations

import pytest

from bazaar.order import replication as rep
from tests.sim.world import World

FE = 0
OLD, PEER, LAGGING = 1, 2, 3  # the lagging replica has the highest id: it wins a tie


def drain(world: World, limit: int = 10_000) -> None:
    """Deliver and flush until the wire is quiet, checking the invariants at every step."""
    for _ in range(limit):
        for rid in world.ids:
            world.flush(rid)
        delivered = world.deliver_one()
        world.check()
        if not delivered:
            return
    raise AssertionError("the wire did not go quiet")


def run_for(world: World, seconds: float) -> None:
    """Time passes in small ticks; the wire drains in between."""
    end = world.now + seconds
    while world.now < end - 1e-9:
        world.tick(min(0.05, end - world.now), step=0.02)
        drain(world)


def wait_until(world: World, cond, seconds: float = 10.0) -> None:
    end = world.now + seconds
    while not cond():
        assert world.now < end, "timed out in simulated time"
        run_for(world, 0.05)


def order(world: World, leader: int, key: str) -> None:
    """A client's order at `leader`: the trade at the catalog (fenced), then the record."""
    assert world.catalog_admits(leader, world.machines[leader].epoch)
    world.trades.setdefault(key, len(world.trades) + 1)
    world.open_keys.append(key)


def propose(world: World, leader: int, key: str) -> None:
    world._propose(leader, key, world.trades[key])


def cut(world: World, a, b) -> None:
    world.cut.add(frozenset((a, b)))


def heal(world: World, a, b) -> None:
    world.cut.discard(frozenset((a, b)))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("back", ["peer", "old", "both"])
@pytest.mark.parametrize("apart", [0.3, 1.5, 4.0])
def test_a_stale_election_of_a_lagging_replica_keeps_every_acknowledged_order(seed, back, apart):
    world = World(seed, faults=False)
    world.dup, world.reorder = 0.05, 0.2  # the wire duplicates and reorders, loses nothing
    name = world.fe_names[FE]

    # Replica 1 leads epoch 1; three orders are acknowledged and on every disk.
    world.fe_epoch[FE] = 1
    world.appoint(FE, OLD, 1)
    wait_until(world, lambda: world.is_serving(OLD))
    for key in ("k1", "k2", "k3"):
        order(world, OLD, key)
        propose(world, OLD, key)
    wait_until(world, lambda: all(len(world.disk[r]) == 3 for r in world.ids))
    wait_until(world, lambda: world.machines[OLD].commit == 2)

    # The front end loses replica 1 and elects among 2 and 3, whose logs are equal:
    # 3 (the highest id). Its set_leader calls are still on their way.
    cut(world, name, OLD)
    cut(world, OLD, LAGGING)
    world.elect(FE, spurious=0.0, defer=True)
    assert world.appointing[FE] == (LAGGING, 2)

    # Meanwhile 1 acknowledges three more orders with 2 alone. Two of them trade
    # in one order and are numbered in the other (two clients at once).
    for key in ("k4", "k5", "k6"):
        order(world, OLD, key)
    for key in ("k5", "k4", "k6"):
        propose(world, OLD, key)
    wait_until(world, lambda: all(k in world.acked_keys.values() for k in ("k4", "k5", "k6")))
    assert len(world.disk[LAGGING]) == 3

    # 3 loses its peers too; then the set_leader calls arrive (at 3 and 2).
    cut(world, LAGGING, PEER)
    world.elect(FE)
    assert world.machines[LAGGING].epoch == 2
    run_for(world, apart)  # its promise rounds find nobody

    # The peers holding the acknowledged records come back.
    if back in ("peer", "both"):
        heal(world, LAGGING, PEER)
    if back in ("old", "both"):
        heal(world, LAGGING, OLD)
    run_for(world, 3.0)
    world.settle()  # then every fault heals: logs converge, each trade once
    assert {world.acked_keys[n] for n in range(6)} == {f"k{i}" for i in range(1, 7)}
    assert [r.key for r in world.disk[LAGGING][:6]] == ["k1", "k2", "k3", "k5", "k4", "k6"]


def test_an_idle_leader_cut_off_from_its_followers_is_replaced():
    """No order is tried: only the heartbeats show the leader it is alone. Its
    `status` then says no majority, and the front end, which still reaches every
    replica, elects on the majority's side; after the heal the old leader follows."""
    world = World(1, faults=False)
    world.fe_epoch[FE] = 1
    world.appoint(FE, OLD, 1)
    wait_until(world, lambda: world.is_serving(OLD))
    order(world, OLD, "k1")
    propose(world, OLD, "k1")
    wait_until(world, lambda: world.machines[OLD].commit == 0 and len(world.disk[LAGGING]) == 1)
    run_for(world, 1.0)
    world.elect(FE, spurious=0.0)
    assert world.machines[OLD].epoch == 1  # idle and heard: kept

    cut(world, OLD, PEER)
    cut(world, OLD, LAGGING)
    run_for(world, rep.MAJORITY_SILENCE - 0.5)
    assert world.status(OLD)["majority"] is True  # silence is not yet absence
    world.elect(FE, spurious=0.0)
    assert world.machines[OLD].epoch == 1
    wait_until(world, lambda: world.status(OLD)["majority"] is False, 1.0)
    world.elect(FE, spurious=0.0)  # the front end's monitor
    assert world.machines[OLD].role == rep.FOLLOWER and world.machines[OLD].epoch == 2
    wait_until(world, lambda: world.is_serving(LAGGING))
    order(world, LAGGING, "k2")
    propose(world, LAGGING, "k2")
    wait_until(world, lambda: "k2" in world.acked_keys.values())

    heal(world, OLD, PEER)
    heal(world, OLD, LAGGING)
    wait_until(world, lambda: world.disk[OLD] == world.disk[LAGGING])
    world.settle()
    assert [r.key for r in world.disk[OLD]] == ["k1", "k2"]
