"""Request validation for the front end: order bodies (JSON or form), keys, numbers.

Pure functions of bytes, strings and streams: each returns clean values or
raises `BazaarError` INVALID_ARGUMENT (NOT_FOUND for order numbers no order
can have), which the app turns into a JSON 400/404. Rules (SPEC section 1):
exactly the fields name, quantity, type, each as `bazaar.rules` defines it
(the order service and the catalog check the same); bodies at most
MAX_BODY_BYTES (413).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.exceptions import RequestEntityTooLarge

from bazaar import rules
from bazaar.errors import invalid, not_found

MAX_BODY_BYTES = 16 * 1024
ORDER_FIELDS = frozenset({"name", "quantity", "type"})

_FORM_INT = re.compile(r"[+-]?[0-9]{1,19}")
_ORDER_NUMBER = re.compile(r"-?[0-9]{1,30}")


def parse_order_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """The order fields from a JSON or form body, validated; raises INVALID_ARGUMENT."""
    mimetype = content_type.split(";", 1)[0].strip().lower()
    if mimetype == "application/x-www-form-urlencoded" and not raw.lstrip().startswith(b"{"):
        fields = _parse_form(raw)
    else:  # JSON is canonical; a form-typed JSON body is what `curl -d '{...}'` sends
        fields = _parse_json(raw)
    return validate_order(fields)


def _parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise invalid("request body must be a JSON object with name, quantity and type")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise invalid(f"malformed JSON: {str(exc)[:200]}") from None


def _parse_form(raw: bytes) -> dict[str, Any]:
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=len(ORDER_FIELDS) + 1,
            errors="strict",
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"malformed form body: {str(exc)[:200]}") from None
    fields: dict[str, Any] = {}
    for key, value in pairs:
        if key in fields:
            raise invalid(f"field {key[:50]!r} given twice")
        fields[key] = value
    quantity = fields.get("quantity")
    if isinstance(quantity, str):
        if not _FORM_INT.fullmatch(quantity):
            raise invalid("quantity must be a base-10 integer")
        fields["quantity"] = int(quantity, 10)
    return fields


def validate_order(fields: Any) -> dict[str, Any]:
    if not isinstance(fields, dict):
        raise invalid("request body must be a JSON object")
    extra = set(fields) - ORDER_FIELDS
    if extra:
        names = ", ".join(sorted(repr(str(k)[:50]) for k in extra)[:5])
        raise invalid(f"unknown field(s): {names}")
    missing = ORDER_FIELDS - set(fields)
    if missing:
        raise invalid(f"missing field(s): {', '.join(sorted(missing))}")
    return {
        "name": rules.check_name(fields["name"]),
        "quantity": rules.check_quantity(fields["quantity"]),
        "type": rules.check_type(fields["type"]),
    }


def read_body(stream) -> bytes:
    """The request body, at most MAX_BODY_BYTES (413 beyond), chunked or not."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BODY_BYTES:
        chunk = stream.read(MAX_BODY_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    return b"".join(chunks)


def order_key(header: str | None) -> str:
    """The client's Idempotency-Key, checked; or a fresh one of our own."""
    if header is None:
        return uuid.uuid4().hex
    return rules.check_key(header, "Idempotency-Key")


def parse_order_number(text: str) -> int:
    if not _ORDER_NUMBER.fullmatch(text):
        raise invalid("order number must be an integer")
    number = int(text, 10)
    if number < 0:
        raise invalid("order number must be >= 0")
    if number >= 2**63:
        raise not_found(f"no order {text[:40]}")
    return number
