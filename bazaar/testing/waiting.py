"""Waiting for a condition, and giving up at once when a process it depends on has died.

`wall_budget` stretches a wall-clock deadline only when the machine is
oversubscribed; scripts/container-test.sh asks it too, so one formula serves
both.

`wait_until` polls a condition until it holds. Given the processes the
condition depends on, it checks them every round: a process that exited makes
the wait fail straight away with its exit status and the last lines of its
log, instead of after the whole timeout with only "timed out".
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

LOG_LINES = 30


class WaitFailed(AssertionError):
    """The condition did not hold in time, or a process it waited on died."""


class ProcessDied(WaitFailed):
    """A process the wait depended on exited."""


def log_tail(path: Path, lines: int = LOG_LINES) -> str:
    """The last `lines` lines of a log file ('' if there is none yet)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def check_alive(processes: Mapping[str, subprocess.Popen], log_dir: Path | None = None) -> None:
    """Raise ProcessDied naming the first of `processes` that exited, with its log's tail.

    A process `name` logs to `<log_dir>/<name>.log` (the Cluster's layout).
    """
    for name, proc in processes.items():
        if proc.poll() is None:
            continue
        message = f"{name} (pid {proc.pid}) exited with status {proc.returncode}"
        if log_dir is not None:
            tail = log_tail(Path(log_dir) / f"{name}.log")
            message += f"; last lines of {name}.log:\n{tail}" if tail else f"; {name}.log is empty"
        raise ProcessDied(message)


def wait_until(
    cond: Callable[[], object],
    timeout: float = 5.0,
    interval: float = 0.02,
    msg: str = "",
    *,
    processes: Mapping[str, subprocess.Popen] | None = None,
    log_dir: Path | None = None,
):
    """Poll `cond` until it returns a truthy value and return that value.

    Raises WaitFailed after `timeout` seconds (with the condition's last
    error), or ProcessDied as soon as one of `processes` has exited.
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        if processes:
            try:
                check_alive(processes, log_dir)
            except ProcessDied as died:
                raise ProcessDied(f"while waiting for {msg or cond}: {died}") from None
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # the condition may fail until the system is up
            last_exc = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise WaitFailed(
        f"timed out after {timeout}s waiting for {msg or cond}; last error: {last_exc!r}"
    )


def wall_budget(seconds: float) -> float:
    """`seconds` on a machine with a core per runnable process, more when it is oversubscribed.

    A SPEC deadline such as "SIGTERM stops a service well under a second" is about
    the service's own work; when the load average is many times the core count
    (parallel suites, CI neighbours) wall-clock time stretches with it, and the
    check would then measure the machine rather than the code.
    """
    overload = os.getloadavg()[0] / (os.cpu_count() or 1)
    return seconds * max(1.0, overload)
