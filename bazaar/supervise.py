"""`bazaar run-all`: run catalog, order 1-3 and the front end as child processes.

Owns only process lifecycle and log prefixing; each service is the ordinary
role command (`python -m bazaar.cli <role>`), so what `make run` starts is
exactly what production runs.

- Every output line of a child is printed as `<name> | <line>`.
- SIGINT/SIGTERM: every child gets SIGTERM, then SIGKILL after a grace period;
  `run_all` returns only when all five have exited.
- A child that exits during start-up (e.g. its port is taken) stops the whole
  run with exit status 1. Later (run-all says when: STARTED), a child that
  dies is reported and the others keep serving: the system is built to
  survive a lost replica.
- On Linux each child gets PDEATHSIG=SIGTERM, so even a SIGKILLed supervisor
  leaves no service behind.
- Each child gets MALLOC_ARENA_MAX=2 unless the environment says otherwise,
  as in the image.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable

from bazaar.stopping import StopEvent, stop_on_signals

SERVICES: tuple[tuple[str, list[str]], ...] = (
    ("catalog", ["catalog"]),
    ("order1", ["order", "--id", "1"]),
    ("order2", ["order", "--id", "2"]),
    ("order3", ["order", "--id", "3"]),
    ("frontend", ["frontend"]),
)
STARTUP_SECONDS = 5.0
STARTED = "start-up over: a service that exits now is reported, the others go on"
STOP_GRACE = 5.0
# glibc gives every thread that allocates an arena of its own (up to 8 per
# core); the services' worker pools and zmq's I/O threads then hold ~0.4 MB
# of RSS each for nothing (docs/performance.md, "Footprint"). 2, as the image
# sets it (Dockerfile); a value in the environment wins. Read by glibc when a
# process starts, so it is given to the children, not set here.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2"}


_PRCTL = None
if sys.platform.startswith("linux"):  # looked up here: the child must not load libraries
    with contextlib.suppress(OSError, AttributeError):
        _PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self, services: Iterable[tuple[str, list[str]]] = SERVICES, out=None):
        self.services = list(services)
        self.out = out or sys.stdout
        self.procs: dict[str, subprocess.Popen] = {}
        self._print_lock = threading.Lock()
        self._pumps: list[threading.Thread] = []
        self.stop = StopEvent()  # requested by run_all's signal handlers

    def say(self, name: str, line: str) -> None:
        width = max(len(n) for n, _ in self.services)
        with self._print_lock:
            self.out.write(f"{name:<{width}} | {line}\n")
            self.out.flush()

    def start(self) -> None:
        env = {**MALLOC_ENV, **os.environ, "PYTHONUNBUFFERED": "1"}
        for name, args in self.services:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bazaar.cli", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,  # no thread of ours runs yet
            )
            self.procs[name] = proc
            self.say("run-all", f"started {name} (pid {proc.pid})")
        for name, proc in self.procs.items():  # threads only after every fork
            pump = threading.Thread(target=self._pump, args=(name, proc), daemon=True)
            pump.start()
            self._pumps.append(pump)

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.say(name, raw.decode("utf-8", "replace").rstrip("\n"))
        proc.stdout.close()

    def watch(self) -> int:
        """Wait for a stop signal or failures; returns the exit status."""
        started = time.monotonic()
        reported: set[str] = set()
        status = 0
        starting = True
        while not self.stop.wait(0.2):
            if starting and time.monotonic() - started >= STARTUP_SECONDS:
                starting = False  # said once: what a service that exits now means
                self.say("run-all", STARTED)
            for name, proc in self.procs.items():
                if name in reported or proc.poll() is None:
                    continue
                reported.add(name)
                self.say("run-all", f"{name} exited with status {proc.returncode}")
                if time.monotonic() - started < STARTUP_SECONDS:
                    self.say("run-all", f"{name} failed to start: stopping everything")
                    return 1
                # Status 0 is a service that was told to stop (Ctrl-C in a terminal
                # reaches the children too, maybe before our own handler has run).
                status = status or int(proc.returncode != 0)
            if len(reported) == len(self.procs):
                self.say("run-all", "every service has exited")
                return status
        return status

    def shutdown(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("run-all", f"{name} ignored SIGTERM: killing it")
                proc.kill()
                proc.wait()
        for pump in self._pumps:
            pump.join(1.0)
        self.say("run-all", "all services stopped")


def run_all() -> int:
    sup = Supervisor()
    stop_on_signals(sup.stop)
    try:
        sup.start()
        return sup.watch()
    finally:
        sup.shutdown()
