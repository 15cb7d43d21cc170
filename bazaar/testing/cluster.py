"""The five services as real processes on free ports, for system tests and benchmarks.

Each service is `python -m bazaar.cli <role>` with its own BAZAAR_* environment
and data dir under `root`; its output goes to `<root>/<name>.log` so a failure
can show it. Processes can be killed (SIGKILL), paused (SIGSTOP/SIGCONT) and
restarted on the same ports and data.

Where the services live is two hooks: `assign_ports` (free ports on
127.0.0.1 here) and `host_of(name)` (the address other services and the test
reach `name` at); `command` wraps the argv (tests/system/netns.py runs each
service inside a network namespace of its own by overriding these three).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bazaar.supervise import MALLOC_ENV
from bazaar.testing.http_client import healthy, http_json
from bazaar.testing.keys import session_keys_dir
from bazaar.testing.ports import free_port
from bazaar.testing.procs import stop_processes
from bazaar.testing.waiting import wait_until

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
    # Services the test stopped on purpose (kill); a wait does not fail on them.
    down: set[str] = field(default_factory=set)

    def __post_init__(self):
        self.root = Path(self.root)
        self.assign_ports()
        catalog = self.host_of("catalog")
        self.catalog_endpoint = f"tcp://{catalog}:{self.catalog_port}"
        self.pub_endpoint = f"tcp://{catalog}:{self.pub_port}"
        self.order_endpoints = {
            rid: f"tcp://{self.host_of(f'order{rid}')}:{port}"
            for rid, port in self.order_ports.items()
        }

    # ---- where the services live (hooks) -------------------------------
    def assign_ports(self) -> None:
        self.catalog_port = free_port()
        self.pub_port = free_port()
        self.order_ports = {rid: free_port() for rid in REPLICA_IDS}
        self.http_port = free_port()
        if self.metrics:
            self.metrics_ports = {name: free_port() for name in SERVICES if name != "frontend"}

    def host_of(self, name: str) -> str:  # noqa: ARG002 (a hook: subclasses place each service)
        """The address service `name` is reached at."""
        return "127.0.0.1"

    def command(self, name: str, argv: list[str]) -> list[str]:  # noqa: ARG002 (a hook, as host_of)
        """The argv that runs service `name` (`argv` as it is, here)."""
        return argv

    # ---- paths and env -----------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host_of('frontend')}:{self.http_port}"

    def data_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def order_log(self, rid: int) -> Path:
        return self.data_dir(f"order{rid}") / f"orders-{rid}.db"

    def catalog_csv(self) -> Path:
        return self.data_dir("catalog") / "catalog.csv"

    def env(self, name: str) -> dict[str, str]:
        env = {**MALLOC_ENV, **os.environ}  # glibc's arenas as `make run` and the image set them
        env.update(
            BAZAAR_CATALOG=self.catalog_endpoint,
            BAZAAR_CATALOG_PUB=self.pub_endpoint,
            BAZAAR_ORDER_REPLICAS=",".join(f"{r}={e}" for r, e in self.order_endpoints.items()),
            BAZAAR_DATA_DIR=str(self.data_dir(name)),
            BAZAAR_CACHE_SIZE=str(self.cache_size),
            BAZAAR_HTTP_PORT=str(self.http_port),
            BAZAAR_LOG_LEVEL="INFO",
            BAZAAR_KEYS_DIR=str(session_keys_dir()),  # CurveZMQ on, as in production
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
        return f"http://{self.host_of(name)}:{self.metrics_ports[name]}/metrics"

    # ---- processes ----------------------------------------------------
    def start(self, name: str) -> subprocess.Popen:
        """Start `catalog`, `order1`..`order3` or `frontend` (again)."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is already running")
        args = ["order", "--id", name.removeprefix("order")] if name.startswith("order") else [name]
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            self.command(name, [sys.executable, "-m", "bazaar.cli", *args]),
            env=self.env(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        log.close()
        self.procs[name] = proc
        self.down.discard(name)
        return proc

    def start_all(self, timeout: float = 60.0) -> Cluster:
        for name in SERVICES:
            self.start(name)
        self.wait_healthy(timeout)
        return self

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def kill(self, name: str) -> None:
        """SIGKILL and reap."""
        proc = self.procs[name]
        self.down.add(name)
        proc.send_signal(signal.SIGCONT)  # a stopped process must be able to die
        proc.kill()
        proc.wait(10)

    def restart(self, name: str) -> None:
        if self.procs.get(name) and self.procs[name].poll() is None:
            self.kill(name)
        self.start(name)

    def stop_all(self) -> None:
        stop_processes(self.procs.values())

    def running(self) -> dict[str, subprocess.Popen]:
        """The processes that should be running: all started, less those killed on purpose."""
        return {name: p for name, p in self.procs.items() if name not in self.down}

    def wait_until(self, cond, timeout: float, interval: float = 0.1, msg: str = ""):
        """wait_until that fails at once, with the log's tail, if a running service dies."""
        return wait_until(cond, timeout, interval, msg, processes=self.running(), log_dir=self.root)

    def logs(self) -> str:
        out = []
        for path in sorted(self.root.glob("*.log")):
            out.append(f"===== {path.name} =====\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    # ---- HTTP ---------------------------------------------------------
    def http(self, method: str, path: str, body=None, headers=None, timeout: float = 10.0):
        """(status, parsed JSON body) for one request; never raises on 4xx/5xx."""
        return http_json(self.url, method, path, body, headers, timeout)

    def health(self) -> dict:
        _status, body = self.http("GET", "/health", timeout=3)
        return body

    def wait_healthy(self, timeout: float = 60.0) -> dict:
        """Wait until /health says ok; fail at once if a service that should run has died."""

        def ok():
            return healthy(*self.http("GET", "/health", timeout=2))

        return self.wait_until(ok, timeout, msg="cluster healthy")

    def read_log(self, rid: int) -> list[list[str]]:
        """Replica `rid`'s records as text rows (number, name, type, quantity, key,
        trade_seq, epoch), read through a read-only connection as `bazaar export` does."""
        from bazaar.order.log import read_only_rows

        path = self.order_log(rid)
        if not path.exists():
            return []
        return [["" if v is None else str(v) for v in row] for row in read_only_rows(path)]

    def last_number(self, rid: int) -> int:
        """The highest number in replica `rid`'s log file (-1 when empty)."""
        return max((int(row[0]) for row in self.read_log(rid)), default=-1)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
