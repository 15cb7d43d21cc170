"""The front end's view of the cluster, refreshed in the background.

`/health` and the dashboard read `ClusterMonitor.snapshot()`, which does no
RPC: two probe threads refresh what it is built from (the catalog's market
via `list_stocks`, which also says the catalog is up and whether its latest
write committed; every replica's `status` via the order router) every
INTERVAL seconds. So a burst of polls
costs nothing on the internal network and can never hold up order handling,
and what they see is at most about a second old: a probe answer older than
STALE_AFTER counts as no answer.

`health(...)` is the pure part: SPEC section 1's /health body from the probes'
latest results, the router's leader and epoch, and the cache counters.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bazaar.errors import BazaarError

log = logging.getLogger(__name__)

INTERVAL = 0.25
PROBE_TIMEOUT = 0.7  # interval + timeout stays under a second
STALE_AFTER = 1.5
FIRST_SNAPSHOT_WAIT = 2.0
STOCK_FIELDS = ("name", "price", "quantity", "volume", "max_volume")


def health(
    catalog_up: bool,
    statuses: dict[int, dict[str, Any] | None],
    leader: int | None,
    epoch: int,
    cache_stats: dict[str, Any],
    catalog_writable: bool | None = None,
) -> tuple[dict[str, Any], int]:
    """SPEC section 1 /health body and its HTTP status (503 when orders cannot be taken).

    `catalog_writable` is False while the catalog's latest write failed (a full
    disk): it answers lookups but refuses every trade, so orders cannot be taken.
    None: not known (the catalog is down, or too old to say).
    """
    leader_status = statuses.get(leader) if leader is not None else None
    leader_last = leader_status.get("last_number") if leader_status else None
    replicas = {}
    for rid, st in sorted(statuses.items()):
        last = st.get("last_number") if st else None
        lag = None
        if st is not None and leader_last is not None:
            lag = max(0, leader_last - (-1 if last is None else last))
        replicas[str(rid)] = {
            "up": st is not None,
            "last_number": last,
            "role": st.get("role") if st else None,
            "lag": lag,
            "replicating": None if rid == leader else heard_by_leader(leader_status, rid),
        }
    # The leader must answer and still see itself as leader (a replica restarted
    # in the same epoch does not, until the next election).
    leader_up = leader_status is not None and leader_status.get("leader") == leader
    # Orders commit only on a majority (the leader counted): without one the
    # leader takes none, whatever else is up.
    live = sum(1 for st in statuses.values() if st is not None)
    majority = live >= len(statuses) // 2 + 1 and (
        leader_status is None or leader_status.get("majority") is not False
    )
    if not (catalog_up and catalog_writable is not False and leader_up and majority):
        state = "unavailable"
    elif all(st is not None for st in statuses.values()) and all(
        r["replicating"] is not False for r in replicas.values()
    ):
        state = "ok"
    else:
        state = "degraded"
    data = {
        "status": state,
        "catalog": {"up": catalog_up, "writable": catalog_writable if catalog_up else None},
        "order": {"leader": leader, "epoch": epoch, "replicas": replicas},
        "cache": cache_stats,
    }
    return data, 503 if state == "unavailable" else 200


def heard_by_leader(leader_status: dict[str, Any] | None, rid: int) -> bool | None:
    """Whether the leader heard from follower `rid` lately (its `status`:
    `followers.<rid>.heard`); None when it does not say (no leader, an old one).

    The front end may reach a replica that the leader cannot (a link cut
    between the two): that follower gets no new records, so the cluster is
    degraded although every replica answers the front end. The window is the
    leader's MAJORITY_SILENCE (2 s, with a heartbeat every 0.1 s), so one late
    answer on a loaded machine does not flap `/health`.
    """
    followers = (leader_status or {}).get("followers")
    follower = followers.get(str(rid)) if isinstance(followers, dict) else None
    heard = follower.get("heard") if isinstance(follower, dict) else None
    return heard if isinstance(heard, bool) else None


class _Probe:
    """One background thread calling `fetch()` every `interval`; keeps the last answer."""

    def __init__(self, name: str, fetch, interval: float, stop: threading.Event):
        self.name = name
        self._fetch = fetch
        self._interval = interval
        self._stop = stop
        self.value: Any = None
        self.at = float("-inf")  # monotonic time of the last completed fetch
        self.done_once = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"monitor-{name}", daemon=True)

    def run_once(self) -> None:
        try:
            value = self._fetch()
        except BazaarError:
            value = None
        except Exception:
            log.exception("monitor probe %s failed", self.name)
            value = None
        self.value, self.at = value, time.monotonic()
        self.done_once.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.run_once()
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))

    def fresh(self, stale_after: float) -> Any:
        """The last answer, or None if it is older than `stale_after` seconds."""
        return self.value if time.monotonic() - self.at <= stale_after else None


class ClusterMonitor:
    """Background probes of the catalog and the replicas; `snapshot()` reads them."""

    def __init__(self, catalog, orders, cache):
        self.catalog, self.orders, self.cache = catalog, orders, cache
        self._stop = threading.Event()

        def market() -> dict[str, Any]:
            try:
                return catalog.call("list_stocks", timeout=PROBE_TIMEOUT, idempotent=True)
            except BazaarError as err:
                if not err.remote:
                    raise
                return {"stocks": None}  # it answered, so it is up; no market to show

        self._market = _Probe("catalog", market, INTERVAL, self._stop)
        self._replicas = _Probe(
            "orders", lambda: orders.statuses(PROBE_TIMEOUT), INTERVAL, self._stop
        )

    def start(self) -> ClusterMonitor:
        self._market.thread.start()
        self._replicas.thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        for probe in (self._market, self._replicas):
            if probe.thread.is_alive():
                probe.thread.join(timeout)

    def refresh(self) -> None:
        """Probe now, on the caller's thread (tests; the threads keep running)."""
        self._market.run_once()
        self._replicas.run_once()

    def _wait_first(self) -> None:
        # Right after start the probes have not answered yet; wait for them
        # once instead of calling every service was down.
        for probe in (self._market, self._replicas):
            if probe.thread.is_alive():
                probe.done_once.wait(FIRST_SNAPSHOT_WAIT)

    def health(self) -> tuple[dict[str, Any], int]:
        self._wait_first()
        statuses = self._replicas.fresh(STALE_AFTER)
        if statuses is None:  # the probe itself is late: nothing known of any replica
            statuses = dict.fromkeys(getattr(self.orders, "clients", {}))
        answer = self._market.fresh(STALE_AFTER)
        writable = answer.get("writable") if isinstance(answer, dict) else None
        return health(
            answer is not None,
            statuses,
            self.orders.leader,
            self.orders.epoch,
            self.cache.stats(),
            catalog_writable=writable if isinstance(writable, bool) else None,
        )

    def market(self) -> list[dict[str, Any]] | None:
        """The stocks as last seen (None when the catalog did not answer lately)."""
        self._wait_first()
        answer = self._market.fresh(STALE_AFTER)
        if not isinstance(answer, dict) or not isinstance(answer.get("stocks"), list):
            return None
        stocks = [
            {k: s.get(k) for k in STOCK_FIELDS} for s in answer["stocks"] if isinstance(s, dict)
        ]
        return sorted(stocks, key=lambda s: str(s["name"]))

    @property
    def age(self) -> float:
        """Seconds since the older of the two probes last completed."""
        return time.monotonic() - min(self._market.at, self._replicas.at)
