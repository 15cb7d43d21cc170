"""A catalog without a disk: a real `rpc.Server` with the catalog's contract, state in memory.

The contract (docs/architecture.md): `trade` idempotent by key and refused
below the fenced (epoch, leader), `fence`, `trades_since`, `lookup`. Used by
the order service's component tests (in-process, so a test can read and
change `quantity`) and by bench/orders.py (`--catalog fake`, in a process of
its own) to measure the order service alone.
"""

from __future__ import annotations

import threading

from bazaar import rpc
from bazaar.errors import BazaarError
from bazaar.testing.keys import keys_for


class FakeCatalog:
    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:0",
        stocks=("GameStart", "FishCo"),
        quantity: int = 100,
        keys=None,
        workers: int | None = None,
        context=None,
    ):
        keys = keys or keys_for("catalog")
        options = {"workers": workers} if workers else {}
        self.server = rpc.Server(endpoint, service="catalog", keys=keys, context=context, **options)
        self.lock = threading.Lock()
        self.trades: list[dict] = []
        self.by_key: dict[str, dict] = {}
        self.fenced = 0
        self.fenced_by = None
        self.trades_since_calls = 0  # a leader's reconcile runs, counted
        self.quantity: dict[str, int] = dict.fromkeys(stocks, quantity)
        self.volume: dict[str, int] = dict.fromkeys(stocks, 0)
        for name in ("trade", "fence", "trades_since", "lookup"):
            self.server.register(name, getattr(self, name))
        self.endpoint = self.server.endpoint  # the bound address (a free port for ":0")

    def start(self) -> FakeCatalog:
        """Serve on a background thread."""
        self.server.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def lookup(self, name):
        with self.lock:
            if name not in self.quantity:
                raise BazaarError("NOT_FOUND", f"no stock {name}")
            return {
                "name": name,
                "price": 1.0,
                "quantity": self.quantity[name],
                "volume": self.volume[name],
                "max_volume": None,
            }

    def trade(self, key, name, type, quantity, epoch, leader=None):
        with self.lock:
            self._admit(epoch, leader)
            if key in self.by_key:
                return self.by_key[key]
            if name not in self.quantity:
                raise BazaarError("NOT_FOUND", f"no stock {name}")
            delta = -quantity if type == "buy" else quantity
            if self.quantity[name] + delta < 0:
                raise BazaarError("FAILED_PRECONDITION", "not enough stock")
            self.quantity[name] += delta
            self.volume[name] += quantity
            t = {"seq": len(self.trades) + 1, "key": key, "name": name, "type": type}
            t.update(quantity=quantity, epoch=epoch)
            self.trades.append(t)
            self.by_key[key] = t
            return t

    def _admit(self, epoch, leader) -> None:
        """The real catalog's fence: (epoch, leader) only grows; one leader per epoch."""
        if epoch < self.fenced or (epoch == self.fenced and leader != self.fenced_by):
            raise BazaarError("ABORTED", "fenced", {"epoch": self.fenced})
        self.fenced, self.fenced_by = epoch, leader

    def fence(self, epoch, leader=None):
        with self.lock:
            if epoch > self.fenced:
                self.fenced, self.fenced_by = epoch, leader
            elif epoch == self.fenced and leader != self.fenced_by:
                raise BazaarError("ABORTED", "fenced", {"epoch": self.fenced})
            return {"epoch": self.fenced, "leader": self.fenced_by}

    def trades_since(self, after, limit=None):
        with self.lock:
            self.trades_since_calls += 1
            trades = [t for t in self.trades if t["seq"] > after][: limit or None]
            return {"trades": trades, "last_seq": len(self.trades)}

    def stop(self):
        self.server.stop()
