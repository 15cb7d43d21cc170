"""The catalog on the network: the RPC methods of docs/architecture.md and the PUB socket.

Owns the wiring only: the market's state and its database live in
`bazaar.catalog.store`, the trade rules in `bazaar.catalog.market`. Threads:
- the RPC server's I/O thread answers `lookup` and `list_stocks` inline (a
  read under the store's lock, never disk I/O), and decides each `trade` as
  it reads it, answering the trades read together after their one group
  commit (`rpc.Later`): an fsync per burst on that thread, no hand-off;
  `fence` and `trades_since` run on its worker pool;
- the publisher thread is the only user of the PUB socket (zmq sockets are not
  thread-safe): it sends `[b"invalidate", {seq, name, boot}]` for every applied
  trade handed to it, and `[b"heartbeat", {seq, boot}]` once a second.
  `seq` counts invalidations of this process (0 before the first one; the
  heartbeat repeats the latest), `boot` is a random id per process, so a
  subscriber sees both a lost message (a gap) and a restarted catalog.

`run(config, stop)` is the `bazaar catalog` role; `CatalogService(config)`
builds the same thing in-process for tests (endpoints ending in `:0` pick a
free port).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

import zmq

from bazaar import metrics, rpc, security, wire
from bazaar.catalog.store import Catalog
from bazaar.config import Config

log = logging.getLogger(__name__)

# Who may call what (SPEC section 2); the roles are ZAP User-Ids.
REPLICAS = frozenset({"order1", "order2", "order3"})
READERS = frozenset({"frontend", "client"}) | REPLICAS
ROLES = {
    "lookup": READERS,
    "list_stocks": READERS,
    "trade": REPLICAS,
    "fence": REPLICAS,
    "trades_since": REPLICAS,
}
HEARTBEAT_INTERVAL = 1.0


def _bind(sock: zmq.Socket, endpoint: str) -> tuple[str, int | None]:
    """Bind `sock`; an endpoint ending in ':0' gets a free port. Returns (endpoint, port)."""
    if endpoint.endswith(":0"):
        base = endpoint.rsplit(":", 1)[0]
        port = sock.bind_to_random_port(base)
        return f"{base}:{port}", port
    sock.bind(endpoint)
    port = int(endpoint.rsplit(":", 1)[1]) if endpoint.startswith("tcp://") else None
    return endpoint, port


class Publisher:
    """Invalidations and heartbeats on one PUB socket, sent from one thread."""

    _STOP = object()

    def __init__(
        self,
        endpoint: str,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        keys: security.Keys | None = None,
    ):
        self.boot = os.urandom(8).hex()  # not `secrets`: it pulls in OpenSSL (~4 MB)
        self.heartbeat_interval = heartbeat_interval
        self._ctx = zmq.Context.instance()
        self._keys = keys
        self._sock = rpc.harden(self._ctx.socket(zmq.PUB))
        # Bound here, so a taken port fails the start; the socket then moves to
        # the publisher thread (thread start is the memory barrier zmq asks for).
        try:
            if keys is not None:  # only the front end's key may subscribe
                security.authenticators.acquire(self._ctx, keys)
                security.secure_server(self._sock, keys, security.PUB_DOMAIN)
            self.endpoint, self.port = _bind(self._sock, endpoint)
        except BaseException:
            self._close()
            raise
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="catalog-pub", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def invalidate(self, name: str) -> None:
        """Announce a change of stock `name` (any thread)."""
        self._outbox.put(name)

    def stop(self, timeout: float = 1.0) -> None:
        self._outbox.put(self._STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:
            self._close()

    def _close(self) -> None:
        self._sock.close(0)
        if self._keys is not None:
            security.authenticators.release(self._ctx)
            self._keys = None

    def _send(self, topic: bytes, body: dict[str, Any]) -> None:
        try:
            self._sock.send_multipart([topic, wire.pack(body)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # PUB drops rather than blocks; a subscriber sees the gap
            log.debug("publish %s dropped: %s", topic, exc)

    def _loop(self) -> None:
        seq = 0
        next_heartbeat = time.monotonic()  # one right away: subscribers learn `boot` early
        try:
            while True:
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._send(b"heartbeat", {"seq": seq, "boot": self.boot})
                    next_heartbeat = now + self.heartbeat_interval
                try:
                    item = self._outbox.get(timeout=max(0.0, next_heartbeat - now))
                except queue.Empty:
                    continue
                if item is self._STOP:
                    return
                seq += 1
                self._send(b"invalidate", {"seq": seq, "name": item, "boot": self.boot})
        finally:
            self._close()


class CatalogService:
    """The catalog's store, RPC server and publisher, started and stopped together.

    >>> service = CatalogService(config.with_(catalog="tcp://127.0.0.1:0",
    ...                                       catalog_pub="tcp://127.0.0.1:0")).start()
    >>> service.rpc_endpoint, service.pub_endpoint   # connectable tcp://127.0.0.1:<port>
    >>> service.stop()
    """

    def __init__(
        self,
        config: Config,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ):
        self.config = config
        keys = security.for_service(config.keys_path, config.insecure, "catalog")
        self.catalog = Catalog.open(config.data_dir)
        self.invalidations = 0
        try:
            self.publisher = Publisher(
                config.bind(config.catalog_pub),
                heartbeat_interval=heartbeat_interval,
                keys=keys,
            )
            try:
                self.server = rpc.Server(
                    config.bind(config.catalog),
                    service="catalog",
                    keys=keys,
                    info_roles=READERS,
                )
            except BaseException:
                self.publisher.stop()  # never started: just closes its socket
                raise
        except BaseException:
            self.catalog.close()
            raise
        self.server.register("lookup", self.lookup, inline=True, roles=ROLES["lookup"])
        self.server.register("list_stocks", self.list_stocks, inline=True, roles=READERS)
        # On the I/O thread: trades are decided in memory as they are read, and
        # a burst is answered after one group commit (no worker hand-off).
        self.server.register("trade", self._trade_later, inline=True, roles=ROLES["trade"])
        self.server.register("fence", self.fence, roles=ROLES["fence"])
        # Pages of up to 2000 trades: one running per replica is all they need,
        # plus the retries of an idempotent call that timed out (3 in flight).
        self.server.register(
            "trades_since", self.trades_since, roles=ROLES["trades_since"], per_caller=4
        )

    # ---- addresses a client on this machine can connect to --------------
    @property
    def rpc_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.server.port}"

    @property
    def pub_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.publisher.port}"

    @property
    def boot(self) -> str:
        return self.publisher.boot

    # ---- RPC methods (argument names are the wire's) ----------------------
    def lookup(self, name):
        return self.catalog.lookup(name)

    def list_stocks(self):
        # `writable`: whether the latest write committed (a full disk says False);
        # the front end's monitor polls this call and shows it in /health.
        return {"stocks": self.catalog.stocks(), "writable": self.catalog.writable}

    def trade(self, key, name, type, quantity, epoch, leader=None):  # `type`: the wire's name
        outcome = self.catalog.trade(key, name, type, quantity, epoch, leader)
        if outcome.applied:
            self.publisher.invalidate(outcome.result["name"])
            self.invalidations += 1  # read by bazaar.metrics at scrape time
        return outcome.result

    def _trade_later(self, key, name, type, quantity, epoch, leader=None):
        """`trade` for the RPC server: decided now, answered after the batch's commit."""
        finish = self.catalog.trade_later(key, name, type, quantity, epoch, leader)

        def done():
            outcome = finish()
            if outcome.applied:
                self.publisher.invalidate(outcome.result["name"])
                self.invalidations += 1
            return outcome.result

        return rpc.Later(done)

    def fence(self, epoch, leader=None):
        return self.catalog.fence(epoch, leader)

    def trades_since(self, after, limit=None):
        return self.catalog.trades_since(after, limit)

    # ---- lifecycle --------------------------------------------------------
    def start(self) -> CatalogService:
        self.publisher.start()
        self.server.start()
        log.info(
            "catalog serving on %s, publishing on %s (boot %s)",
            self.server.endpoint,
            self.publisher.endpoint,
            self.boot,
        )
        return self

    def stop(self) -> None:
        """Stop serving, then commit what is queued and close the database."""
        self.server.stop()
        self.catalog.close()
        self.publisher.stop()

    def __enter__(self) -> CatalogService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run(config: Config, stop: threading.Event) -> None:
    """The `bazaar catalog` role: serve until `stop` is set."""
    service = CatalogService(config).start()
    metrics.watch("catalog", service)
    try:
        stop.wait()
    finally:
        service.stop()
