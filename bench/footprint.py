"""Memory footprint of the five services (goal: <= 120 MB of RSS in total).

Starts catalog, order 1-3 and the front end as native processes (the same
`python -m bazaar.cli <role>` the system tests run), measures each one's
memory when idle, runs a mixed `bazaar load` in its own process (so the load
client's memory is not counted), and measures again:

    RSS    resident set (what `ps` shows; counts shared libraries in full
           for every process)
    PSS    proportional set: shared pages split between the processes that
           map them (the fairer sum over five processes)
    peak   VmHWM, the highest RSS the process ever had

    .venv/bin/python bench/footprint.py [--sessions 8 --requests 200 -p 0.5]
        [--containers FILE]   also print the container figures that
                              scripts/container-test.sh wrote to FILE
                              (BAZAAR_FOOTPRINT_OUT=FILE make container-test)
        [--imports]           RSS of a bare interpreter after importing each
                              role's module: where the baseline memory goes
        [--metrics]           catalog and replicas also serve /metrics
                              (BAZAAR_METRICS_PORT), as docker-compose.yml
                              does by default: prometheus_client loaded

    .venv/bin/python bench/footprint.py --history [--sizes 10000,100000,1000000]
    .venv/bin/python bench/footprint.py --http-history 10000,100000

History mode (memory must not grow with the history): one order
replica process, fed as a follower through its own `replicate` method
(batches of 4,000 records: the service's machine, group commit and SQLite
transaction, as in production) up to each size; after each size it answers
2,000 random `get_order`s and a few `catch_up` pages across the whole log,
then its RSS is read. At the largest size it is restarted to time the
start-up, and `get_order` over RPC is timed (p50/p99). Then the same for the
catalog (`bench/catalog_history.py`: trades appended through the store's
commit statement with the catalog stopped, then the catalog started (timed)
and exercised over RPC: retries of old keys, new trades, `trades_since`).

HTTP history mode: the five services under `bazaar load` (16 sessions,
every iteration an order) until each number of committed orders; RSS of
every service after each.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The repo root instead of bench/ (whose http.py would shadow the stdlib's).
sys.path[0] = str(ROOT)

from bazaar import rpc  # noqa: E402
from bazaar.order.log import Record  # noqa: E402
from bazaar.testing.cluster import Cluster  # noqa: E402
from bazaar.testing.keys import rpc_client  # noqa: E402
from bazaar.testing.procs import proc_kb  # noqa: E402
from bazaar.testing.waiting import wait_until  # noqa: E402
from bench.catalog_history import history as catalog_history  # noqa: E402

SERVICES = ("catalog", "order1", "order2", "order3", "frontend")
GOAL_MB = 120
ROLE_MODULES = {
    "catalog": "bazaar.catalog.service",
    "order": "bazaar.order.service",
    "frontend": "bazaar.frontend.server",
}


def mb(kb: float) -> str:
    return f"{kb / 1024:6.1f}"


def table(rows: list[tuple[str, dict[str, int], dict[str, int]]]) -> str:
    lines = [
        "| service | idle RSS MB | after load RSS MB | after load PSS MB | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    totals = [0, 0, 0, 0]
    for name, idle, after in rows:
        vals = [idle["VmRSS"], after["VmRSS"], after["Pss"], after["VmHWM"]]
        totals = [t + v for t, v in zip(totals, vals, strict=True)]
        lines.append(f"| {name} | " + " | ".join(mb(v).strip() for v in vals) + " |")
    lines.append("| **total** | " + " | ".join(f"**{mb(v).strip()}**" for v in totals) + " |")
    return "\n".join(lines)


def import_costs() -> str:
    """RSS of `python -c 'import X'` per role module, beside a bare interpreter."""
    code = (
        "import importlib, sys\n"
        "if sys.argv[1] != '-': importlib.import_module(sys.argv[1])\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')))"
    )
    lines = ["| module | RSS after import MB |", "|---|---:|"]
    mods = ("-", "zmq", "msgpack", "click", "prometheus_client", "flask", "granian", "bazaar.role")
    for mod in (*mods, *ROLE_MODULES.values()):
        res = subprocess.run(
            [sys.executable, "-c", code, mod], capture_output=True, text=True, cwd=ROOT
        )
        value = mb(int(res.stdout)) if res.returncode == 0 else "error"
        lines.append(f"| {'(bare python)' if mod == '-' else mod} | {value.strip()} |")
    return "\n".join(lines)


def containers_table(path: str) -> str:
    """The `name rss_kb pss_kb` lines that scripts/container-test.sh writes."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    lines = ["| container | RSS MB | PSS MB |", "|---|---:|---:|"]
    lines += [
        f"| {name} | {mb(int(rss)).strip()} | {mb(int(pss)).strip()} |" for name, rss, pss in rows
    ]
    rss_total = sum(int(r[1]) for r in rows)
    pss_total = sum(int(r[2]) for r in rows)
    lines.append(f"| **total** | **{mb(rss_total).strip()}** | **{mb(pss_total).strip()}** |")
    return "\n".join(lines)


# ---- history mode -----------------------------------------------------------------------
HISTORY_BATCH = 4000
NAMES = ("GameStart", "FishCo", "BoarCo", "MenhirCo", "BoarCo", "FishCo")


def fake_record(n: int) -> Record:
    kind = "buy" if n % 2 else "sell"
    return Record(n, NAMES[n % len(NAMES)], kind, 1 + n % 9, uuid.uuid4().hex, n + 1, 1)


def feed(client: rpc.Client, start: int, end: int) -> None:
    """Records start..end-1 into a follower through `replicate`, as a leader of epoch 1 would."""
    n = start
    while n < end:
        batch = [fake_record(i).to_wire() for i in range(n, min(n + HISTORY_BATCH, end))]
        res = client.call(
            "replicate",
            epoch=1,
            leader=2,
            records=batch,
            prev_number=n - 1,
            prev_epoch=1 if n else None,
            timeout=30,
        )
        if not res["ok"] or res["matched"] != n + len(batch) - 1:
            raise RuntimeError(f"replicate refused at {n}: {res}")
        n += len(batch)


def exercise(client: rpc.Client, size: int, rng: random.Random) -> list[float]:
    """Reads across the whole history; returns get_order latencies (ms)."""
    times = []
    for _ in range(2000):
        n = rng.randrange(size)
        t0 = time.perf_counter()
        res = client.call("get_order", number=n)
        times.append((time.perf_counter() - t0) * 1000)
        assert res["number"] == n
    for _ in range(3):
        res = client.call("catch_up", after=rng.randrange(-1, size - 1), timeout=30)
        assert res["records"] and res["last_number"] == size - 1
    return times


def start_replica(c: Cluster) -> tuple[rpc.Client, float, tuple[str, str] | None]:
    """Start order1; (client, seconds until it answers, its own start-up and log-open ms)."""
    t0 = time.monotonic()
    c.start("order1")
    # Speaks as replica 2, the leader that `feed` plays (CurveZMQ, the test keys).
    client = rpc_client(c.order_endpoints[1], "order2", "order1", timeout=5)
    wait_until(lambda: client.call("status", timeout=0.5), 60, 0.01, "order1 serving")
    wall = time.monotonic() - t0
    text = (c.root / "order1.log").read_text()
    found = re.findall(r"serving on .* in (\d+) ms \(log opened in ([\d.]+) ms\)", text)
    return client, wall, found[-1] if found else None


def history(sizes: list[int]) -> int:
    rng = random.Random(9)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bazaar-history-") as tmp, Cluster(Path(tmp)) as c:
        client, _, _ = start_replica(c)
        pid = c.procs["order1"].pid
        idle = proc_kb(pid)["VmRSS"]
        done = 0
        for size in sizes:
            t0 = time.monotonic()
            feed(client, done, size)
            rate = (size - done) / (time.monotonic() - t0)
            done = size
            exercise(client, size, rng)
            kb = proc_kb(pid)
            db = sum(p.stat().st_size for p in (c.root / "order1").glob("orders-1.db*"))
            rows.append((size, kb["VmRSS"], kb["VmHWM"], db, rate))
        client.close()
        c.stop_all()
        client, wall, own = start_replica(c)
        times = sorted(exercise(client, done, rng))
        restarted = proc_kb(c.procs["order1"].pid)["VmRSS"]
        client.close()
    print(f"Order replica history, Python {sys.version.split()[0]}, {os.cpu_count()} cores\n")
    print("| orders | RSS MB | peak RSS MB | orders-1.db* MB | fed at orders/s |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| 0 (idle) | {mb(idle).strip()} | | | |")
    for size, rss, peak, db, rate in rows:
        print(
            f"| {size:,} | {mb(rss).strip()} | {mb(peak).strip()} | "
            f"{db / 2**20:.1f} | {rate:,.0f} |"
        )
    growth = (rows[-1][1] - rows[0][1]) / 1024
    print(
        f"\nRSS growth {rows[0][0]:,} -> {rows[-1][0]:,} orders: {growth:+.1f} MB (goal: within 5)"
    )
    own_text = (
        f"{own[0]} ms in the service, of which {own[1]} ms opening the log; the rest is "
        "asking peers 2 and 3, which this bench does not run, for records"
        if own is not None
        else "n/a"
    )
    print(
        f"start-up at {done:,} orders: {wall * 1000:.0f} ms until it answers RPC "
        f"(interpreter and imports included; {own_text}); RSS after restart "
        f"and the reads: {mb(restarted).strip()} MB"
    )
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    print(f"get_order over RPC at {done:,} orders: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return 0


def http_history(targets: list[int], sessions: int = 16, chunk: int = 500) -> int:
    """All five services under `bazaar load` (p=1) until each target of committed orders."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bazaar-http-history-") as tmp, Cluster(Path(tmp)) as c:
        c.start_all(timeout=30)
        idle = {name: proc_kb(c.procs[name].pid)["VmRSS"] for name in SERVICES}
        t0 = time.monotonic()
        for target in targets:
            while True:
                order = c.health()["data"]["order"]
                last = order["replicas"][str(order["leader"])]["last_number"] or -1
                if last + 1 >= target:
                    break
                load = subprocess.run(
                    [sys.executable, "-m", "bazaar.cli", "load", "--url", c.url]
                    + ["--sessions", str(sessions), "--requests", str(chunk), "-p", "1"],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                )
                if load.returncode != 0:
                    print(load.stdout[-2000:], load.stderr[-2000:], file=sys.stderr)
                    return 1
            rss = {name: proc_kb(c.procs[name].pid)["VmRSS"] for name in SERVICES}
            rows.append((last + 1, time.monotonic() - t0, rss))
    print(f"Five services under HTTP load (bazaar load, {sessions} sessions, p=1)\n")
    print("| orders | minutes | " + " | ".join(f"{n} RSS MB" for n in SERVICES) + " |")
    print("|---:|---:|" + "---:|" * len(SERVICES))
    print("| 0 (idle) | | " + " | ".join(mb(idle[n]).strip() for n in SERVICES) + " |")
    for orders, secs, rss in rows:
        cells = " | ".join(mb(rss[n]).strip() for n in SERVICES)
        print(f"| {orders:,} | {secs / 60:.1f} | {cells} |")
    return 0


def main() -> int:
    # SIGTERM (a timeout) unwinds like Ctrl-C: the clusters' `with` stops their services.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("-p", type=float, default=0.5, dest="prob")
    parser.add_argument("--containers", help="footprint file from container-test")
    parser.add_argument("--imports", action="store_true", help="also measure import costs")
    parser.add_argument(
        "--metrics", action="store_true", help="catalog and replicas serve /metrics too"
    )
    parser.add_argument("--history", action="store_true", help="memory against history length")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="for --history")
    parser.add_argument(
        "--http-history", help="committed-order targets, e.g. 10000,100000: real HTTP load"
    )
    args = parser.parse_args()
    if args.http_history:
        return http_history([int(float(x)) for x in args.http_history.split(",")])
    if args.history:
        sizes = [int(float(x)) for x in args.sizes.split(",")]
        code = history(sizes)
        print()
        print("\n".join(catalog_history(sizes)))
        return code

    with (
        tempfile.TemporaryDirectory(prefix="bazaar-footprint-") as tmp,
        Cluster(Path(tmp), metrics=args.metrics) as c,
    ):
        c.start_all(timeout=30)
        idle = {name: proc_kb(c.procs[name].pid) for name in SERVICES}
        load_args = f"--sessions {args.sessions} --requests {args.requests} -p {args.prob}"
        load = subprocess.run(
            [sys.executable, "-m", "bazaar.cli", "load", "--url", c.url, "--seed", "7"]
            + load_args.split(),
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        after = {name: proc_kb(c.procs[name].pid) for name in SERVICES}
    if load.returncode != 0:
        print(load.stdout, load.stderr, file=sys.stderr)
        print("load run failed; figures below are still the processes' memory", file=sys.stderr)

    rows = [(name, idle[name], after[name]) for name in SERVICES]
    total_rss = sum(after[n]["VmRSS"] for n in SERVICES) / 1024
    total_pss = sum(after[n]["Pss"] for n in SERVICES) / 1024
    print(
        f"Native processes, Python {sys.version.split()[0]}, {os.cpu_count()} cores; "
        f"mixed load: {args.sessions} sessions x {args.requests} requests, p={args.prob}"
        f"{'; /metrics on catalog and replicas' if args.metrics else ''}\n"
    )
    print(table(rows))
    verdict = "fits" if total_rss <= GOAL_MB else "over"
    print(
        f"\ntotal RSS {total_rss:.1f} MB, PSS {total_pss:.1f} MB: {verdict} the {GOAL_MB} MB goal"
    )
    if args.containers:
        print("\nContainers (scripts/container-test.sh, after its verified load run)\n")
        print(containers_table(args.containers))
    if args.imports:
        print("\nImport cost (one fresh interpreter per row)\n")
        print(import_costs())
    return 0 if load.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
