"""A stop event that SIGTERM/SIGINT handlers can request without a lock.

Python runs a signal handler in the main thread, between two bytecodes of
whatever that thread is doing. `threading.Event.set()` takes the event's
lock, a plain `Lock`, and `Event.wait()` holds that same lock for a few
bytecodes each time it wakes: a signal landing there made the handler's
`set()` wait for a lock its own thread holds, forever. run-all hung that
way after Ctrl-C until it was killed (seen in `make test`), and a service
the same way until run-all's SIGKILL.

So a handler only `request()`s: one attribute store, no lock. `wait()`
wakes at least every POLL seconds (which also lets Python run the handler
at all: the kernel may deliver the signal to a worker thread, and a main
thread blocked in a plain wait never gets back to the interpreter) and
turns a request into a real `set()`, outside any lock, so every other
waiter is woken too.
"""

from __future__ import annotations

import signal
import threading
import time

POLL = 0.1


class StopEvent(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self._requested = False

    def request(self) -> None:
        """From a signal handler: ask for the stop (the next `wait` sets the event)."""
        self._requested = True

    def is_set(self) -> bool:
        return self._requested or super().is_set()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._requested and not super().is_set():
                self.set()  # here no lock of the event is held
            step = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if step <= 0:
                return self.is_set()
            if super().wait(step):
                return True


def stop_on_signals(stop: StopEvent, signals=(signal.SIGTERM, signal.SIGINT)) -> None:
    """SIGTERM and SIGINT request `stop` (main thread only, as `signal.signal` requires)."""

    def on_signal(_signum, _frame):
        stop.request()

    for signum in signals:
        signal.signal(signum, on_signal)
