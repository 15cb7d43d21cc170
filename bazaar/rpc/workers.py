"""The RPC server's worker pool (`Workers`): where non-inline methods run."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("bazaar.rpc")


class Workers:
    """A lean worker pool: jobs in a C queue, threads started as needed up to `size`.

    ThreadPoolExecutor makes a Future, a work item and a semaphore round trip
    per job, which showed up as ~5-9 % of a busy server's GIL samples; nobody
    here needs the Future. A submitted job claims an idle thread or starts
    one; past `size`, it waits in the queue for the next thread that is done.
    Jobs still queued when `stop` is set are dropped, not run.
    """

    def __init__(self, size: int, name: str, stop: threading.Event):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._size, self._name, self._stop = size, name, stop
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for a job and not yet claimed by a submit

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                start = False
            else:
                start = self._threads < self._size
                self._threads += start
        self._jobs.put((job, args))
        if start:
            name = f"{self._name}_{self._threads - 1}"
            threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None or self._stop.is_set():
                return
            job, args = item
            try:
                job(*args)
            except Exception:  # a job handles its own errors; never lose the thread
                log.exception("%s: a job failed", self._name)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Let every thread end (daemons: none is waited for)."""
        for _ in range(self._threads):
            self._jobs.put(None)
