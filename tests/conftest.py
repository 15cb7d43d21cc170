"""Shared fixtures: free ports, wait_until, zmq sockets that always close, the cluster's keys.

Modelled on pyzmq's own test fixtures: every socket has LINGER 0 and is closed
at teardown, every receive has a timeout, so a broken test fails instead of
hanging or leaking.

Security is on in every test (SPEC section 2): one set of cluster keys is made
for the session in KEYS_DIR, BAZAAR_KEYS_DIR points at it (so services, the
CLI and subprocesses find it) and BAZAAR_INSECURE is cleared; only tests of
insecure mode set it again.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import zmq

from bazaar import security

KEYS_DIR = Path(tempfile.mkdtemp(prefix="bazaar-test-keys-"))
security.init_keys(KEYS_DIR)
atexit.register(shutil.rmtree, KEYS_DIR, True)
os.environ["BAZAAR_KEYS_DIR"] = str(KEYS_DIR)
os.environ.pop("BAZAAR_INSECURE", None)


@cache
def keys_for(role: str) -> security.Keys:
    """The session's key pair of `role` (catalog, order1-3, frontend, client)."""
    return security.load_keys(KEYS_DIR, role)


_PORTS_GIVEN: set[int] = set()
_PORT_PICKER = random.Random(os.getpid() ^ time.monotonic_ns())


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on, never handed out twice in a run.

    Asking the kernel for port 0 is not enough: it may hand the same number to
    two callers in a row (CI once gave the catalog's PUB port to replica 2 as
    well), and any outgoing connection can take a number from its ephemeral
    range between our check and the service's bind. So the port is drawn from
    below that range and remembered.
    """
    low, _high = _ephemeral_range()
    first = 10000 if low > 12000 else 1024
    for _ in range(2000):
        port = _PORT_PICKER.randrange(first, low) if low > first else _kernel_port()
        if port in _PORTS_GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # zmq listens with SO_REUSEADDR, so a port in TIME_WAIT is usable for it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(cond: Callable[[], object], timeout: float = 5.0, interval: float = 0.02, msg=""):
    """Poll `cond` until it returns a truthy value; return it, or fail the test."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # the condition may fail until the system is up
            last_exc = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {msg or cond}; last error: {last_exc!r}")


def wall_budget(seconds: float) -> float:
    """`seconds` on a machine with a core per runnable process, more when it is oversubscribed.

    A SPEC deadline such as "SIGTERM stops a service well under a second" is about
    the service's own work; when the load average is many times the core count
    (parallel suites, CI neighbours) wall-clock time stretches with it, and the
    check would then measure the machine rather than the code.
    """
    overload = os.getloadavg()[0] / (os.cpu_count() or 1)
    return seconds * max(1.0, overload)


def recv_with_timeout(sock: zmq.Socket, timeout: float = 2.0) -> list[bytes]:
    if not sock.poll(int(timeout * 1000)):
        pytest.fail(f"no message within {timeout}s")
    return sock.recv_multipart()


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def make_socket(zctx):
    """Factory for raw zmq sockets (LINGER 0), all closed at teardown.

    They are CurveZMQ clients speaking as `role` to the holder of `server`'s
    key (the demo server and the catalog hold the catalog's); role=None makes
    a plaintext socket.
    """
    made: list[zmq.Socket] = []

    def factory(kind: int, role: str | None = "frontend", server: str = "catalog") -> zmq.Socket:
        sock = zctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if role is not None:
            security.secure_client(sock, keys_for(role), server)
        made.append(sock)
        return sock

    yield factory
    for sock in made:
        sock.close(0)
