import threading

import pytest

from bazaar.rpc import Client, Server
from tests.conftest import keys_for


@pytest.fixture
def server():
    """A demo RPC server on a random port with a few test methods (CurveZMQ, the catalog's key)."""
    srv = Server(
        "tcp://127.0.0.1:0", service="demo", replica_id=7, workers=4, keys=keys_for("catalog")
    )
    calls = {"slow": 0, "flaky": 0}
    lock = threading.Lock()
    release = threading.Event()

    @srv.method(inline=True)
    def echo(value):
        return value

    @srv.method()
    def slow(seconds: float, key: str | None = None):  # noqa: ARG001 (callers send a key)
        with lock:
            calls["slow"] += 1
        release.wait(seconds)
        return seconds

    @srv.method()
    def boom():
        raise RuntimeError("kaboom")

    srv.calls = calls
    srv.release = release
    srv.start()
    yield srv
    release.set()
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.endpoint, timeout=2.0, keys=keys_for("frontend"), server_role="catalog")
    yield c
    c.close()
