"""`bazaar run-all` (what `make run` starts): five services, prefixed logs, Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest

from bazaar.testing.http_client import healthy, http_json
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

NAMES = ("catalog", "order1", "order2", "order3", "frontend")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is not a running service
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_run_all_starts_five_services_and_sigint_stops_them(tmp_path):
    http_port = free_port()
    env = dict(
        os.environ,
        BAZAAR_CATALOG=f"tcp://127.0.0.1:{free_port()}",
        BAZAAR_CATALOG_PUB=f"tcp://127.0.0.1:{free_port()}",
        BAZAAR_ORDER_REPLICAS=",".join(f"{r}=tcp://127.0.0.1:{free_port()}" for r in (1, 2, 3)),
        BAZAAR_DATA_DIR=str(tmp_path / "data"),
        BAZAAR_HTTP_PORT=str(http_port),
        PYTHONUNBUFFERED="1",
    )
    env.pop("BAZAAR_KEYS_DIR")  # a fresh clone: run-all makes them in <data dir>/keys
    env.pop("MALLOC_ARENA_MAX", None)  # run-all's own default is what is checked
    proc = subprocess.Popen(
        [sys.executable, "-m", "bazaar.cli", "run-all"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def reader():  # keeps the lines, and a log file for the wait's report if run-all dies
        with open(tmp_path / "run-all.log", "w") as log:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                log.write(line)
                log.flush()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        wait_until(
            lambda: healthy(
                *http_json(f"http://127.0.0.1:{http_port}", "GET", "/health", timeout=3)
            ),
            120,
            interval=0.2,
            msg="run-all healthy",
            processes={"run-all": proc},
            log_dir=tmp_path,
        )
        with urllib.request.urlopen(
            f"http://127.0.0.1:{http_port}/stocks/GameStart", timeout=5
        ) as r:
            assert json.loads(r.read())["data"]["name"] == "GameStart"
        pids = {}
        for line in list(lines):
            m = re.search(r"started (\w+) \(pid (\d+)\)", line)
            if m:
                pids[m.group(1)] = int(m.group(2))
        assert set(pids) == set(NAMES), lines[:10]
        assert all(alive(pid) for pid in pids.values())
        for pid in pids.values():  # glibc's arenas as the image sets them (supervise.MALLOC_ENV)
            with open(f"/proc/{pid}/environ", "rb") as fh:
                assert b"MALLOC_ARENA_MAX=2" in fh.read().split(b"\0")
        # The cluster's keys were made on this first start, secrets for the owner only.
        keys = tmp_path / "data" / "keys"
        for role in ("catalog", "order1", "order2", "order3", "frontend", "client"):
            assert (keys / f"{role}.key").is_file()
            assert (keys / f"{role}.key_secret").stat().st_mode & 0o777 == 0o600
        # Logs are prefixed by service name.
        prefixes = {line.split("|", 1)[0].strip() for line in lines if "|" in line}
        assert {"order3", "frontend"} <= prefixes, lines[:20]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, "\n".join(lines[-30:])
        wait_until(lambda: not any(alive(pid) for pid in pids.values()), 30, msg="children gone")
        t.join(5)
        assert any("all services stopped" in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_service_failing_at_start_stops_the_run(monkeypatch):
    """A child that exits during start-up (here: a call to nobody) ends run-all with status 1."""
    import io

    from bazaar import supervise
    from bazaar.supervise import Supervisor

    # The start-up window is 5 s; a loaded machine can take longer just to start
    # the child's interpreter, and the window's length is not what this tests.
    monkeypatch.setattr(supervise, "STARTUP_SECONDS", 120.0)

    out = io.StringIO()
    sup = Supervisor(
        [
            ("ok", ["call", "--server", "catalog", "--timeout", "30", "tcp://127.0.0.1:9", "ping"]),
            (
                "bad",
                ["call", "--server", "catalog", "--timeout", "0.2", "tcp://127.0.0.1:9", "ping"],
            ),
        ],
        out=out,
    )
    try:
        sup.start()
        assert sup.watch() == 1
    finally:
        sup.shutdown()
    assert all(proc.poll() is not None for proc in sup.procs.values())
    text = out.getvalue()
    assert "bad      | UNAVAILABLE" in text or "bad | UNAVAILABLE" in text, text
    assert "bad failed to start" in text
    assert "all services stopped" in text
