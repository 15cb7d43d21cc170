"""bazaar.rules: what an idempotency key, a stock name, a type and a quantity are."""

from __future__ import annotations

import pytest

from bazaar import rules
from bazaar.errors import BazaarError


def refusal(check, *args) -> str:
    with pytest.raises(BazaarError) as excinfo:
        check(*args)
    assert excinfo.value.code == "INVALID_ARGUMENT"
    return excinfo.value.message


@pytest.mark.parametrize(
    "key", ["k", "x" * rules.MAX_KEY_LEN, "!~", "3f2b6c1e-order-17", "a:b/c?d=e&f"]
)
def test_good_keys(key):
    assert rules.is_key(key)
    assert rules.check_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        " ",
        "a b",
        "\tkey",
        "line\nbreak",
        "x" * (rules.MAX_KEY_LEN + 1),
        "ключ",
        "k\x7f",
        7,
        None,
        b"k",
    ],
)
def test_bad_keys_are_refused_with_the_field_named(key):
    assert not rules.is_key(key)
    assert refusal(rules.check_key, key).startswith("key must be 1-200 printable ASCII")
    assert refusal(rules.check_key, key, "Idempotency-Key").startswith("Idempotency-Key must")


@pytest.mark.parametrize("name", ["GameStart", "x", "n" * rules.MAX_NAME_LEN, "Café Co"])
def test_good_names(name):
    assert rules.check_name(name) == name


@pytest.mark.parametrize("name", ["", "n" * (rules.MAX_NAME_LEN + 1), "a\nb", "a\x00", 5, None])
def test_bad_names(name):
    assert "name must be a string of 1-100 characters" in refusal(rules.check_name, name)


@pytest.mark.parametrize("quantity", [1, 5, rules.MAX_QUANTITY])
def test_good_quantities(quantity):
    assert rules.is_quantity(quantity)
    assert rules.check_quantity(quantity) == quantity


@pytest.mark.parametrize(
    ("quantity", "message"),
    [
        (0, "quantity must be from 1 to 1000000000"),
        (-1, "quantity must be from 1 to 1000000000"),
        (rules.MAX_QUANTITY + 1, "quantity must be from 1 to 1000000000"),
        (True, "quantity must be an integer"),  # a bool is not an int (SPEC section 1)
        (1.0, "quantity must be an integer"),
        ("1", "quantity must be an integer"),
        (None, "quantity must be an integer"),
    ],
)
def test_bad_quantities(quantity, message):
    assert not rules.is_quantity(quantity)
    assert refusal(rules.check_quantity, quantity) == message


def test_types():
    assert [rules.check_type(t) for t in ("buy", "sell")] == ["buy", "sell"]
    for bad in ("BUY", "Sell", "short", "", None, 1, ["buy"]):
        assert refusal(rules.check_type, bad) == 'type must be "buy" or "sell"'


def test_check_order_reports_the_first_bad_field_in_reading_order():
    assert rules.check_order("k", "GameStart", "buy", 1) is None
    assert refusal(rules.check_order, "", "", "x", 0).startswith("key must")
    assert refusal(rules.check_order, "k", "", "x", 0).startswith("name must")
    assert refusal(rules.check_order, "k", "A", "x", 0).startswith("type must")
    assert refusal(rules.check_order, "k", "A", "buy", 0).startswith("quantity must")
