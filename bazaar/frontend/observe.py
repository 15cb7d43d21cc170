"""What the front end measures about its own HTTP traffic.

Owns:
- `route_of(path)`: the route label of a request path, from a fixed list, so
  a label never carries user input (a stock name, an order number);
- `instrument(wsgi_app, samples)`: the outermost WSGI wrapper; it times every
  request, counts it in `bazaar_http_requests_total{route,method,code}` and
  `bazaar_http_request_duration_seconds{route}`, and hands API requests to
  `RecentSamples` for the dashboard's chart;
- `RecentSamples`: per-second summaries (requests, orders, p50/p99 latency)
  of the last few minutes, in bounded memory.

It never does I/O and never raises into the request: measuring is cheap
(cached label children, one clock read at each end) because the cached
lookup it wraps costs only tens of microseconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

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


def instrument(wsgi_app, samples: RecentSamples | None = None):
    """Wrap `wsgi_app` so every request is counted, timed and (API calls) sampled."""
    frontend = metrics.enable("frontend")
    requests, durations = frontend["http_requests"], frontend["http_duration"]
    children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
    clock = time.perf_counter
    wall = time.time

    def observe(route: str, method: str, code: str, seconds: float) -> None:
        key = (route, method if method in METHODS else OTHER, code)
        pair = children.get(key)
        if pair is None:
            pair = children[key] = (requests.labels(*key), durations.labels(route))
        pair[0].inc()
        pair[1].observe(seconds)
        kind = CHARTED.get(route)
        if kind is not None and samples is not None:
            samples.record(kind, seconds, wall())

    def app(environ, start_response):
        started = clock()
        status: list[str] = []

        def recording_start_response(code, headers, exc_info=None):
            status.append(code)
            if exc_info is None:
                return start_response(code, headers)
            return start_response(code, headers, exc_info)

        try:
            result = wsgi_app(environ, recording_start_response)
        except BaseException:
            status.append("500")
            raise
        finally:
            code = status[-1][:3] if status else "500"
            method = environ.get("REQUEST_METHOD", "")
            observe(route_of(environ.get("PATH_INFO", "")), method, code, clock() - started)
        return result

    return app
