"""The one exception type of Stock Bazaar and the gRPC-code -> HTTP-status table.

Every failure that crosses a service boundary is a `BazaarError` carrying a gRPC
status name (`code`), a human message and optional `details`. The table below is
the only place that decides which HTTP status a code becomes (SPEC section 1).
"""

from __future__ import annotations

from typing import Any

# gRPC canonical status names (without OK) -> HTTP status.
HTTP_STATUS: dict[str, int] = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

CODES = frozenset(HTTP_STATUS)


class BazaarError(Exception):
    """A failure with a gRPC status name, a message for humans and optional details."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        if code not in CODES:
            # An unknown code is itself a bug; keep the information but never
            # let it leak out as an unmapped status.
            message = f"{code}: {message}"
            code = "INTERNAL"
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
        # True when a peer sent this error in a reply; False when it was raised
        # locally (no reply in time, peer unreachable). Callers use it to tell
        # "the leader said no" from "the leader may be dead".
        self.remote = False

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"BazaarError({self.code!r}, {self.message!r})"


def http_status(code: str) -> int:
    """HTTP status for a gRPC status name; unknown names are 500."""
    return HTTP_STATUS.get(code, 500)


# Short constructors: `raise invalid("quantity must be > 0")` reads better at call sites.
def invalid(message: str, **details: Any) -> BazaarError:
    return BazaarError("INVALID_ARGUMENT", message, details or None)


def not_found(message: str, **details: Any) -> BazaarError:
    return BazaarError("NOT_FOUND", message, details or None)


def precondition(message: str, **details: Any) -> BazaarError:
    return BazaarError("FAILED_PRECONDITION", message, details or None)


def unavailable(message: str, **details: Any) -> BazaarError:
    return BazaarError("UNAVAILABLE", message, details or None)
