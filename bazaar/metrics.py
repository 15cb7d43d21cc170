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
  time by collectors from a *source* the service hands over with `watch`.
  Sources are held weakly: a stopped service simply disappears from the
  exposition, and the last one watched wins (tests run several in one process).

Service-specific metrics are registered on first use (`enable(service)`), so
a replica's exposition does not show the catalog's counters at zero.

Label values stay few: RPC methods are registered names only, codes come from
a fixed table, routes are classified by `bazaar.frontend.observe`; no user
input ever becomes a label value.

Off until `activate()`: prometheus_client imports http.server, urllib and ssl
(~9 MB of RSS per process, docs/performance.md "Footprint"), so a catalog or
replica without BAZAAR_METRICS_PORT never loads it, and every hook here is
then a no-op. The front end, which always serves /metrics, activates it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

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
# Per service: the RPC method whose outcomes also count as that service's results.
_RESULT_OF = {"order": ("order", "orders"), "catalog": ("trade", "trades")}

_defs: _Definitions | None = None
_lock = threading.Lock()


def activate() -> None:
    """Load prometheus_client and define every metric (once per process)."""
    global _defs
    if _defs is None:
        with _lock:
            if _defs is None:
                _defs = _Definitions()


def active() -> bool:
    return _defs is not None


class _Definitions:
    """Every metric object, made when metrics are activated."""

    def __init__(self):
        import prometheus_client as pc
        from prometheus_client import exposition

        # No `*_created` series: Prometheus does not need them; they double the text.
        pc.disable_created_metrics()
        self.pc, self.exposition_module = pc, exposition
        self.registry = pc.REGISTRY
        self.rpc_requests = pc.Counter(
            "bazaar_rpc_requests_total",
            "RPC requests executed by this service, by method and result code "
            "(OK or a gRPC code name).",
            ["method", "code"],
        )
        self.rpc_duration = pc.Histogram(
            "bazaar_rpc_duration_seconds",
            "Time to execute one RPC request (from the handler's start to its encoded reply).",
            ["method"],
            buckets=FAST_BUCKETS,
        )
        # Registered on first use (enable), so a replica's exposition does not
        # show the catalog's counters at zero.
        self.service_metrics: dict[str, dict[str, Any]] = {
            "order": {
                "orders": pc.Counter(
                    "bazaar_orders_total",
                    "Order RPCs answered by this replica, by result "
                    "(ok or the error code, lower case).",
                    ["result"],
                    registry=None,
                ),
                "fsync": pc.Histogram(
                    "bazaar_order_fsync_duration_seconds",
                    "Time to make one batch of order-log writes durable (group commit).",
                    buckets=FAST_BUCKETS,
                    registry=None,
                ),
            },
            "catalog": {
                "trades": pc.Counter(
                    "bazaar_catalog_trades_total",
                    "Trade RPCs answered by the catalog, by result "
                    "(ok or the error code, lower case).",
                    ["result"],
                    registry=None,
                ),
                "fsync": pc.Histogram(
                    "bazaar_catalog_fsync_duration_seconds",
                    "Time to make one batch of catalog changes durable (one COMMIT).",
                    buckets=FAST_BUCKETS,
                    registry=None,
                ),
            },
            # The front end's HTTP metrics come from its HttpMeter
            # (bazaar.frontend.observe), through the frontend collector below.
            "frontend": {},
        }
        self.collectors = {
            "order": _SourceCollector(_order_metrics),
            "catalog": _SourceCollector(_catalog_metrics),
            "frontend": _SourceCollector(_frontend_metrics),
        }
        self.enabled: set[str] = set()

    def enable(self, service: str) -> dict[str, Any]:
        metrics = self.service_metrics.get(service, {})
        if service not in self.enabled:
            with _lock:
                if service not in self.enabled:
                    for metric in metrics.values():
                        self.registry.register(metric)
                    collector = self.collectors.get(service)
                    if collector is not None:
                        self.registry.register(collector)
                    self.enabled.add(service)
        return metrics


def enable(service: str) -> dict[str, Any]:
    """Register `service`'s own metrics and return them by short name ({} while off)."""
    return _defs.enable(service) if _defs is not None else {}


# ---- the RPC server's hook --------------------------------------------------
def _ignore(_method: str, _code: str, _seconds: float) -> None:
    return None


def rpc_observer(service: str) -> Callable[[str, str, float], None]:
    """The hook an `rpc.Server` calls per executed request; a no-op while metrics are off."""
    return RpcObserver(service) if _defs is not None else _ignore


class RpcObserver:
    """`observer(method, code, seconds)` for each request an `rpc.Server` executed.

    Label children are cached per (method, code): `.labels()` takes a lock and
    builds a tuple, which would double the cost of an observation.
    """

    def __init__(self, service: str):
        activate()
        assert _defs is not None
        self._defs = _defs
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
        return (
            self._defs.rpc_requests.labels(method, code),
            self._defs.rpc_duration.labels(method),
            result,
        )


def fsync_timer(service: str):
    """`with fsync_timer("order"):` times one durable write ("order" or "catalog")."""
    histogram = enable(service).get("fsync")
    return histogram.time() if histogram is not None else contextlib.nullcontext()


# ---- collectors reading a watched service's state ----------------------------
class _SourceCollector:
    """Yields metrics computed from the latest watched source, if it still exists."""

    def __init__(self, build: Callable[[Any], Iterator[Any]]):
        self._build = build
        self._source: weakref.ref | None = None

    def watch(self, source: Any) -> None:
        self._source = weakref.ref(source)

    def collect(self) -> Iterator[Any]:
        source = self._source() if self._source is not None else None
        if source is None:
            return
        try:
            yield from self._build(source)
        except Exception:  # a scrape must never break the service
            log.exception("metrics collection failed")

    def describe(self) -> list[Any]:
        return []  # no describe-time collection: sources come and go


def _order_metrics(replica: Any) -> Iterator[Any]:
    """From `replica.rpc_status()`: the same view the front end elects from."""
    from prometheus_client.metrics_core import GaugeMetricFamily

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
    heard = GaugeMetricFamily(
        "bazaar_order_follower_heard",
        "On the leader: 1 while it has heard from the follower within 2 s (heartbeats "
        "every 0.1 s), 0 while a link between them is down, even when idle.",
        labels=["peer"],
    )
    if is_leader:
        for peer, follower in sorted((st.get("followers") or {}).items()):
            matched = follower.get("last_number")
            matched = -1 if matched is None else matched
            lag.add_metric([str(peer)], max(0, last - matched))
            heard.add_metric([str(peer)], 1.0 if follower["heard"] else 0.0)
    yield lag
    yield heard


def _catalog_metrics(service: Any) -> Iterator[Any]:
    from prometheus_client.metrics_core import CounterMetricFamily

    yield CounterMetricFamily(
        "bazaar_catalog_invalidations",
        "Invalidations the catalog handed to its PUB socket.",
        value=getattr(service, "invalidations", 0),
    )


def _frontend_metrics(parts: Any) -> Iterator[Any]:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

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


def watch(service: str, source: Any) -> None:
    """Read `service`'s gauges from `source` at scrape time (nothing while metrics are off).

    order: an object with `rpc_status()`; catalog: one with an `invalidations`
    count; frontend: one with `.cache` (a LookupCache), `.orders` (an
    OrderRouter) and `.meter` (an HttpMeter or None).
    """
    if _defs is None:
        return
    _defs.enable(service)
    _defs.collectors[service].watch(source)


# ---- exposition ---------------------------------------------------------------
def exposition() -> tuple[bytes, str]:
    """This process's metrics in the Prometheus text format, and its content type."""
    activate()
    assert _defs is not None
    module = _defs.exposition_module
    return module.generate_latest(_defs.registry), module.CONTENT_TYPE_LATEST


class MetricsServer:
    """`/metrics` on its own port (BAZAAR_METRICS_PORT), for services without HTTP."""

    def __init__(self, host: str, port: int):
        activate()
        assert _defs is not None
        self._server, self._thread = _defs.exposition_module.start_http_server(port, addr=host)
        self.port = self._server.server_port
        log.info("metrics on http://%s:%s/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(1.0)


def serve(host: str, port: int) -> MetricsServer | None:
    """Start the exposition on `host:port` (metrics on), or nothing when `port` is 0."""
    return MetricsServer(host, port) if port else None
