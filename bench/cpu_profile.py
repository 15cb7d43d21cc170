"""Where an order's CPU goes: per service and per thread, with py-spy samples beside.

Starts the five services as shipped (`bazaar/testing/cluster.py`), runs a
closed-loop HTTP load (`bench/http.py client`, 16 sessions by default) and
reads every thread's utime+stime from /proc/<pid>/task over the measuring
window; thread names come from `py-spy dump` (Python names; native threads
keep their comm: ZMQbg/IO, tokio-rt-worker). With `--py-spy DIR` it also
records each service with `py-spy record` (raw collapsed stacks, GIL holders
only: the samples are where Python runs, not where it waits) and prints the
functions with the most samples, inclusive and own.

    .venv/bin/python bench/cpu_profile.py [--seconds 10] [--kind order|lookup] [--py-spy DIR]

py-spy needs ptrace rights over the services (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or os.curdir).resolve() == ROOT / "bench":
    del sys.path[0]  # bench/http.py would shadow the stdlib's http package
sys.path.insert(0, str(ROOT))

from bazaar.testing.cluster import Cluster  # noqa: E402

TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of every thread of `pid`, by native thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / TCK
    return out


def thread_names(pid: int, py_spy: str) -> dict[str, str]:
    """Native thread id -> name: Python's names from `py-spy dump`, else the comm."""
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            names[tid] = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    dump = subprocess.run([py_spy, "dump", "-p", str(pid)], capture_output=True, text=True)
    for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]*)"', dump.stdout):
        names[m.group(1)] = m.group(2)
    return names


def group(name: str) -> str:
    """Pool threads under one name: order-rpc_3 -> order-rpc, Thread-12 (run) -> Thread."""
    name = re.sub(r" \(.*\)$", "", name)
    return name.rstrip("0123456789_-/") or name


def top_functions(raw: Path, count: int = 12) -> str:
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")[1:]  # the first is the thread
        total += int(n)
        own[frames[-1] if frames else "?"] += int(n)
        for frame in set(frames):
            incl[frame] += int(n)
    lines = [f"  {total} samples holding the GIL"]
    lines += [f"  incl {n / total:6.1%}  {f}" for f, n in incl.most_common(count)]
    lines += [f"  own  {n / total:6.1%}  {f}" for f, n in own.most_common(count)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--kind", choices=("order", "lookup"), default="order")
    parser.add_argument("--py-spy", metavar="DIR", help="also record each service here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp, Cluster(Path(tmp)) as c:
        c.extra_env["BAZAAR_LOG_LEVEL"] = "WARNING"
        c.start_all()
        warmup = 1.0
        client = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "http.py"), "client"]
            + ["--port", str(c.http_port), "--kind", args.kind]
            + ["--sessions", str(args.sessions), "--seconds", str(args.seconds)]
            + ["--start-at", repr(time.time() + warmup)],
            stdout=subprocess.PIPE,
        )
        time.sleep(warmup)
        before = {n: thread_cpu(p.pid) for n, p in c.procs.items()}
        spies = []
        if args.py_spy:
            Path(args.py_spy).mkdir(parents=True, exist_ok=True)
            for name, proc in c.procs.items():
                cmd = [py_spy, "record", "-r", "250", "-d", str(int(args.seconds)), "-f", "raw"]
                cmd += ["--gil", "-o", f"{args.py_spy}/{name}.txt", "-p", str(proc.pid)]
                spies.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
        time.sleep(args.seconds)
        after = {n: thread_cpu(p.pid) for n, p in c.procs.items()}
        names = {n: thread_names(p.pid, py_spy) for n, p in c.procs.items()}
        done = len(json.loads(client.communicate()[0])["lat"])
        for spy in spies:
            spy.wait()
    print(
        f"{done / args.seconds:.0f} {args.kind}s/s with {args.sessions} sessions over "
        f"{args.seconds}s; CPU ms per {args.kind} (utime+stime per thread); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    grand = 0.0
    for name in before:
        per: collections.Counter = collections.Counter()
        for tid, cpu in after[name].items():
            per[group(names[name].get(tid, tid))] += cpu - before[name].get(tid, 0.0)
        total = sum(per.values()) * 1000 / max(done, 1)
        grand += total
        parts = ", ".join(f"{k} {v * 1000 / max(done, 1):.2f}" for k, v in per.most_common() if v)
        print(f"- {name}: {total:.2f} ({parts})")
    print(f"five services: {grand:.2f} ms per {args.kind}")
    if args.py_spy:
        for name in before:
            print(f"\n{name} (py-spy --gil):")
            print(top_functions(Path(args.py_spy) / f"{name}.txt"))


if __name__ == "__main__":
    main()
