import pytest

from tests.system.cluster import Cluster


@pytest.fixture
def cluster(tmp_path, request):
    """All five services as real processes; logs are printed when a test fails."""
    c = Cluster(tmp_path)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()
        if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed:
            print(c.logs())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
