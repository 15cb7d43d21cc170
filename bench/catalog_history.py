"""The catalog against the length of its history (memory must not grow with it).

One catalog process (`python -m bazaar.cli catalog`, as in production). Its
history is grown between runs, with the catalog stopped, through the store's
own commit statement (`bazaar.catalog.db.commit_batch`, batches of 10,000
trades: the transaction a group commit writes); then the catalog is started
(timed: until it answers `ping`, and its own open time from its log) and
exercised over RPC across the whole history: 2,000 retries of random old keys
(idempotency look-ups in the database), 2,000 new trades, `trades_since`
pages from random points. Its RSS is read after that.

    .venv/bin/python bench/catalog_history.py [--sizes 10000,100000,1000000]

(`bench/footprint.py --history`, part of `make bench`, runs it after the
order replica's history.)
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The repo root instead of bench/ (whose http.py would shadow the stdlib's).
sys.path[0] = str(ROOT)

from bazaar import rpc  # noqa: E402
from bazaar.catalog import db  # noqa: E402
from bazaar.catalog.market import Trade  # noqa: E402
from bazaar.testing import STOCKS  # noqa: E402
from bazaar.testing.cluster import Cluster  # noqa: E402
from bazaar.testing.keys import rpc_client  # noqa: E402
from bazaar.testing.procs import proc_kb  # noqa: E402
from bazaar.testing.waiting import wait_until  # noqa: E402

BATCH = 10_000


def key_of(seq: int) -> str:
    return f"history-{seq:08d}-{'k' * 24}"  # 42 characters, like a UUID-based key


def grow(data_dir: Path, start: int, end: int) -> float:
    """Append trades start+1..end with the catalog stopped; returns trades per second."""
    conn = db.connect(data_dir / db.DB_FILE, writer=True)
    try:
        market = db.load_market(conn)
        t0 = time.monotonic()
        for first in range(start + 1, end + 1, BATCH):
            trades = []
            for seq in range(first, min(first + BATCH, end + 1)):
                stock = market[STOCKS[seq % len(STOCKS)]]
                kind = "sell" if seq % 2 or stock.quantity < 1 else "buy"
                stock.quantity += 1 if kind == "sell" else -1
                stock.volume += 1
                trades.append(
                    Trade(seq, key_of(seq), stock.name, kind, 1, 1, stock.quantity, stock.volume)
                )
            db.commit_batch(conn, trades, [market[n] for n in STOCKS], None)
        return (end - start) / (time.monotonic() - t0)
    finally:
        conn.close()


def start_catalog(c: Cluster) -> tuple[rpc.Client, float, float | None]:
    """Start the catalog; (client, seconds until it answers ping, its own open time in ms)."""
    t0 = time.monotonic()
    c.start("catalog")
    client = rpc_client(
        c.catalog_endpoint, "order1", "catalog", timeout=5
    )  # trades: a leader's role
    wait_until(lambda: client.call("ping", timeout=0.5, idempotent=True), 60, 0.01, "catalog up")
    wall = time.monotonic() - t0
    found = re.findall(r"catalog opened .* in (\d+) ms", (c.root / "catalog.log").read_text())
    return client, wall, float(found[-1]) if found else None


def exercise(client: rpc.Client, size: int, rng: random.Random, fresh: str) -> list[float]:
    """Retries of old keys, new trades, trades_since pages; returns the retries' latencies (ms)."""
    times = []
    for _ in range(2000):
        seq = rng.randrange(1, size + 1)
        t = client.call("trades_since", after=seq - 1, limit=1)["trades"][0]
        t0 = time.perf_counter()
        res = client.call(
            "trade", key=t["key"], name=t["name"], type=t["type"], quantity=1, epoch=1
        )
        times.append((time.perf_counter() - t0) * 1000)
        assert res["seq"] == seq, (res, seq)
    for i in range(2000):
        client.call("trade", key=f"{fresh}-{i}", name="RoadCo", type="sell", quantity=1, epoch=1)
    for _ in range(5):
        page = client.call("trades_since", after=rng.randrange(size), timeout=30)
        assert page["trades"]
    return times


def history(sizes: list[int]) -> list[str]:
    """Markdown lines with the figures."""
    rng = random.Random(11)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bazaar-catalog-history-") as tmp:
        c = Cluster(Path(tmp))
        data = c.data_dir("catalog")
        try:
            client, _, _ = start_catalog(c)  # creates catalog.db with the default market
            idle = proc_kb(c.procs["catalog"].pid)["VmRSS"]
            client.close()
            c.stop_all()
            done = 0
            for n, size in enumerate(sizes):
                rate = grow(data, done, size)
                client, wall, own = start_catalog(c)
                times = sorted(exercise(client, size, rng, f"fresh{n}"))
                kb = proc_kb(c.procs["catalog"].pid)
                rss, peak = kb["VmRSS"], kb["VmHWM"]
                client.close()
                c.stop_all()
                done = size + 2000  # the new trades of `exercise` are history too
                disk = sum(p.stat().st_size for p in data.glob("catalog.db*"))
                rows.append((size, rss, peak, disk, rate, wall, own, times))
        finally:
            c.stop_all()
    lines = [
        f"Catalog history, Python {sys.version.split()[0]}, {os.cpu_count()} cores",
        "",
        (
            "| trades | RSS MB | peak RSS MB | catalog.db MB | start until ping ms | open ms "
            "| retry p50 ms | appended trades/s |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| 0 (idle) | {idle / 1024:.1f} | | | | | | |",
    ]
    for size, rss, peak, disk, rate, wall, own, times in rows:
        lines.append(
            f"| {size:,} | {rss / 1024:.1f} | {peak / 1024:.1f} | {disk / 2**20:.1f} "
            f"| {wall * 1000:.0f} | {own if own is not None else 'n/a'} "
            f"| {times[len(times) // 2]:.2f} | {rate:,.0f} |"
        )
    growth = (rows[-1][1] - rows[0][1]) / 1024
    lines.append("")
    lines.append(
        f"RSS growth {rows[0][0]:,} -> {rows[-1][0]:,} trades: {growth:+.1f} MB (goal: within 5)"
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    print("\n".join(history([int(float(x)) for x in args.sizes.split(",")])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
