"""A real Prometheus (Debian's package) scraping the five services while clients trade.

Asserts through Prometheus's own HTTP API: every target is up, exactly one
replica leads, orders are counted; after the leader is killed, leadership
moves and the front end's election counter rises. promtool checks every
exposition and the alert rules (with their unit tests).

Prometheus runs on loopback with a temporary config and storage, and is
stopped by its PID. Skips (with the reason) where the package is missing.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from bazaar.testing.cluster import SERVICES, Cluster
from tests.conftest import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Debian's prometheus package is not installed (apt-get install prometheus; .ci/run does)",
)


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, timeout=60, cwd=RULES
    )


def test_alert_rules_check_and_pass_their_unit_tests():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


class Prometheus:
    """A prometheus process on 127.0.0.1 with its own config and storage under `root`."""

    def __init__(self, root: Path, cluster: Cluster):
        self.port = free_port()
        self.root = root
        jobs = {"catalog": ["catalog"], "order": ["order1", "order2", "order3"]}
        scrape = [
            {
                "job_name": job,
                "scrape_interval": "1s",
                "static_configs": [
                    {"targets": [cluster.metrics_url(n).split("/")[2] for n in names]}
                ],
            }
            for job, names in jobs.items()
        ]
        scrape.append(
            {
                "job_name": "frontend",
                "scrape_interval": "1s",
                "static_configs": [{"targets": [f"127.0.0.1:{cluster.http_port}"]}],
            }
        )
        config = {"global": {"evaluation_interval": "1s"}, "scrape_configs": scrape}
        shutil.copy(RULES / "alerts.yml", root / "alerts.yml")
        config["rule_files"] = ["alerts.yml"]
        # JSON is YAML: no YAML library needed.
        (root / "prometheus.yml").write_text(json.dumps(config, indent=1))
        self.log = open(root / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def logs(self) -> str:
        return (self.root / "prometheus.log").read_text(errors="replace")[-3000:]


class Traders(threading.Thread):
    """Places small buy/sell orders until stopped; counts the acknowledged ones."""

    def __init__(self, cluster: Cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop = threading.Event()
        self.ok = 0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            kind = "buy" if i % 2 == 0 else "sell"
            i += 1
            status, _ = self.cluster.http(
                "POST", "/orders", {"name": "FishCo", "quantity": 1, "type": kind}, timeout=15
            )
            self.ok += status == 200
            self.stop.wait(0.02)


@pytest.fixture
def monitored(tmp_path, request):
    (tmp_path / "cluster").mkdir()
    (tmp_path / "prometheus").mkdir()
    cluster = Cluster(tmp_path / "cluster", metrics=True)
    prom = None
    traders = Traders(cluster)
    try:
        cluster.start_all(60)
        prom = Prometheus(tmp_path / "prometheus", cluster)
        traders.start()
        yield cluster, prom, traders
    finally:
        traders.stop.set()
        if traders.is_alive():
            traders.join(20)
        if prom is not None:
            prom.stop()
        cluster.stop_all()
        if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed:
            print(cluster.logs())
            if prom is not None:
                print(prom.logs())


def test_prometheus_sees_the_cluster_and_a_failover(monitored):
    cluster, prom, traders = monitored

    # promtool accepts every service's exposition.
    for name in SERVICES:
        with urllib.request.urlopen(cluster.metrics_url(name), timeout=5) as resp:
            body = resp.read()
        check = promtool("check", "metrics", stdin=body)
        assert check.returncode == 0, (name, check.stdout + check.stderr)

    def all_up():
        return prom.scalar("count(up == 1)") == 5 and prom.scalar("count(up)") == 5

    wait_until(all_up, 60, 0.5, "all five targets up in Prometheus")
    wait_until(lambda: prom.scalar("sum(bazaar_order_is_leader)") == 1, 60, 0.5, "one leader")
    wait_until(
        lambda: (prom.scalar('sum(rate(bazaar_orders_total{result="ok"}[5s]))') or 0) > 0,
        60,
        0.5,
        "orders counted",
    )
    wait_until(
        lambda: (
            (prom.scalar('sum(rate(bazaar_http_requests_total{route="/orders"}[5s]))') or 0) > 0
        ),
        60,
        0.5,
        "HTTP orders counted",
    )
    assert (prom.scalar("sum(bazaar_catalog_trades_total)") or 0) > 0
    assert (prom.scalar("bazaar_catalog_invalidations_total") or 0) > 0
    assert (prom.scalar("sum(bazaar_order_fsync_duration_seconds_count)") or 0) > 0
    assert (prom.scalar("sum(bazaar_catalog_fsync_duration_seconds_count)") or 0) > 0

    leader = prom.query("bazaar_order_is_leader == 1")
    assert len(leader) == 1
    old_instance = leader[0]["metric"]["instance"]
    old_leader = cluster.health()["data"]["order"]["leader"]
    assert cluster.metrics_url(f"order{old_leader}").split("/")[2] == old_instance
    elections = prom.scalar("bazaar_leader_elections_total")
    assert elections is not None and elections >= 1

    cluster.kill(f"order{old_leader}")

    def moved():
        now = prom.query("bazaar_order_is_leader == 1")
        return len(now) == 1 and now[0]["metric"]["instance"] != old_instance

    wait_until(moved, 60, 0.5, "leadership moved in Prometheus")
    wait_until(
        lambda: prom.scalar("bazaar_leader_elections_total") > elections,
        60,
        0.5,
        "bazaar_leader_elections_total rose",
    )
    wait_until(
        lambda: prom.scalar(f'up{{instance="{old_instance}"}}') == 0, 60, 0.5, "old leader down"
    )
    ok_before = traders.ok
    wait_until(lambda: traders.ok > ok_before + 5, 60, 0.2, "trading goes on after the failover")
