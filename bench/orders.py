"""Order service benchmark: latency, throughput, and the stall of a leader failover.

Runs real order replicas as processes (fsync on) behind a catalog, and talks
to them over RPC the way the front end does (its `OrderRouter` elects and
fails over). Prints one table:

- order latency p50/p99 with 1 session, throughput with 16 sessions, for
  three replicas (replication on) and one replica (replication off, baseline);
- the client-visible stall after `kill -9` of the leader: from the last
  acknowledgement before the kill to the first one after it.

    .venv/bin/python bench/orders.py [--rounds 3] [--seconds 3] [--catalog real|fake]

`--catalog fake` uses an in-memory catalog without fsync (isolates the order
service); `real` (the default when `bazaar.catalog` exists) runs the catalog.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bazaar import rpc, security  # noqa: E402
from bazaar.errors import BazaarError  # noqa: E402
from bazaar.testing import STOCKS  # noqa: E402
from bazaar.testing.fake_catalog import FakeCatalog  # noqa: E402
from bazaar.testing.ports import free_port  # noqa: E402
from bazaar.testing.procs import cpu_seconds, stop_processes  # noqa: E402


# ---- a catalog without disk, for --catalog fake -----------------------------------
def serve_fake_catalog(port: int) -> None:
    keys = security.load_keys(os.environ["BAZAAR_KEYS_DIR"], "catalog")
    FakeCatalog(f"tcp://127.0.0.1:{port}", STOCKS, keys=keys, workers=16).serve_forever()


# ---- processes ------------------------------------------------------------------------
class Deployment:
    def __init__(self, root: Path, replicas: int, catalog: str):
        self.root = root
        self.catalog_endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.catalog_pub = f"tcp://127.0.0.1:{free_port()}"
        self.endpoints = {rid: f"tcp://127.0.0.1:{free_port()}" for rid in range(1, replicas + 1)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.catalog_kind = catalog
        self.keys_dir = root / "keys"  # CurveZMQ, as deployed
        security.init_keys(self.keys_dir)

    def env(self, name: str) -> dict:
        env = dict(os.environ)
        env.update(
            BAZAAR_CATALOG=self.catalog_endpoint,
            BAZAAR_CATALOG_PUB=self.catalog_pub,
            BAZAAR_ORDER_REPLICAS=",".join(f"{r}={e}" for r, e in self.endpoints.items()),
            BAZAAR_DATA_DIR=str(self.root / name),
            BAZAAR_KEYS_DIR=str(self.keys_dir),
            BAZAAR_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        )
        return env

    def start(self, name: str) -> None:
        if name == "catalog" and self.catalog_kind == "fake":
            port = self.catalog_endpoint.rsplit(":", 1)[1]
            cmd = [sys.executable, __file__, "--serve-fake-catalog", port]
        elif name == "catalog":
            cmd = [sys.executable, "-m", "bazaar.cli", "catalog"]
        else:
            cmd = [sys.executable, "-m", "bazaar.cli", "order", "--id", name[5:]]
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(cmd, env=self.env(name), stdout=log, stderr=log)

    def start_all(self) -> None:
        self.start("catalog")
        for rid in self.endpoints:
            self.start(f"order{rid}")
        for endpoint in [self.catalog_endpoint, *self.endpoints.values()]:
            role = "catalog" if endpoint == self.catalog_endpoint else None
            role = role or f"order{next(r for r, e in self.endpoints.items() if e == endpoint)}"
            wait_ping(endpoint, security.load_keys(self.keys_dir, "client"), role)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def stop(self) -> None:
        stop_processes(self.procs.values())


def wait_ping(endpoint: str, keys, server_role: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rpc.call(endpoint, "ping", timeout=0.5, keys=keys, server_role=server_role)
            return
        except BazaarError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_router(dep: Deployment):
    from bazaar.frontend.leader import OrderRouter

    router = OrderRouter(dep.endpoints, keys=security.load_keys(dep.keys_dir, "frontend")).start()
    deadline = time.monotonic() + 20
    while router.leader is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return router


def one_order(router) -> None:
    router.order(uuid.uuid4().hex, STOCKS[0], "sell", 1)


# ---- measures ---------------------------------------------------------------------------
def latency(router, count: int) -> tuple[float, float]:
    for _ in range(50):
        one_order(router)  # warm up
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        one_order(router)
        samples.append(time.perf_counter() - t0)
    ms = np.array(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def throughput(router, sessions: int, seconds: float, pids=None) -> tuple[float, dict]:
    """Orders/s with `sessions` closed-loop sessions, and the CPU ms per order each
    process of `pids` ({name: pid}) spent within the measuring window."""
    stop = threading.Event()
    counts = [0] * sessions

    def session(i):
        while not stop.is_set():
            one_order(router)
            counts[i] += 1

    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    pids = pids or {}
    for t in threads:
        t.start()
    time.sleep(0.3)  # warm-up: every session has its socket and is ordering
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    done = sum(counts)
    time.sleep(seconds)
    done = max(sum(counts) - done, 1)
    cpu = {name: (cpu_seconds(pid) - before[name]) / done * 1000 for name, pid in pids.items()}
    stop.set()
    for t in threads:
        t.join()
    return done / seconds, cpu


def failover_stall(dep: Deployment, router, sessions: int = 4) -> float:
    acks: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def session():
        while not stop.is_set():
            try:
                one_order(router)
            except BazaarError:
                continue
            with lock:
                acks.append(time.monotonic())

    threads = [threading.Thread(target=session) for _ in range(sessions)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    leader = router.leader
    with lock:
        killed_at = time.monotonic()
    dep.kill(f"order{leader}")
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join()
    # The stall: the longest silence between two acknowledgements around the
    # kill (orders in flight may still be acknowledged just after it).
    around = sorted(a for a in acks if a >= killed_at - 0.5)
    return max(b - a for a, b in zip(around, around[1:], strict=False))


def run_setup(replicas: int, catalog: str, seconds: float, count: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-orders-") as tmp:
        dep = Deployment(Path(tmp), replicas, catalog)
        try:
            dep.start_all()
            router = make_router(dep)
            p50, p99 = latency(router, count)
            pids = {name: proc.pid for name, proc in dep.procs.items()}
            pids["bench (client)"] = os.getpid()
            tput, cpu = throughput(router, 16, seconds, pids)
            leader = f"order{router.leader}"
            stall = failover_stall(dep, router) if replicas > 1 else None
            router.close()
            return {
                "p50": p50,
                "p99": p99,
                "tput": tput,
                "stall": stall,
                "cpu": cpu,
                "leader": leader,
            }
        finally:
            dep.stop()


SETUPS = ((3, "3 replicas, fsync"), (1, "1 replica (no replication)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    parser.add_argument("--count", type=int, default=500, help="orders per latency run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    default_catalog = "real" if importlib.util.find_spec("bazaar.catalog.service") else "fake"
    parser.add_argument("--catalog", choices=("real", "fake"), default=default_catalog)
    parser.add_argument("--serve-fake-catalog", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake_catalog:
        serve_fake_catalog(args.serve_fake_catalog)
        return
    results: dict[str, list[dict]] = {label: [] for _, label in SETUPS}
    for _round in range(args.rounds):  # interleaved, so background load hits both alike
        for replicas, label in SETUPS:
            results[label].append(run_setup(replicas, args.catalog, args.seconds, args.count))
    print(
        f"\norders over RPC through the front end's OrderRouter; catalog: {args.catalog}; "
        f"median of {args.rounds} interleaved rounds; {os.cpu_count()} cores"
    )
    print(
        "| setup | p50 ms (1 session) | p99 ms (1 session) | orders/s (16 sessions) | stall after kill -9 of the leader |"
    )
    print("|---|---|---|---|---|")
    for _, label in SETUPS:
        runs = results[label]

        def med(key, runs=runs):
            values = [r[key] for r in runs if r[key] is not None]
            return float(np.median(values)) if values else None

        stall = med("stall")
        stall_text = f"{stall * 1000:.0f} ms" if stall is not None else "n/a"
        print(
            f"| {label} | {med('p50'):.2f} | {med('p99'):.2f} | {med('tput'):.0f} | {stall_text} |"
        )
    print(
        "\nCPU ms per order in the 16-session window (utime+stime from /proc), "
        "median (min-max) over rounds; the leader is the one elected at the start"
    )
    for _, label in SETUPS:
        runs = results[label]
        parts = []
        for name in runs[0]["cpu"]:
            values = [r["cpu"][name] for r in runs]
            role = " (leader)" if name == runs[0]["leader"] else ""
            parts.append(
                f"{name}{role} {np.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            )
        totals = [sum(v for k, v in r["cpu"].items() if not k.startswith("bench")) for r in runs]
        print(
            f"- {label}: services {np.median(totals):.2f} ({min(totals):.2f}-{max(totals):.2f}); "
            + ", ".join(parts)
        )


if __name__ == "__main__":
    main()
