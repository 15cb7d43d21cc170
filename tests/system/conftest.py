"""Fixtures of the system tests: the five services as processes, the fault tests' seed."""

import os
import random

import pytest

from bazaar.testing.cluster import Cluster
from tests.system.fixtures import running


@pytest.fixture
def cluster(tmp_path, request):
    """All five services as real processes, healthy; logs are printed when a test fails."""
    with running(Cluster(tmp_path), request) as c:
        yield c


@pytest.fixture
def stopped_cluster(tmp_path, request):
    """The five services' ports and data dirs, nothing started: the test starts what it needs."""
    with running(Cluster(tmp_path), request, start=False) as c:
        yield c


@pytest.fixture
def seed():
    """A random seed, printed so a failure can be replayed (BAZAAR_FAULT_SEED=...)."""
    value = int(os.environ.get("BAZAAR_FAULT_SEED") or random.randrange(1 << 32))
    print(f"\nfault-test seed: BAZAAR_FAULT_SEED={value}")
    return value


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
