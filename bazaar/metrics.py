"""Prometheus metrics (SPEC section 6): every metric's definition, and their exposition.

Owns the names, help texts, labels and buckets of all `bazaar_*` metrics, so
they are defined once and read the same in every service. It uses
prometheus_client's process-wide default registry (which also carries the
standard `process_*` and `python_*` collectors): one process is one service,
and the exposition is that registry.

How services feed it, without metric code in their hot paths:
- counters and histograms observed where the work happens: the RPC server's
  one hook (`RpcObserver`: method, code, duration per executed request; the
  order and catalog results are derived from it), and the fsync timers;
- the front end's HTTP counters and histograms are kept by its own meter
  (`bazaar.frontend.observe.HttpMeter`, cheaper per request) and exposed
  through the frontend collector;
- gauges and counters the services already keep (leader, epoch, commit
  number, follower positions, cache counters, elections) are read at scrape
  time by collectors from a *source* the service hands over with `watch_*`.
  Sources are held weakly: a stopped service simply disappears from the
  exposition, and the last one watched wins (tests run several in one process).

Service-specific metrics are registered on first use (`enable(service)`), so
a replica's exposition does not show the catalog's counters at zero.

Label values stay few: RPC methods are registered names only, codes come from
a fixed table, routes are classified by `bazaar.frontend.observe`; no user
input ever becomes a label value.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# No `*_created` series: Prometheus does not need them, and they double the exposition.
disable_created_metrics()

# Fit for sub-millisecond RPCs and fsyncs, up to the 10 s order deadline.
FAST_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# ---- every service --------------------------------------------------------
RPC_REQUESTS = Counter(
    "bazaar_rpc_requests_total",
    "RPC requests executed by this service, by method and result code (OK or a gRPC code name).",
    ["method", "code"],
)
RPC_DURATION = Histogram(
    "bazaar_rpc_duration_seconds",
    "Time to execute one RPC request (from the handler's start to its encoded reply).",
    ["method"],
    buckets=FAST_BUCKETS,
)

# ---- per service, registered by enable() ---------------------------------
_SERVICE_METRICS: dict[str, dict[str, Any]] = {
    "order": {
        "orders": Counter(
            "bazaar_orders_total",
            "Order RPCs answered by this replica, by result (ok or the error code, lower case).",
            ["result"],
            registry=None,
        ),
        "fsync": Histogram(
            "bazaar_order_fsync_duration_seconds",
            "Time to make one batch of order-log writes durable (group commit).",
            buckets=FAST_BUCKETS,
            registry=None,
        ),
    },
    "catalog": {
        "trades": Counter(
            "bazaar_catalog_trades_total",
            "Trade RPCs answered by the catalog, by result (ok or the error code, lower case).",
            ["result"],
            registry=None,
        ),
        "fsync": Histogram(
            "bazaar_catalog_fsync_duration_seconds",
            "Time to make one batch of catalog changes durable.",
            buckets=FAST_BUCKETS,
            registry=None,
        ),
    },
    # The front end's HTTP metrics come from its HttpMeter (bazaar.frontend.observe),
    # through the frontend collector below.
}
_enabled: set[str] = set()
_enable_lock = threading.Lock()


def enable(service: str) -> dict[str, Any]:
    """Register `service`'s own metrics (once per process) and return them by short name."""
    metrics = _SERVICE_METRICS.get(service, {})
    if service not in _enabled:
        with _enable_lock:
            if service not in _enabled:
                for metric in metrics.values():
                    REGISTRY.register(metric)
                source_collector = _COLLECTORS.get(service)
                if source_collector is not None:
                    REGISTRY.register(source_collector)
                _enabled.add(service)
    return metrics


# ---- the RPC server's hook --------------------------------------------------
# Per service: the method whose outcomes also count as that service's results.
_RESULT_OF = {"order": ("order", "orders"), "catalog": ("trade", "trades")}


class RpcObserver:
    """`observer(method, code, seconds)` for each request an `rpc.Server` executed.

    Label children are cached per (method, code): `.labels()` takes a lock and
    builds a tuple, which would double the cost of an observation.
    """

    def __init__(self, service: str):
        metrics = enable(service)
        result_method, result_metric = _RESULT_OF.get(service, (None, None))
        self._result_method = result_method
        self._results = metrics.get(result_metric) if result_metric else None
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}

    def __call__(self, method: str, code: str, seconds: float) -> None:
        children = self._children.get((method, code))
        if children is None:
            children = self._children[(method, code)] = self._make(method, code)
        count, duration, result = children
        count.inc()
        duration.observe(seconds)
        if result is not None:
            result.inc()

    def _make(self, method: str, code: str) -> tuple[Any, Any, Any]:
        result = None
        if self._results is not None and method == self._result_method:
            result = self._results.labels("ok" if code == "OK" else code.lower())
        return RPC_REQUESTS.labels(method, code), RPC_DURATION.labels(method), result


def fsync_timer(service: str) -> Histogram:
    """The fsync histogram of `service` ("order" or "catalog"): `with fsync_timer(s).time(): ...`."""
    return enable(service)["fsync"]


# ---- collectors reading a watched service's state ----------------------------
class _SourceCollector:
    """Yields metrics computed from the latest watched source, if it still exists."""

    def __init__(self, build: Callable[[Any], Iterator[Metric]]):
        self._build = build
        self._source: weakref.ref | None = None

    def watch(self, source: Any) -> None:
        self._source = weakref.ref(source)

    def collect(self) -> Iterator[Metric]:
        source = self._source() if self._source is not None else None
        if source is None:
            return
        try:
            yield from self._build(source)
        except Exception:  # a scrape must never break the service
            log.exception("metrics collection failed")

    def describe(self) -> list[Metric]:
        return []  # no describe-time collection: sources come and go


def _order_metrics(replica: Any) -> Iterator[Metric]:
    """From `replica.rpc_status()`: the same view the front end elects from."""
    st = replica.rpc_status()
    last = st.get("last_number")
    last = -1 if last is None else last
    is_leader = st.get("role") == "leader"
    yield GaugeMetricFamily(
        "bazaar_order_is_leader",
        "1 while this replica leads and serves orders (recovered), else 0.",
        value=1.0 if is_leader else 0.0,
    )
    yield GaugeMetricFamily(
        "bazaar_order_epoch", "The highest epoch this replica accepted.", value=st.get("epoch") or 0
    )
    commit = st.get("commit")
    yield GaugeMetricFamily(
        "bazaar_order_commit_number",
        "Highest order number known committed here (the leader's commit point, a follower's "
        "durable log end); -1 before the first order.",
        value=commit if is_leader and commit is not None else last,
    )
    lag = GaugeMetricFamily(
        "bazaar_order_replication_lag_records",
        "On the leader: records a follower still misses (leader's log end minus the follower's).",
        labels=["peer"],
    )
    if is_leader:
        for peer, follower in sorted((st.get("followers") or {}).items()):
            matched = follower.get("last_number")
            matched = -1 if matched is None else matched
            lag.add_metric([str(peer)], max(0, last - matched))
    yield lag


def _catalog_metrics(service: Any) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "bazaar_catalog_invalidations",
        "Invalidations the catalog handed to its PUB socket.",
        value=getattr(service, "invalidations", 0),
    )


def _frontend_metrics(parts: Any) -> Iterator[Metric]:
    meter = getattr(parts, "meter", None)
    if meter is not None:
        yield from meter.collect()
    stats = parts.cache.stats()
    yield CounterMetricFamily(
        "bazaar_cache_hits", "Lookups answered from the cache.", value=stats["hits"]
    )
    yield CounterMetricFamily(
        "bazaar_cache_misses", "Lookups the cache could not answer.", value=stats["misses"]
    )
    yield CounterMetricFamily(
        "bazaar_cache_flushes",
        "Whole-cache flushes (seq gap, catalog restart, silent feed).",
        value=stats.get("flushes", 0),
    )
    yield GaugeMetricFamily("bazaar_cache_entries", "Entries in the cache.", value=stats["size"])
    orders = parts.orders
    yield CounterMetricFamily(
        "bazaar_leader_elections",
        "Leader elections this front end ran.",
        value=getattr(orders, "elections", 0),
    )
    leader = getattr(orders, "leader", None)
    yield GaugeMetricFamily(
        "bazaar_frontend_order_leader",
        "The order replica this front end sends orders to (0: none known).",
        value=leader or 0,
    )
    yield GaugeMetricFamily(
        "bazaar_frontend_order_epoch",
        "The epoch of that leader.",
        value=getattr(orders, "epoch", 0) or 0,
    )


_COLLECTORS = {
    "order": _SourceCollector(_order_metrics),
    "catalog": _SourceCollector(_catalog_metrics),
    "frontend": _SourceCollector(_frontend_metrics),
}


def watch(service: str, source: Any) -> None:
    """Read `service`'s gauges from `source` at scrape time (see the collectors above).

    order: an object with `rpc_status()`; catalog: one with an `invalidations`
    count; frontend: one with `.cache` (a LookupCache) and `.orders` (an OrderRouter).
    """
    enable(service)
    _COLLECTORS[service].watch(source)


# ---- exposition ---------------------------------------------------------------
def exposition() -> bytes:
    """This process's metrics in the Prometheus text format."""
    return generate_latest(REGISTRY)


class MetricsServer:
    """`/metrics` on its own port (BAZAAR_METRICS_PORT), for services without HTTP."""

    def __init__(self, host: str, port: int):
        self._server, self._thread = start_http_server(port, addr=host)
        self.port = self._server.server_port
        log.info("metrics on http://%s:%s/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(1.0)


def serve(host: str, port: int) -> MetricsServer | None:
    """Start the exposition on `host:port`, or nothing when `port` is 0."""
    return MetricsServer(host, port) if port else None
