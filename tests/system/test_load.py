"""`bazaar load` against the five real services: zero mismatches, plots written."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(300)


def bazaar_load(cluster, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bazaar.cli", "load", "--url", cluster.url, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def test_load_verifies_every_order_and_exits_zero(cluster):
    proc = bazaar_load(cluster, "--sessions", "4", "--requests", "50", "-p", "0.5", "--seed", "7")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "seed 7" in out
    assert "mismatches: 0" in out
    for kind in ("lookup", "order", "get_order"):
        assert kind in out
    assert "p99 ms" in out
    acknowledged = int(out.split("acknowledged orders: ")[1].split(",")[0])
    assert acknowledged > 0
    # The client's view agrees with the services': every acknowledged order is in the leader's (replica 3) log.
    assert len(cluster.read_log(3)) >= acknowledged


def test_load_plot_writes_a_png(cluster, tmp_path):
    png = tmp_path / "latency.png"
    proc = bazaar_load(
        cluster, "--sessions", "2", "--requests", "20", "-p", "0.5", "--plot", str(png)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_sweep_plots_p50_against_p(cluster, tmp_path):
    png = tmp_path / "sweep.png"
    proc = bazaar_load(
        cluster, "--sessions", "2", "--requests", "10", "--sweep", "0,0.5", "--plot", str(png)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("load phase") == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_fails_on_a_dead_front_end():
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "bazaar.cli", "load", "--url", url, "--sessions", "1"]
    proc = subprocess.run(cmd + ["--requests", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout
