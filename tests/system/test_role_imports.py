"""A service process imports what its role serves and not the click CLI (memory: docs/performance.md).

The five services run as `python -m bazaar.cli <role>`, exactly as everywhere
else, with PYTHONPROFILEIMPORTTIME=1: each one writes every module it imports
to its log. The front end loads click anyway (Flask imports it).
"""

from __future__ import annotations

import pytest

from bazaar.testing.cluster import Cluster
from tests.system.fixtures import running

pytestmark = pytest.mark.timeout(180)

# A module each role's own code imports (the role module itself is loaded with
# importlib.import_module, which -X importtime does not report).
ROLE_MODULE = {
    "catalog": "bazaar.catalog.store",
    "order1": "bazaar.order.log",
    "order2": "bazaar.order.log",
    "order3": "bazaar.order.log",
    "frontend": "bazaar.frontend.app",
}


def imported(log_text: str) -> set[str]:
    """Module names from `-X importtime` lines: `import time: self | cumulative | name`."""
    return {
        line.split("|")[2].strip()
        for line in log_text.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_services_serve_without_importing_click(tmp_path, request):
    cluster = Cluster(tmp_path, extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
    with running(cluster, request) as c:
        status, _ = c.http("GET", "/stocks/GameStart")
        assert status == 200  # the five serve: the lean start kept every function
    for name, module in ROLE_MODULE.items():
        modules = imported((tmp_path / f"{name}.log").read_text())
        assert module in modules, name  # the log did record this service's imports
        if name != "frontend":
            assert not {m for m in modules if m == "click" or m.startswith("click.")}, name
            assert "bazaar.commands" not in modules, name
        else:
            assert "click" in modules  # Flask's: the check above can see click when it is there
