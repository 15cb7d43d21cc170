"""The test-support package itself (bazaar.testing): ports, waits that fail fast, the fake catalog."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from bazaar.errors import BazaarError
from bazaar.testing.fake_catalog import FakeCatalog
from bazaar.testing.keys import rpc_client
from bazaar.testing.ports import _ephemeral_range, free_port
from bazaar.testing.waiting import ProcessDied, WaitFailed, wait_until

CRASHING = """
import sys
for i in range(40):
    print(f"starting step {i}", flush=True)
print("fatal: the market file is corrupt", flush=True)
sys.exit(3)
"""


def spawn(tmp_path, name: str, code: str) -> subprocess.Popen:
    with open(tmp_path / f"{name}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)


def test_wait_until_fails_at_once_with_the_log_tail_of_a_process_that_died(tmp_path):
    proc = spawn(tmp_path, "svc", CRASHING)
    timeout = 120.0
    start = time.monotonic()
    with pytest.raises(ProcessDied) as died:
        wait_until(
            lambda: False, timeout, msg="svc ready", processes={"svc": proc}, log_dir=tmp_path
        )
    took = time.monotonic() - start
    message = str(died.value)
    assert "svc ready" in message and "exited with status 3" in message, message
    assert "fatal: the market file is corrupt" in message, message
    assert "starting step 39" in message and "starting step 0\n" not in message  # a tail only
    assert took < timeout / 2, f"waited {took:.1f} s for a process that had died"


def test_wait_until_returns_the_value_and_a_live_process_does_not_stop_it(tmp_path):
    proc = spawn(tmp_path, "sleeper", "import time; time.sleep(60)")
    try:
        ticks = iter(range(10))
        assert wait_until(lambda: next(ticks) >= 3 and "ok", 30, processes={"s": proc}) == "ok"
    finally:
        proc.kill()
        proc.wait()


def test_wait_until_times_out_with_the_last_error():
    def broken():
        raise ConnectionRefusedError("nobody there")

    with pytest.raises(WaitFailed) as failed:
        wait_until(broken, 0.2, msg="the service")
    assert not isinstance(failed.value, ProcessDied)
    assert "the service" in str(failed.value) and "nobody there" in str(failed.value)


def test_free_port_never_repeats_and_stays_below_the_ephemeral_range():
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    low, _ = _ephemeral_range()
    if low > 2048:
        assert max(ports) < low
    for port in ports[:20]:  # each is bindable right now
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_fake_catalog_keeps_the_catalog_contract():
    catalog = FakeCatalog(stocks=("GameStart",)).start()
    try:
        with rpc_client(catalog.endpoint, "order1", "catalog", timeout=5) as client:
            first = client.call("trade", key="k", name="GameStart", type="buy", quantity=3, epoch=1)
            again = client.call("trade", key="k", name="GameStart", type="buy", quantity=3, epoch=1)
            assert first == again and first["seq"] == 1  # idempotent by key
            stock = client.call("lookup", name="GameStart")
            assert (stock["quantity"], stock["volume"]) == (97, 3)
            assert client.call("fence", epoch=2, leader=2) == {"epoch": 2, "leader": 2}
            with pytest.raises(BazaarError) as err:
                client.call("trade", key="k2", name="GameStart", type="buy", quantity=1, epoch=1)
            assert err.value.code == "ABORTED"
            assert client.call("trades_since", after=0)["trades"] == [first]
    finally:
        catalog.stop()
