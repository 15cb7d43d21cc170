"""Shared fixtures: free ports, wait_until, zmq sockets that always close.

Modelled on pyzmq's own test fixtures: every socket has LINGER 0 and is closed
at teardown, every receive has a timeout, so a broken test fails instead of
hanging or leaking.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
import zmq


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
    """Factory for raw zmq sockets (LINGER 0), all closed at teardown."""
    made: list[zmq.Socket] = []

    def factory(kind: int) -> zmq.Socket:
        sock = zctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        made.append(sock)
        return sock

    yield factory
    for sock in made:
        sock.close(0)
