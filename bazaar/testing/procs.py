"""What /proc says of a process: its memory (RSS, peak, PSS) and the CPU time it used.

The benchmarks' one way of sampling a service they started (Linux only), and
the one way tests and benchmarks stop the services they started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path


def stop_processes(procs: Iterable[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM every live one (SIGCONT first: a stopped one must be able to act on
    it), then reap each, with SIGKILL for any still running after `grace` seconds."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


def proc_kb(pid: int) -> dict[str, int]:
    """RSS (VmRSS), peak RSS (VmHWM) and PSS of one process, in kB."""
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) so far, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def running_threads(pid: int) -> int:
    """How many of a process's threads are running or waiting for a CPU (state R) now."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        count += stat[stat.rindex(")") + 2] == "R"
    return count


def idle(pid: int, window: float = 0.3, busy: float = 0.1) -> bool:
    """Whether a process used under `busy` of a CPU over `window` seconds and none of its
    threads is runnable: it has worked through what it was sent. (A starved process
    uses little CPU too, but its threads wait in state R.)"""
    before = cpu_seconds(pid)
    time.sleep(window)
    return cpu_seconds(pid) - before < window * busy and running_threads(pid) == 0
