"""`bazaar.stopping.StopEvent`: what SIGTERM/SIGINT handlers may do to it."""

from __future__ import annotations

import threading

from bazaar.stopping import StopEvent


def test_a_request_takes_no_lock_so_a_handler_never_waits_for_its_own_thread():
    stop = StopEvent()
    # What Event.wait holds for a few bytecodes each time it wakes; a handler
    # run there that called Event.set() would wait for this lock forever.
    with stop._cond:
        stop.request()
        assert stop.is_set()
    assert stop.wait(1.0)  # the request became a real set(), outside the lock


def test_a_request_wakes_every_waiter():
    stop = StopEvent()
    woken = []
    waiters = [threading.Thread(target=lambda: woken.append(stop.wait(10))) for _ in range(3)]
    for t in waiters:
        t.start()
    stop.request()
    assert stop.wait(10)  # the main thread's wait turns it into set()...
    for t in waiters:
        t.join(10)
    assert woken == [True, True, True]  # ...which wakes the others too


def test_wait_with_a_timeout_still_times_out():
    stop = StopEvent()
    assert stop.wait(0.05) is False
    assert stop.wait(0) is False
    stop.set()
    assert stop.wait(0) is True
