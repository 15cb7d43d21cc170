"""Shared fixtures: zmq sockets that always close; free ports, wait_until and keys re-exported.

Modelled on pyzmq's own test fixtures: every socket has LINGER 0 and is closed
at teardown, every receive has a timeout, so a broken test fails instead of
hanging or leaking.

Security is on in every test (SPEC section 2): one set of cluster keys is made
for the session in KEYS_DIR (bazaar.testing.keys), BAZAAR_KEYS_DIR points at
it and BAZAAR_INSECURE is cleared; only tests of insecure mode set it again.

The helpers themselves live in bazaar.testing (bench/ uses them too); this
file holds what is pytest's: fixtures and the wrappers that call pytest.fail.
"""

from __future__ import annotations

import pytest
import zmq

# The support package's plain asserts (Traders, check_invariants) get pytest's
# detailed messages too; this must run before anything imports it.
pytest.register_assert_rewrite("bazaar.testing")

from bazaar import security  # noqa: E402
from bazaar.testing import waiting  # noqa: E402
from bazaar.testing.keys import keys_for, session_keys_dir  # noqa: E402
from bazaar.testing.ports import free_port  # noqa: E402
from bazaar.testing.waiting import wall_budget  # noqa: E402

KEYS_DIR = session_keys_dir()

__all__ = ["KEYS_DIR", "free_port", "keys_for", "recv_with_timeout", "wait_until", "wall_budget"]


def wait_until(cond, timeout: float = 5.0, interval: float = 0.02, msg="", **watch):
    """bazaar.testing.waiting.wait_until, failing the test (pytest.fail) when it gives up.

    `processes=` / `log_dir=` (see there) make it fail at once if one of them dies.
    """
    try:
        return waiting.wait_until(cond, timeout, interval, msg, **watch)
    except waiting.WaitFailed as err:
        failure = str(err)
    pytest.fail(failure)


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
