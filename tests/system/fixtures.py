"""pytest glue for system tests: a cluster that always stops and shows its logs when a test fails.

`running(cluster, request)` is the one body behind every cluster fixture
(tests/system/conftest.py, the namespace fixtures in netns.py): whatever
happens, the processes stop; if the test failed, or never ran because the
set-up did, each service's log tail is printed.
"""

from __future__ import annotations

import contextlib

# Generous: CI starts five Python processes on a small, shared machine; a
# service that dies on start fails the wait at once anyway (with its log).
STARTUP_TIMEOUT = 60.0


def failed(request) -> bool:
    """Whether the test of `request` failed, or did not get to run."""
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


@contextlib.contextmanager
def running(cluster, request, start: bool = True):
    """`cluster`, started (unless start=False), stopped afterwards, logs printed on failure."""
    try:
        if start:
            cluster.start_all(STARTUP_TIMEOUT)
        yield cluster
    finally:
        cluster.stop_all()
        if failed(request):
            print(cluster.logs())
