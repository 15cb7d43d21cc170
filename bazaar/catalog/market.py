"""The market's rules: what a stock is, which trades and fences are allowed. Pure: no I/O.

Owns:
- `Stock`, the default market, and `Trade` (one applied trade with the
  stock's quantity and volume right after it, which is also its reply);
- the argument checks of `trade` and `fence` (INVALID_ARGUMENT): a key, a
  name, a type and a quantity as `bazaar.rules` defines them for every service;
- `apply_trade`: enough stock to buy, `max_volume` never passed
  (FAILED_PRECONDITION), else the stock's new quantity and volume;
- `Fence` and `admit`: a call at epoch E by leader L passes only if E is not
  below the fenced epoch and no other leader holds E (ABORTED otherwise).

Never: touch a file, a socket or a lock. The store (`bazaar.catalog.store`)
decides under its lock and makes the outcome durable; this module only says
what the outcome is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bazaar import rules
from bazaar.errors import BazaarError, invalid, not_found, precondition
from bazaar.wire import MAX_EPOCH, is_int

DEFAULT_QUANTITY = 100
DEFAULT_STOCKS = (
    ("GameStart", 48.50),
    ("FishCo", 12.25),
    ("BoarCo", 27.80),
    ("MenhirCo", 33.10),
    ("PotionCo", 72.40),
    ("DruidCo", 95.00),
    ("ShieldCo", 19.95),
    ("HelmetCo", 22.60),
    ("SickleCo", 14.80),
    ("BardCo", 5.75),
    ("RoadCo", 41.30),
)


@dataclass(slots=True)
class Stock:
    name: str
    price: float
    quantity: int
    volume: int = 0
    max_volume: int | None = None  # None: no limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "price": self.price,
            "quantity": self.quantity,
            "volume": self.volume,
            "max_volume": self.max_volume,
        }


def default_market() -> dict[str, Stock]:
    """The market of a catalog that starts with nothing in its data dir."""
    return {name: Stock(name, price, DEFAULT_QUANTITY) for name, price in DEFAULT_STOCKS}


@dataclass(frozen=True, slots=True)
class Trade:
    """One applied trade, with the stock's quantity and volume right after it."""

    seq: int
    key: str
    name: str
    type: str
    quantity: int
    epoch: int
    new_quantity: int
    new_volume: int

    def matches(self, name: str, trade_type: str, quantity: int) -> bool:
        return (self.name, self.type, self.quantity) == (name, trade_type, quantity)

    def describe(self) -> str:
        return f"{self.type} {self.quantity} {self.name}"

    def summary(self) -> dict[str, Any]:
        """The `trades_since` view of a trade."""
        return {**self._fields(), "epoch": self.epoch}

    def result(self, stock: Stock) -> dict[str, Any]:
        """The `trade` reply; `stock` gives price and max_volume, which never change."""
        after = Stock(self.name, stock.price, self.new_quantity, self.new_volume, stock.max_volume)
        return {**self._fields(), "stock": after.to_dict()}

    def _fields(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "key": self.key,
            "name": self.name,
            "type": self.type,
            "quantity": self.quantity,
        }


def apply_trade(stock: Stock | None, name: str, trade_type: str, quantity: int) -> tuple[int, int]:
    """(quantity, volume) of `stock` after the trade; NOT_FOUND / FAILED_PRECONDITION if refused."""
    if stock is None:
        raise not_found(f"no stock named {name:.100}")
    if trade_type == "buy" and quantity > stock.quantity:
        raise precondition(
            f"cannot buy {quantity} {name}: only {stock.quantity} available",
            available=stock.quantity,
        )
    if stock.max_volume is not None and stock.volume + quantity > stock.max_volume:
        raise precondition(
            f"cannot trade {quantity} {name}: volume {stock.volume} would pass "
            f"the limit of {stock.max_volume}",
            volume=stock.volume,
            max_volume=stock.max_volume,
        )
    delta = -quantity if trade_type == "buy" else quantity
    return stock.quantity + delta, stock.volume + quantity


# ---- the fence -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fence:
    """The highest epoch seen and the leader that holds it (None: not yet known)."""

    epoch: int = 0
    leader: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "leader": self.leader}


def fenced_off(fence: Fence, why: str) -> BazaarError:
    return BazaarError("ABORTED", why, fence.to_dict())


def admit(fence: Fence, epoch: int, leader: int | None) -> Fence:
    """The fence after letting a call of (`epoch`, `leader`) through; ABORTED if it is fenced off.

    A call without a leader (a caller of the older protocol) is judged by its
    epoch alone. The first leader named for an epoch holds it: from then on
    the catalog refuses any other leader in that epoch (SPEC section 3).
    """
    if epoch < fence.epoch:
        raise fenced_off(
            fence, f"epoch {epoch} is fenced off: the catalog has seen epoch {fence.epoch}"
        )
    if epoch > fence.epoch:
        return Fence(epoch, leader)
    if leader is None or leader == fence.leader:
        return fence
    if fence.leader is None:
        return Fence(epoch, leader)
    raise fenced_off(
        fence, f"epoch {epoch} belongs to leader {fence.leader}, not to leader {leader}"
    )


# ---- argument checks -----------------------------------------------------------------


def check_lookup_name(name: Any) -> str:
    """A lookup names a stock by any non-empty string: one that is none is NOT_FOUND."""
    if not isinstance(name, str) or not name:
        raise invalid("name must be a non-empty string")
    return name


def check_epoch(epoch: Any) -> int:
    if not is_int(epoch) or not 1 <= epoch <= MAX_EPOCH:
        raise invalid(f"epoch must be an integer from 1 to {MAX_EPOCH}")
    return epoch


def check_leader(leader: Any) -> int | None:
    """A replica id (an integer >= 1), or None when the caller names no leader."""
    if leader is not None and (not is_int(leader) or not 1 <= leader <= MAX_EPOCH):
        raise invalid("leader must be a replica id (an integer >= 1) or null")
    return leader


def check_trade(key: Any, name: Any, trade_type: Any, quantity: Any, epoch: Any, leader: Any):
    """Every argument check of `trade`, in the order a caller reads the errors.

    The key passes if a catalog may hold it already (`rules.is_stored_key`):
    the store answers a retry of it, and checks `rules.is_key` for a new one.
    """
    rules.check_order(key, name, trade_type, quantity, stored_key=True)
    check_epoch(epoch)
    check_leader(leader)
