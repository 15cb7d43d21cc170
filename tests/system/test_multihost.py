"""The five services as five hosts, reached by name, under load with a leader kill.

Each service runs in a network namespace of its own (tests/system/multihost.py)
with its own address and hosts file; the peers are configured by host name
only (`tcp://catalog:5555`, `tcp://order2:5561`), every order replica on the
same port, services binding all interfaces. The test process trades from a
sixth host. Nothing in the code may assume loopback or one machine: if it
did, the cluster would not become healthy, or the leader kill would lose or
duplicate an order (the invariants of test_faults.py are checked the same
way). With the cluster's keys when `bazaar keys init` exists, else insecure
(printed).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from tests.system.cluster import Cluster
from tests.system.multihost import Hosts, unavailable
from tests.system.test_faults import Traders, check_invariants, kill_leader_rounds

SERVICES = ["catalog", "order1", "order2", "order3", "frontend"]
HOSTS = [*SERVICES, "client"]
ORDER_PORT = 5561  # the same on every replica: each has a host of its own


def keys_supported() -> bool:
    probe = [sys.executable, "-m", "bazaar.cli", "keys", "--help"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@dataclass
class HostsCluster(Cluster):
    """tests/system/cluster.py's Cluster, one network namespace per service."""

    hosts: Hosts | None = None
    secure: bool = False
    _client: object = field(default=None, repr=False)

    def __post_init__(self):
        self.catalog_port, self.pub_port, self.http_port = 5555, 5556, 8080
        self.order_ports = {rid: ORDER_PORT for rid in (1, 2, 3)}
        self.catalog_endpoint = "tcp://catalog:5555"
        self.order_endpoints = {rid: f"tcp://order{rid}:{ORDER_PORT}" for rid in (1, 2, 3)}
        self._client = self.hosts.executor("client")

    @property
    def url(self) -> str:
        # The test process resolves with the root's /etc/hosts: the address.
        return f"http://{self.hosts.addresses['frontend']}:{self.http_port}"

    def env(self, name: str) -> dict[str, str]:
        env = super().env(name)
        env["BAZAAR_CATALOG_PUB"] = "tcp://catalog:5556"
        env["BAZAAR_BIND_HOST"] = "0.0.0.0"
        if self.secure:
            env.setdefault("BAZAAR_KEYS_DIR", str(self.root / "keys"))
        else:
            env["BAZAAR_INSECURE"] = "1"
        return env

    def launcher(self, name: str) -> list[str]:
        return self.hosts.exec_prefix(name)

    def http(self, method, path, body=None, headers=None, timeout=10.0):
        """The request from the client host (a thread in its namespace)."""
        call = super().http
        return self._client.submit(call, method, path, body, headers, timeout).result()


@pytest.fixture
def hosts_cluster(tmp_path, request, monkeypatch):
    reason = unavailable()
    if reason:
        pytest.skip(f"multi-host test skipped: {reason}")
    monkeypatch.setenv("NO_PROXY", "*")  # urllib must not send 198.18.x to a proxy
    monkeypatch.setenv("no_proxy", "*")
    hosts = Hosts(HOSTS)
    cluster = None
    try:
        secure = keys_supported()
        if secure:
            init = [sys.executable, "-m", "bazaar.cli", "keys", "init", str(tmp_path / "keys")]
            subprocess.run(init, check=True, capture_output=True)
        print(f"multi-host: {'CurveZMQ keys' if secure else 'INSECURE (no `bazaar keys` yet)'}")
        cluster = HostsCluster(tmp_path, hosts=hosts, secure=secure)
        cluster.start_all(timeout=60)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop_all()
            if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed:
                print(cluster.logs())
        hosts.close()


def test_five_hosts_by_name_survive_a_leader_kill_under_load(hosts_cluster):
    cluster = hosts_cluster
    # Every service reached its peers by name from its own host: healthy.
    health = cluster.health()["data"]
    assert health["status"] == "ok", health
    assert all(r["up"] for r in health["order"]["replicas"].values()), health
    # Five network stacks, none of them the test's: the services really are apart.
    stacks = {os.readlink(f"/proc/{cluster.procs[s].pid}/ns/net") for s in SERVICES}
    assert len(stacks) == 5 and os.readlink("/proc/self/ns/net") not in stacks

    traders = Traders(cluster, seed=14).start()
    try:
        traders.wait_progress(20, timeout=60)
        kill_leader_rounds(cluster, traders, 2, random.Random(14))
        traders.wait_progress(20, timeout=60)
    finally:
        traders.finish()
    rows = check_invariants(cluster, traders)
    assert len(rows) >= 60
