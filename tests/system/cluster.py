"""Run the five services as real processes on free ports, for system tests.

Each service is `python -m bazaar.cli <role>` with its own BAZAAR_* environment
and data dir under the test's tmp dir; its output goes to `<tmp>/<name>.log`
so a failing test can show it. Processes can be killed (SIGKILL), paused
(SIGSTOP/SIGCONT) and restarted on the same ports and data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import KEYS_DIR, free_port, wait_until

REPLICA_IDS = (1, 2, 3)
SERVICES = ("catalog", "order1", "order2", "order3", "frontend")


@dataclass
class Cluster:
    root: Path
    cache_size: int = 100
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    # Give catalog and replicas a /metrics port each (BAZAAR_METRICS_PORT).
    metrics: bool = False
    metrics_ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.catalog_port = free_port()
        self.pub_port = free_port()
        self.order_ports = {rid: free_port() for rid in REPLICA_IDS}
        self.http_port = free_port()
        if self.metrics:
            self.metrics_ports = {name: free_port() for name in SERVICES if name != "frontend"}
        self.catalog_endpoint = f"tcp://127.0.0.1:{self.catalog_port}"
        self.order_endpoints = {
            rid: f"tcp://127.0.0.1:{port}" for rid, port in self.order_ports.items()
        }

    # ---- paths and env -----------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def data_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def order_log(self, rid: int) -> Path:
        return self.data_dir(f"order{rid}") / f"orders-{rid}.db"

    def catalog_csv(self) -> Path:
        return self.data_dir("catalog") / "catalog.csv"

    def env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            BAZAAR_CATALOG=self.catalog_endpoint,
            BAZAAR_CATALOG_PUB=f"tcp://127.0.0.1:{self.pub_port}",
            BAZAAR_ORDER_REPLICAS=",".join(f"{r}={e}" for r, e in self.order_endpoints.items()),
            BAZAAR_DATA_DIR=str(self.data_dir(name)),
            BAZAAR_CACHE_SIZE=str(self.cache_size),
            BAZAAR_HTTP_PORT=str(self.http_port),
            BAZAAR_LOG_LEVEL="INFO",
            BAZAAR_KEYS_DIR=str(KEYS_DIR),  # CurveZMQ on, as in production
            PYTHONUNBUFFERED="1",
        )
        if name in self.metrics_ports:
            env["BAZAAR_METRICS_PORT"] = str(self.metrics_ports[name])
        env.update(self.extra_env)
        return env

    def metrics_url(self, name: str) -> str:
        """Where `name` exposes its metrics (the front end: on its HTTP port)."""
        if name == "frontend":
            return f"{self.url}/metrics"
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    # ---- processes ----------------------------------------------------
    def start(self, name: str) -> subprocess.Popen:
        """Start `catalog`, `order1`..`order3` or `frontend` (again)."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is already running")
        args = ["order", "--id", name.removeprefix("order")] if name.startswith("order") else [name]
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "bazaar.cli", *args],
            env=self.env(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_all(self, timeout: float = 20.0) -> Cluster:
        for name in SERVICES:
            self.start(name)
        self.wait_healthy(timeout)
        return self

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def kill(self, name: str) -> None:
        """SIGKILL and reap."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGCONT)  # a stopped process must be able to die
        proc.kill()
        proc.wait(10)

    def restart(self, name: str) -> None:
        if self.procs.get(name) and self.procs[name].poll() is None:
            self.kill(name)
        self.start(name)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def logs(self) -> str:
        out = []
        for path in sorted(self.root.glob("*.log")):
            out.append(f"===== {path.name} =====\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    # ---- HTTP ---------------------------------------------------------
    def http(self, method: str, path: str, body=None, headers=None, timeout: float = 10.0):
        """(status, parsed JSON body) for one request; never raises on 4xx/5xx."""
        data = None
        headers = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw

    def health(self) -> dict:
        status, body = self.http("GET", "/health", timeout=3)
        return body

    def wait_healthy(self, timeout: float = 20.0) -> dict:
        def ok():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            status, body = self.http("GET", "/health", timeout=2)
            return body if status == 200 and body["data"]["status"] == "ok" else None

        return wait_until(ok, timeout, interval=0.1, msg="cluster healthy")

    def read_log(self, rid: int) -> list[list[str]]:
        """Replica `rid`'s records as text rows (number, name, type, quantity, key,
        trade_seq, epoch), read through a read-only connection as `bazaar export` does."""
        from bazaar.order.log import read_only_rows

        path = self.order_log(rid)
        if not path.exists():
            return []
        return [["" if v is None else str(v) for v in row] for row in read_only_rows(path)]

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def rpc_client(endpoint: str, role: str, server: str, **kw):
    """An rpc.Client speaking CurveZMQ as `role` to the holder of `server`'s key."""
    from bazaar import rpc
    from tests.conftest import keys_for

    return rpc.Client(endpoint, keys=keys_for(role), server_role=server, **kw)


def wait_for(cond, timeout: float = 10.0, msg: str = ""):
    return wait_until(cond, timeout, msg=msg)


def monotonic_ms() -> float:
    return time.monotonic() * 1000
