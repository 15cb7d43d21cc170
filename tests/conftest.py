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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
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
