"""In-process stand-ins for the front end's collaborators, for tests of the Flask app alone.

`create_app(catalog=..., orders=..., cache=...)` takes any objects with the
catalog client's and the order router's methods; these answer from memory,
count their calls and can be told to fail (`fail`, `up`), so the HTTP layer
is tested without sockets (tests/unit/test_frontend_app.py) and measured
without a cluster behind it (bench/http.py).
"""

from __future__ import annotations

from bazaar.errors import BazaarError

STOCK = {"name": "GameStart", "price": 15.99, "quantity": 100, "volume": 0, "max_volume": None}


class FakeCatalogClient:
    """The catalog's rpc.Client as the front end uses it: lookup, list_stocks, ping."""

    def __init__(self):
        self.lookups = 0
        self.fail: BazaarError | None = None
        self.up = True
        self.writable = True

    def call(self, method, /, *, timeout=None, idempotent=False, **args):  # noqa: ARG002 (the real Client's signature)
        if method == "ping":
            if not self.up:
                raise BazaarError("UNAVAILABLE", "down")
            return {"service": "catalog"}
        if method == "list_stocks":
            if not self.up:
                raise BazaarError("UNAVAILABLE", "down")
            return {"stocks": [dict(STOCK)], "writable": self.writable}
        assert method == "lookup"
        self.lookups += 1
        if self.fail:
            raise self.fail
        if args["name"] != "GameStart":
            err = BazaarError("NOT_FOUND", f"no stock {args['name']}")
            err.remote = True
            raise err
        return dict(STOCK)


class FakeOrders:
    """The front end's OrderRouter: order, get_order, statuses; one in-memory log."""

    def __init__(self):
        self.placed: list[tuple] = []
        self.leader, self.epoch = 3, 1
        self.replica_up = {1: True, 2: True, 3: True}
        self.fail: BazaarError | None = None

    def order(self, key, name, type, quantity):
        if self.fail:
            raise self.fail
        for number, placed in enumerate(self.placed):
            if placed[0] == key:
                return {"transaction_number": number}
        self.placed.append((key, name, type, quantity))
        return {"transaction_number": len(self.placed) - 1}

    def get_order(self, number):
        if number >= len(self.placed):
            raise BazaarError("NOT_FOUND", f"no order {number}")
        _, name, kind, quantity = self.placed[number]
        return {"number": number, "name": name, "type": kind, "quantity": quantity, "key": "x"}

    def statuses(self, timeout=None):  # noqa: ARG002 (the real signature)
        return {
            rid: (
                {"id": rid, "last_number": None, "role": "x", "leader": self.leader} if up else None
            )
            for rid, up in self.replica_up.items()
        }
