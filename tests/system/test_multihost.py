"""The five services as five hosts, reached by name, under load with a leader kill.

Each service runs in a network namespace of its own (tests/system/netns.py:
its own address on a bridge, nothing on the host's network) and, here, its
own hosts file: `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over
/etc/hosts, so getaddrinfo (libzmq's too) resolves the peers as on separate
machines. The peers are configured by host name only (`tcp://catalog:5555`,
`tcp://order2:5561`), every order replica on the same port, services binding
all interfaces; the test trades from a sixth host. Nothing in the code may
assume loopback or one machine: if it did, the cluster would not become
healthy, or the leader kills would lose or duplicate an order (checked with
bazaar.testing.traders.check_invariants). Each service's /metrics must answer on its
host's address too. With the cluster's keys (`bazaar keys init`), each
service given only the public keys and its own secret key, as a pod of
deploy/kubernetes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from bazaar.testing.cluster import REPLICA_IDS, SERVICES
from bazaar.testing.traders import Traders, check_invariants, kill_leader_rounds
from tests.system.netns import Net, NetCluster, net_cluster_for

ORDER_PORT = 5561  # the same on every replica: each has a host of its own
METRICS_PORT = 9100
NETNS_ETC = Path("/etc/netns")


@contextlib.contextmanager
def hosts_files(net: Net):
    """Every node resolves every node's name; no DNS (unknown names fail at once)."""
    table = "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in net.addr.items())
    dirs = [NETNS_ETC / net.ns(node) for node in net.nodes]
    try:
        for etc in dirs:
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(table)
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        yield
    finally:
        for etc in dirs:
            shutil.rmtree(etc, ignore_errors=True)


def own_keys(keys: Path, role: str) -> Path:
    """What a pod of deploy/kubernetes sees: the public keys and its own secret."""
    mine = keys.parent / f"keys-{role}"
    if not mine.exists():
        mine.mkdir(mode=0o700)
        for public in keys.glob("*.key"):
            shutil.copy(public, mine)
        shutil.copy(keys / f"{role}.key_secret", mine)
    return mine


@dataclass
class NamedCluster(NetCluster):
    """NetCluster with host names instead of addresses, one port for all replicas."""

    def assign_ports(self) -> None:
        super().assign_ports()
        self.order_ports = dict.fromkeys(REPLICA_IDS, ORDER_PORT)
        # /metrics on one port everywhere, as in deploy/kubernetes
        self.metrics_ports = {name: METRICS_PORT for name in SERVICES if name != "frontend"}

    def host_of(self, name: str) -> str:
        return name  # the services resolve it through their hosts files

    @property
    def url(self) -> str:
        # The test itself has no hosts file (a thread in the client's network
        # namespace, not its mount namespace): it uses the address.
        return f"http://{self.net.addr['frontend']}:{self.http_port}"

    def env(self, name: str) -> dict[str, str]:
        env = super().env(name)
        env["BAZAAR_KEYS_DIR"] = str(own_keys(self.root / "keys", name))
        return env


@pytest.fixture
def named_cluster(tmp_path, request, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "*")  # urllib must not send the LAN's addresses to a proxy
    monkeypatch.setenv("no_proxy", "*")
    init = [sys.executable, "-m", "bazaar.cli", "keys", "init", str(tmp_path / "keys")]
    subprocess.run(init, check=True, capture_output=True)

    def make(net: Net) -> NamedCluster:
        return NamedCluster(tmp_path, net=net)

    with net_cluster_for(request, make, setup=hosts_files) as cluster:
        yield cluster


def test_five_hosts_by_name_survive_leader_kills_under_load(named_cluster):
    cluster = named_cluster
    # Five network stacks, none of them the test's: the services really are apart ...
    stacks = {os.readlink(f"/proc/{cluster.procs[s].pid}/ns/net") for s in SERVICES}
    assert len(stacks) == 5 and os.readlink("/proc/self/ns/net") not in stacks
    # ... and found each other by name alone.
    for name in SERVICES:
        env = cluster.env(name)
        for var in ("BAZAAR_CATALOG", "BAZAAR_CATALOG_PUB", "BAZAAR_ORDER_REPLICAS"):
            assert not any(a in env[var] for a in cluster.net.addr.values()), env[var]
    # /health is a view refreshed in the background: right after the first
    # election it may still show the leader recovering, or a follower it has
    # not heard yet (degraded).
    health = cluster.wait_healthy()["data"]
    assert health["status"] == "ok", health
    assert all(r["up"] for r in health["order"]["replicas"].values()), health

    traders = Traders(cluster, seed=14).start()
    try:
        traders.wait_progress(20, timeout=60)
        kill_leader_rounds(cluster, traders, 2, random.Random(14))
        traders.wait_progress(20, timeout=60)
    finally:
        traders.finish()
    rows = check_invariants(cluster, traders)
    assert len(rows) >= 60

    # Each service's /metrics answers on its own host's address; one leader.
    leaders = {}
    for name in SERVICES:
        port = METRICS_PORT if name != "frontend" else cluster.http_port
        url = f"http://{cluster.net.addr[name]}:{port}/metrics"
        text = cluster.net.call(scrape, url)
        if name.startswith("order"):
            leaders[name] = metric(text, "bazaar_order_is_leader")
    assert sorted(leaders.values()) == [0.0, 0.0, 1.0], leaders

    # An admin on the client host, as deploy/kubernetes/tools/client.yaml:
    # `bazaar call` by name, the service's role found from its endpoint
    # although every replica has the same port.
    env = cluster.env("frontend")
    env["BAZAAR_KEYS_DIR"] = str(own_keys(cluster.root / "keys", "client"))
    for rid in (1, 2, 3):
        argv = [
            sys.executable,
            "-m",
            "bazaar.cli",
            "call",
            f"tcp://order{rid}:{ORDER_PORT}",
            "status",
        ]
        done = subprocess.run(
            cluster.net.command("client", argv), env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["last_number"] == len(rows) - 1, done.stdout


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")
