"""Seeded simulation runs of the replication protocol (tests/sim/world.py).

`make test` runs BAZAAR_SIM_SEEDS seeds (300 by default) from
BAZAAR_SIM_BASE (0); `make chaos` runs thousands from a random base. A
failing seed prints the command that replays it, with the run's trace.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.world import Violation, World

BASE = int(os.environ.get("BAZAAR_SIM_BASE") or 0)
COUNT = int(os.environ.get("BAZAAR_SIM_SEEDS") or 300)
STEPS = int(os.environ.get("BAZAAR_SIM_STEPS") or 1000)
ONLY = os.environ.get("BAZAAR_SIM_SEED")
SEEDS = [int(ONLY)] if ONLY else range(BASE, BASE + COUNT)


def run(seed: int, front_ends: int) -> World:
    world = World(seed, front_ends=front_ends)
    try:
        for _ in range(STEPS):
            world.step()
        world.settle()
    except Violation as err:
        trace = "\n".join(world.trace[-40:])
        pytest.fail(
            f"{err}\nreplay: BAZAAR_SIM_SEED={seed} .venv/bin/pytest -q tests/sim\n"
            f"last events:\n{trace}",
            pytrace=False,
        )
    return world


@pytest.mark.parametrize("seed", SEEDS)
def test_seed(seed):
    world = run(seed, front_ends=1 + seed % 2)
    assert not world.trades or world.acked_keys, "trades were made but nothing was acknowledged"


def test_a_quiet_run_commits_everything():
    world = World(1, faults=False)
    for _ in range(300):
        world.step()
    world.settle()
    assert len(world.acked_keys) > 20
