"""SIGTERM to a process whose main thread waits on a `StopEvent`, in real processes.

The main thread here waits with a zero timeout in a loop, so a signal almost
always lands while `Event.wait` holds the event's lock: with a plain
`threading.Event` and a handler calling `set()`, about half of such processes
hang for good (run-all did, after Ctrl-C, in `make test`).
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

PROGRAM = """
from bazaar.stopping import StopEvent, stop_on_signals
stop = StopEvent()
stop_on_signals(stop)
print("ready", flush=True)
while not stop.wait(0):
    pass
print("stopped", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_always_stops_a_main_thread_waiting_on_the_event(signum):
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(signum)
            out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert (proc.returncode, out) == (0, "stopped\n")
