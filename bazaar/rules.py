"""What an order and its key are: the one definition every service checks against.

Pure: no I/O. The front end (`bazaar.frontend.validation`), the order
service (`bazaar.order.handlers`) and the catalog (`bazaar.catalog.market`)
each call these checks, so a key, name, type or quantity one service takes
is taken by all three, and one refused is refused by all three with the same
INVALID_ARGUMENT message (SPEC section 1: 400 at the front end).

- An idempotency key: 1 to MAX_KEY_LEN printable ASCII characters, `!` to
  `~` (no spaces, no control characters): a header value, a UUID, a line of
  an export; docs/api.md documents this for `Idempotency-Key`. Catalogs
  before 0.3 also took other characters (not control characters) over RPC:
  `is_stored_key` says what one may hold, so a retry of such a key still gets
  its first answer while a new trade needs `is_key`.
- A stock name: 1 to MAX_NAME_LEN characters without control characters
  (the seed CSV's rule, `bazaar.catalog.market_csv`): no longer name can
  exist in the market, so an order naming one is malformed.
- A quantity: an int (a bool is not one) from 1 to MAX_QUANTITY; far above
  any real order, it keeps every count well inside msgpack's int64.
- An order type: "buy" or "sell".
"""

from __future__ import annotations

import re
from typing import Any

from bazaar.errors import invalid
from bazaar.wire import is_int

ORDER_TYPES = ("buy", "sell")
MAX_KEY_LEN = 200
MAX_NAME_LEN = 100
MAX_QUANTITY = 1_000_000_000

_KEY = re.compile(rf"[!-~]{{1,{MAX_KEY_LEN}}}")


def is_key(key: Any) -> bool:
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def is_stored_key(key: Any) -> bool:
    """A key a catalog may hold from before this rule: 1-MAX_KEY_LEN characters, no control."""
    return isinstance(key, str) and 0 < len(key) <= MAX_KEY_LEN and not has_control_chars(key)


def has_control_chars(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def is_stock_name(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME_LEN and not has_control_chars(name)


def is_quantity(quantity: Any) -> bool:
    return is_int(quantity) and 0 < quantity <= MAX_QUANTITY


def check_key(key: Any, field: str = "key", *, stored: bool = False) -> str:
    """`key`, or INVALID_ARGUMENT naming `field` (the front end says Idempotency-Key).

    `stored`: pass any key a catalog may already hold (`is_stored_key`); the
    catalog checks `is_key` itself once it knows the key is new.
    """
    if not (is_stored_key(key) if stored else is_key(key)):
        raise invalid(
            f"{field} must be 1-{MAX_KEY_LEN} printable ASCII characters (! to ~, no spaces)"
        )
    return key


def check_name(name: Any) -> str:
    if not is_stock_name(name):
        raise invalid(
            f"name must be a string of 1-{MAX_NAME_LEN} characters without control characters"
        )
    return name


def check_type(kind: Any) -> str:
    if not isinstance(kind, str) or kind not in ORDER_TYPES:
        raise invalid('type must be "buy" or "sell"')
    return kind


def check_quantity(quantity: Any) -> int:
    if not is_int(quantity):
        raise invalid("quantity must be an integer")
    if not 0 < quantity <= MAX_QUANTITY:
        raise invalid(f"quantity must be from 1 to {MAX_QUANTITY}")
    return quantity


def check_order(key: Any, name: Any, kind: Any, quantity: Any, *, stored_key=False) -> None:
    """Every check of an order, in the order a caller reads the errors."""
    check_key(key, stored=stored_key)
    check_name(name)
    check_type(kind)
    check_quantity(quantity)
