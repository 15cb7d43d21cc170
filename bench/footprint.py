"""Memory footprint of the five services (issue 6: goal <= 150 MB in total).

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
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The repo root instead of bench/ (whose http.py would shadow the stdlib's).
sys.path[0] = str(ROOT)

from tests.system.cluster import Cluster  # noqa: E402

SERVICES = ("catalog", "order1", "order2", "order3", "frontend")
GOAL_MB = 150
ROLE_MODULES = {
    "catalog": "bazaar.catalog.service",
    "order": "bazaar.order.service",
    "frontend": "bazaar.frontend.server",
}


def proc_kb(pid: int) -> dict[str, int]:
    """RSS, peak RSS (VmHWM) and PSS of one process, in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1])
    except OSError:
        out["Pss"] = out["VmRSS"]
    return out


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
    for mod in ("-", "zmq", "msgpack", "flask", "granian", *ROLE_MODULES.values()):
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("-p", type=float, default=0.5, dest="prob")
    parser.add_argument("--containers", help="footprint file from container-test")
    parser.add_argument("--imports", action="store_true", help="also measure import costs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bazaar-footprint-") as tmp, Cluster(Path(tmp)) as c:
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
        f"mixed load: {args.sessions} sessions x {args.requests} requests, p={args.prob}\n"
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
