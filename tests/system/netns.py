"""Real network partitions for system tests: every service in a network namespace of its own.

`Net` makes (as root, with `ip` and `nft` or `iptables`) one namespace per
node plus a hub namespace holding a bridge; each node gets a veth into the
bridge and an address 10.77.0.N/24 that exists only inside this test's
namespaces (nothing is added to the host's network). `cut(a, b)` drops every
packet between two nodes (filter rules inside both nodes' namespaces, so a
TCP connection hangs as in a real partition instead of being reset);
`heal()` removes every cut. `command(node, argv)` runs a program inside a
node's namespace (`ip netns exec` execs it: the pid is the program's).

The test process itself talks to the nodes from threads that joined the
`client` node's namespace (setns(2) applies to one thread): `Net.call(fn)`
runs `fn` on such a thread. `NetCluster` is `bazaar.testing.cluster.Cluster`
laid out on a `Net` (its `assign_ports`, `host_of` and `command` hooks);
`net_cluster_for` is the one fixture body of the partition and multi-host
tests.

Everything made is removed by `close()`, also after a failure; names carry
the pid, so leftovers of a killed run never collide with a new one.
`skip_reason()` says why the harness cannot run here (not root, a tool
missing, namespaces not permitted), for a clear pytest skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bazaar.testing.cluster import REPLICA_IDS, Cluster
from bazaar.testing.keys import keys_for
from tests.system.fixtures import running

SUBNET = "10.77.0"
CLONE_NEWNET = 0x40000000
NODES = ("client", "frontend", "catalog", "order1", "order2", "order3")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:  # say why: CalledProcessError alone hides stderr
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}")
    return done


def _run_idempotent(*argv: str, attempts: int = 3) -> subprocess.CompletedProcess:
    """_run, again after a failure: `ip netns exec` once exited 255 under load for no
    lasting reason, and a heal that stops half-way would fail the whole test."""
    for attempt in range(attempts):
        try:
            return _run(*argv)
        except RuntimeError as err:
            if attempt == attempts - 1:
                raise
            print(f"retrying after: {err}")
            time.sleep(0.5)
    raise AssertionError("unreachable")


def skip_reason() -> str | None:
    """None when real partitions can be made here, else why not."""
    if os.geteuid() != 0:
        return "network partitions need root (ip netns, veth, nft/iptables)"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    if shutil.which("nft") is None and shutil.which("iptables") is None:
        return "neither nft nor iptables is installed"
    probe = f"bzprobe{os.getpid()}"
    try:
        res = _run("ip", "netns", "add", probe, check=False)
        if res.returncode != 0:
            return f"network namespaces are not permitted here: {res.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class Net:
    nodes: tuple[str, ...] = NODES
    tag: str = field(default_factory=lambda: f"bz{os.getpid() % 100000}")
    made: list[str] = field(default_factory=list)  # namespaces, for cleanup
    cuts: set[frozenset] = field(default_factory=set)

    def __post_init__(self):
        self.addr = {node: f"{SUBNET}.{i + 1}" for i, node in enumerate(self.nodes)}
        self.firewall = "nft" if shutil.which("nft") else "iptables"
        self._pool: ThreadPoolExecutor | None = None

    def ns(self, node: str) -> str:
        return f"{self.tag}-{node}"

    # ---- building and tearing down ------------------------------------------
    def open(self) -> Net:
        try:
            hub = self.ns("hub")
            self._add_ns(hub)
            _run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", hub, "link", "set", "br0", "up")
            for i, node in enumerate(self.nodes):
                ns = self.ns(node)
                self._add_ns(ns)
                port = f"p{i}"
                _run(
                    "ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                    "peer", "name", port, "netns", hub,
                )  # fmt: skip
                _run("ip", "-n", hub, "link", "set", port, "master", "br0", "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.addr[node]}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                self._firewall_init(ns)
        except BaseException:
            self.close()
            raise
        self._pool = ThreadPoolExecutor(64, "netns-client", self._enter_client)
        return self

    def _add_ns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self.made.append(ns)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for ns in reversed(self.made):  # deleting a namespace deletes its links
            _run("ip", "netns", "del", ns, check=False)
        self.made.clear()

    def __enter__(self) -> Net:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- partitions -------------------------------------------------------------
    def _firewall_init(self, ns: str) -> None:
        if self.firewall == "nft":
            script = (
                "table inet bzcut {\n"
                " chain input { type filter hook input priority 0; }\n"
                " chain output { type filter hook output priority 0; }\n"
                "}\n"
            )
            subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-f", "-"],
                input=script, text=True, capture_output=True, check=True, timeout=30,
            )  # fmt: skip

    def _drop(self, node: str, other: str) -> None:
        ns, peer = self.ns(node), self.addr[other]
        if self.firewall == "nft":
            for chain, match in (("input", "saddr"), ("output", "daddr")):
                rule = ["ip", match, peer, "drop"]
                _run("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "bzcut", chain, *rule)
        else:
            ipt = ("ip", "netns", "exec", ns, "iptables")
            _run(*ipt, "-A", "INPUT", "-s", peer, "-j", "DROP")
            _run(*ipt, "-A", "OUTPUT", "-d", peer, "-j", "DROP")

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between nodes `a` and `b` (both directions)."""
        if frozenset((a, b)) in self.cuts:
            return
        self._drop(a, b)
        self._drop(b, a)
        self.cuts.add(frozenset((a, b)))

    def partition(self, *sides: tuple[str, ...]) -> None:
        """Cut every pair of nodes that are on different sides; unnamed nodes keep all links."""
        for i, side in enumerate(sides):
            for other in sides[i + 1 :]:
                for a in side:
                    for b in other:
                        self.cut(a, b)

    def heal(self) -> None:
        for node in self.nodes:
            ns = self.ns(node)
            if self.firewall == "nft":
                for chain in ("input", "output"):
                    _run_idempotent(
                        "ip", "netns", "exec", ns, "nft", "flush", "chain", "inet", "bzcut", chain
                    )
            else:
                _run_idempotent("ip", "netns", "exec", ns, "iptables", "-F")
        self.cuts.clear()

    # ---- running things inside --------------------------------------------------
    def command(self, node: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(node), *argv]

    def _enter_client(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{self.ns('client')}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
        finally:
            os.close(fd)

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on a thread inside the `client` node's namespace."""
        if self._pool is None:
            raise RuntimeError("the network is closed")
        return self._pool.submit(fn, *args, **kwargs).result()


@dataclass
class NetCluster(Cluster):
    """The five services as processes, each in its own namespace of `net`, on fixed ports."""

    net: Net | None = None

    def assign_ports(self) -> None:
        self.catalog_port, self.pub_port, self.http_port = 5555, 5556, 8080
        self.order_ports = {rid: 5560 + rid for rid in REPLICA_IDS}

    def host_of(self, name: str) -> str:
        return self.net.addr[name]

    def command(self, name: str, argv: list[str]) -> list[str]:
        return self.net.command(name, argv)

    def env(self, name: str) -> dict[str, str]:
        env = super().env(name)
        env["BAZAAR_BIND_HOST"] = "0.0.0.0"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p
        )
        return env

    def http(self, method: str, path: str, body=None, headers=None, timeout: float = 10.0):
        return self.net.call(super().http, method, path, body, headers, timeout)

    def rpc(self, endpoint: str, method: str, **args):
        """One RPC call to a service, from inside the client's namespace (role `client`)."""
        servers = {ep: f"order{rid}" for rid, ep in self.order_endpoints.items()}
        server = servers.get(endpoint, "catalog")
        return self.net.call(_rpc_in_thread, endpoint, method, args, server)


@contextlib.contextmanager
def net_cluster_for(request, make_cluster, setup=contextlib.nullcontext):
    """A started cluster on a fresh `Net` (skips the test where namespaces cannot be made).

    `make_cluster(net)` builds it; `setup(net)` is entered around its life
    (e.g. hosts files). Stopped afterwards, logs printed if the test failed.
    """
    reason = skip_reason()
    if reason:
        pytest.skip(f"network namespaces: {reason}")
    with Net() as net, setup(net), running(make_cluster(net), request) as cluster:
        yield cluster


def _rpc_in_thread(endpoint: str, method: str, args: dict, server: str):
    # A zmq context of its own, made on this thread: its I/O thread (which
    # opens the connections) then lives in this thread's namespace too.
    import zmq

    from bazaar import rpc

    ctx = zmq.Context()
    try:
        keys = keys_for("client")
        with rpc.Client(endpoint, timeout=2, context=ctx, keys=keys, server_role=server) as client:
            return client.call_args(method, args)
    finally:
        ctx.term()
