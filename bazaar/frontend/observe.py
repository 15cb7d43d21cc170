"""What the front end measures about its own HTTP traffic.

Owns:
- `route_of(path)`: the route label of a request path, from a fixed list, so
  a label never carries user input (a stock name, an order number);
- `HttpMeter`: the outermost WSGI wrapper; it times every request and, in
  batches off the request path, counts it in
  `bazaar_http_requests_total{route,method,code}` and
  `bazaar_http_request_duration_seconds{route}` and hands API requests to
  `RecentSamples` for the dashboard's chart;
- `RecentSamples`: per-second summaries (requests, orders, p50/p99 latency)
  of the last few minutes, in bounded memory.

It never does I/O and never raises into the request. Measuring must be
cheap: the cached lookup it wraps costs only a few microseconds of Python,
so a request pays two clock reads and one deque append (bench/http.py
metrics: on vs off).
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

from bazaar import metrics

ROUTES = ("/", "/stocks/<name>", "/orders", "/orders/<number>", "/health", "/metrics")
DASHBOARD_DATA = "/api/dashboard"
STATIC = "/static"
OTHER = "other"
METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"})
# Requests whose latency the dashboard charts (the API, not the dashboard itself).
CHARTED = {"/stocks/<name>": "lookup", "/orders": "order", "/orders/<number>": "get_order"}
WINDOW_SECONDS = 300


def route_of(path: str) -> str:
    """The route label of `path`: one of a few fixed values."""
    if path.startswith("/stocks/"):
        return "/stocks/<name>"
    if path.startswith("/orders"):
        if path == "/orders":
            return "/orders"
        if path.startswith("/orders/"):
            return "/orders/<number>"
        return OTHER
    if path in ("/", "/health", "/metrics", DASHBOARD_DATA):
        return path
    if path.startswith("/static/"):
        return STATIC
    return OTHER


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (non-empty)."""
    index = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


class RecentSamples:
    """Per-second summaries of API requests over the last `window` seconds.

    `record` runs on request threads: it appends to the current second's list
    (list.append is atomic) and takes the lock only when a new second starts.
    A sample racing with that switch may land in the closed second after its
    summary was made and be dropped: harmless for a chart.
    """

    def __init__(self, window: int = WINDOW_SECONDS, clock=time.time):
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._second: int | None = None
        self._current: list[tuple[str, float]] = []
        self._done: deque[dict[str, Any]] = deque(maxlen=window)

    def record(self, kind: str, seconds: float, now: float | None = None) -> None:
        second = int(self._clock() if now is None else now)
        if second != self._second:
            self._roll(second)
        self._current.append((kind, seconds))

    def _roll(self, second: int) -> None:
        with self._lock:
            if self._second is not None and second <= self._second:
                return
            if self._second is not None and self._current:
                self._done.append(summarise(self._second, self._current))
            self._second, self._current = second, []

    def series(self, now: float | None = None) -> list[dict[str, Any]]:
        """One summary per second of the window (zeros for idle seconds), oldest first.

        The current, unfinished second is left out: its rate would read low.
        """
        second = int(self._clock() if now is None else now)
        self._roll(second)
        with self._lock:
            by_second = {s["t"]: s for s in self._done}
        start = second - self.window
        return [by_second.get(t) or empty_second(t) for t in range(start, second)]


def empty_second(t: int) -> dict[str, Any]:
    return {"t": t, "requests": 0, "orders": 0, "lookups": 0, "p50_ms": None, "p99_ms": None}


def summarise(second: int, samples: list[tuple[str, float]]) -> dict[str, Any]:
    durations = sorted(d for _, d in samples)
    return {
        "t": second,
        "requests": len(samples),
        "orders": sum(1 for kind, _ in samples if kind == "order"),
        "lookups": sum(1 for kind, _ in samples if kind == "lookup"),
        "p50_ms": round(quantile(durations, 0.5) * 1000, 3),
        "p99_ms": round(quantile(durations, 0.99) * 1000, 3),
    }


class HttpMeter:
    """Counts, times and samples HTTP requests, with almost nothing on the request path.

    A request only reads the clock twice and appends one tuple to a deque
    (thread-safe, no lock). `drain()` folds the queued tuples into plain
    counters and histogram buckets, and the dashboard's samples; it runs
    before every scrape and dashboard read, and on the request path once
    `batch` tuples are waiting, which bounds the queue's memory. `collect()`
    hands them to Prometheus as `bazaar_http_requests_total{route,method,code}`
    and `bazaar_http_request_duration_seconds{route}` (prometheus_client's own
    Counter and Histogram take two locks per observation: three times the
    cost of the cached lookup they would measure).
    """

    def __init__(self, samples: RecentSamples | None = None, batch: int = 1024):
        self.samples = samples
        self.batch = batch
        self._queue: deque[tuple[str, str, str, float, float]] = deque()
        self._lock = threading.Lock()  # one drainer or collector at a time
        self._counts: dict[tuple[str, str, str], int] = {}
        # route -> [per-bucket counts (last: above every bound), sum of seconds]
        self._histograms: dict[str, list] = {}

    def drain(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is at it
        try:
            self._drain_locked()
        finally:
            self._lock.release()

    def _drain_locked(self) -> None:
        offset = time.time() - time.perf_counter()  # perf_counter -> wall clock
        queue, counts, histograms, samples = (
            self._queue,
            self._counts,
            self._histograms,
            self.samples,
        )
        bounds = metrics.FAST_BUCKETS
        while queue:
            path, method, status, started, elapsed = queue.popleft()
            route = route_of(path)
            key = (route, method if method in METHODS else OTHER, status[:3])
            counts[key] = counts.get(key, 0) + 1
            histogram = histograms.get(route)
            if histogram is None:
                histogram = histograms[route] = [[0] * (len(bounds) + 1), 0.0]
            histogram[0][bisect.bisect_left(bounds, elapsed)] += 1
            histogram[1] += elapsed
            kind = CHARTED.get(route)
            if kind is not None and samples is not None:
                samples.record(kind, elapsed, started + offset)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._drain_locked()
            counts = dict(self._counts)
            histograms = {route: (list(b), s) for route, (b, s) in self._histograms.items()}
        requests = CounterMetricFamily(
            "bazaar_http_requests",
            "HTTP requests answered by the front end, by route, method and status code.",
            labels=["route", "method", "code"],
        )
        for key, count in sorted(counts.items()):
            requests.add_metric(list(key), count)
        yield requests
        durations = HistogramMetricFamily(
            "bazaar_http_request_duration_seconds",
            "Time the front end's application took to answer one HTTP request.",
            labels=["route"],
        )
        bounds = [*(repr(float(b)) for b in metrics.FAST_BUCKETS), "+Inf"]
        for route, (buckets, total) in sorted(histograms.items()):
            cumulative = list(itertools.accumulate(buckets))
            durations.add_metric([route], list(zip(bounds, cumulative, strict=True)), total)
        yield durations

    def wrap(self, wsgi_app):
        """`wsgi_app`, measured."""
        queue, clock, batch = self._queue, time.perf_counter, self.batch

        def app(environ, start_response):
            started = clock()
            status: list[str] = []

            def recording_start_response(code, headers, exc_info=None):
                status.append(code)
                if exc_info is None:
                    return start_response(code, headers)
                return start_response(code, headers, exc_info)

            try:
                return wsgi_app(environ, recording_start_response)
            finally:
                queue.append(
                    (
                        environ.get("PATH_INFO", ""),
                        environ.get("REQUEST_METHOD", ""),
                        status[-1] if status else "500",
                        started,
                        clock() - started,
                    )
                )
                if len(queue) >= batch:
                    self.drain()

        return app
