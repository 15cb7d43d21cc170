"""Hosts made of network namespaces, for multi-host system tests (issue 14).

`Hosts` builds a small LAN on this machine: a "switch" namespace holding a
bridge, and one namespace per host with a veth `eth0` plugged into it, an
address in 198.18.0.0/15 (RFC 2544's range for network tests; no route
leaves the namespaces, the root namespace gets no address) and a hosts file
naming every host. `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over
/etc/hosts for the command it runs, so getaddrinfo (libzmq's too) resolves
the names as on separate machines.

`executor(host)` gives threads that live in a host's network namespace
(setns(2) is per thread), so the test process itself can be a client on
that LAN while its main thread stays where it is.

Needs Linux, root and iproute2: `unavailable()` says why not. `close()`
removes every namespace, link and file it made, also after a failure.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_ETC = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")
SUBNET = "198.18.14"


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the suite as root, as CI does)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    probe = f"bzprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at `path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Hosts:
    """Named hosts on one bridged LAN, each its own network namespace."""

    def __init__(self, names: list[str]) -> None:
        if len(set(names)) != len(names):
            raise ValueError(f"host names must be unique: {names}")
        self.tag = f"bzmh{os.getpid() % 100000:05d}"  # unique among parallel test runs
        self.switch = f"{self.tag}-sw"
        self.addresses = {name: f"{SUBNET}.{10 + i}" for i, name in enumerate(names)}
        self._made: list[str] = []  # namespaces, for close()
        self._executors: list[ThreadPoolExecutor] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def netns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{addr} {name}\n" for name, addr in self.addresses.items()
        )
        for i, (name, addr) in enumerate(self.addresses.items()):
            ns = self.netns(name)
            _ip("netns", "add", ns)
            self._made.append(ns)
            # Both ends are made in the root namespace and moved at once; a
            # failure in between leaves them for close() to delete.
            here, there = f"{self.tag}{i}a", f"{self.tag}{i}b"
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            _ip("link", "set", here, "netns", ns)
            _ip("link", "set", there, "netns", self.switch)
            _ip("-n", ns, "link", "set", here, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "set", there, "master", "br0", "up")
            etc = NETNS_ETC / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
            # No DNS on this LAN: a name not in the hosts file fails at once.
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def exec_prefix(self, host: str) -> list[str]:
        """Prefix a command with this to run it on `host`."""
        return ["ip", "netns", "exec", self.netns(host)]

    def executor(self, host: str, workers: int = 16) -> ThreadPoolExecutor:
        """Threads inside `host`'s network namespace (names: use addresses)."""
        pool = ThreadPoolExecutor(
            workers,
            thread_name_prefix=f"netns-{host}",
            initializer=_enter_netns,
            initargs=(str(NETNS_RUN / self.netns(host)),),
        )
        self._executors.append(pool)
        return pool

    def close(self) -> None:
        """Remove everything made; safe to call twice and after a failed build."""
        for pool in self._executors:
            pool.shutdown(wait=True, cancel_futures=True)
        self._executors.clear()
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        self._made.clear()
        for i in range(len(self.addresses)):  # ends left behind by a failed move
            for end in (f"{self.tag}{i}a", f"{self.tag}{i}b"):
                if Path(f"/sys/class/net/{end}").exists():
                    subprocess.run(["ip", "link", "delete", end], capture_output=True)
