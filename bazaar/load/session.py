"""One load session: HTTP requests to the front end and what they came back with.

Owns the HTTP session (`HttpSession`, a urllib3 pool of one keep-alive
connection, or any object with the `Session` methods: the tests pass a fake
bazaar), the `Recorder` of latencies and outcomes per request type, and what
one session does per iteration (`run_session`): look up a random stock and,
with probability p, buy or sell a small quantity of it.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bazaar.rules import ORDER_TYPES
from bazaar.wire import is_int

KINDS = ("lookup", "order", "get_order")
DEFAULT_STOCKS = ("GameStart", "FishCo", "BoarCo", "MenhirCo")
PERCENTILES = (50, 95, 99)
MAX_QUANTITY = 5
ORDER_ATTEMPTS = 3  # an order is retried (same Idempotency-Key) after a transport failure
RETRY_STATUSES = (502, 503, 504)

# Outcome names. "ok" and "rejected" are expected; everything else is an error.
OK = "ok"
REJECTED = "rejected"  # 400 on an order: not enough stock / over max_volume
EXPECTED = frozenset({OK, REJECTED})


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status and parsed JSON body (None when not JSON)."""

    status: int
    body: Any


class TransportError(Exception):
    """No HTTP answer at all: connection refused or reset, timeout."""


class Session(Protocol):
    def request(self, method: str, path: str, body: Any = None, headers=None) -> Reply: ...

    def close(self) -> None: ...


class HttpSession:
    """One keep-alive HTTP connection to the front end (urllib3, pool of one)."""

    def __init__(self, url: str, timeout: float = 10.0):
        import urllib3

        parsed = urllib3.util.parse_url(url)
        self._errors = urllib3.exceptions.HTTPError
        self._prefix = (parsed.path or "").rstrip("/")
        self._pool = urllib3.HTTPConnectionPool(
            parsed.host or "127.0.0.1",
            parsed.port or 80,
            maxsize=1,
            block=True,
            timeout=urllib3.Timeout(total=timeout),
            retries=False,
        )

    def request(self, method: str, path: str, body: Any = None, headers=None) -> Reply:
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            resp = self._pool.request(
                method, self._prefix + path, body=data, headers=headers, retries=False
            )
        except self._errors as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        return Reply(resp.status, _parse_json(resp.data))

    def close(self) -> None:
        self._pool.close()


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Ack:
    """An acknowledged order: what was asked and the number that came back."""

    number: int
    name: str
    type: str
    quantity: int
    key: str = ""


@dataclass
class Recorder:
    """What one session saw; merged after the run (no locks on the hot path)."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    outcomes: Counter = field(default_factory=Counter)
    acks: list[Ack] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(self, kind: str, outcome: str, seconds: float | None, note: str = "") -> None:
        self.outcomes[(kind, outcome)] += 1
        if seconds is not None:
            self.latencies[kind].append(seconds)
        if outcome not in EXPECTED and len(self.errors) < 20:
            self.errors.append(f"{kind}: {outcome} {note}".strip())

    def merge(self, other: Recorder) -> None:
        for kind in KINDS:
            self.latencies[kind].extend(other.latencies[kind])
        self.outcomes.update(other.outcomes)
        self.acks.extend(other.acks)
        self.errors.extend(other.errors[: max(0, 20 - len(self.errors))])


def classify(kind: str, reply: Reply) -> str:
    """The outcome name for an HTTP answer to a request of `kind`."""
    if reply.status == 200:
        return OK
    if kind == "order" and reply.status == 400:
        return REJECTED
    return f"http_{reply.status}"


def timed(session: Session, method: str, path: str, body=None, headers=None):
    """(reply or None, seconds, error text): one request, timed with perf_counter."""
    start = time.perf_counter()
    try:
        reply = session.request(method, path, body, headers)
    except TransportError as exc:
        return None, time.perf_counter() - start, str(exc)
    return reply, time.perf_counter() - start, ""


# ---------------------------------------------------------------------------
# One session
# ---------------------------------------------------------------------------
def do_lookup(session: Session, rec: Recorder, name: str) -> None:
    reply, seconds, err = timed(session, "GET", f"/stocks/{name}")
    if reply is None:
        rec.record("lookup", "transport", None, err)
        return
    outcome = classify("lookup", reply)
    if outcome == OK and not _valid_stock(reply.body, name):
        outcome = "bad_body"
    rec.record("lookup", outcome, seconds, f"{name}: {reply.body!r:.200}")


def _valid_stock(body: Any, name: str) -> bool:
    data = body.get("data") if isinstance(body, dict) else None
    return isinstance(data, dict) and data.get("name") == name and "quantity" in data


def do_order(session: Session, rec: Recorder, name: str, type_: str, quantity: int) -> None:
    """POST /orders with an Idempotency-Key; retried with the same key on transport failure."""
    key = uuid.uuid4().hex
    body = {"name": name, "type": type_, "quantity": quantity}
    for attempt in range(ORDER_ATTEMPTS):
        reply, seconds, err = timed(session, "POST", "/orders", body, {"Idempotency-Key": key})
        last = attempt == ORDER_ATTEMPTS - 1
        if reply is None:
            rec.record("order", "transport", None, err)
        elif reply.status in RETRY_STATUSES and not last:
            rec.record("order", classify("order", reply), seconds, f"{reply.body!r:.200}")
        else:
            _record_order_reply(rec, reply, seconds, Ack(-1, name, type_, quantity, key))
            return
        if not last:
            time.sleep(0.05 * (attempt + 1))


def _record_order_reply(rec: Recorder, reply: Reply, seconds: float, asked: Ack) -> None:
    outcome = classify("order", reply)
    number = _transaction_number(reply.body) if outcome == OK else None
    if outcome == OK and number is None:
        outcome = "bad_body"
    rec.record("order", outcome, seconds, f"{reply.body!r:.200}")
    if number is not None:
        rec.acks.append(Ack(number, asked.name, asked.type, asked.quantity, asked.key))


def _transaction_number(body: Any) -> int | None:
    data = body.get("data") if isinstance(body, dict) else None
    number = data.get("transaction_number") if isinstance(data, dict) else None
    return number if is_int(number) else None


def run_session(
    session: Session,
    rng: random.Random,
    stocks: Sequence[str],
    requests: int,
    p: float,
    tick: Callable[[int], None] = lambda _n: None,
) -> Recorder:
    """M iterations: look up a random stock; with probability p buy or sell some of it."""
    rec = Recorder()
    pending = 0
    for _ in range(requests):
        name = rng.choice(stocks)
        do_lookup(session, rec, name)
        if rng.random() < p:
            do_order(session, rec, name, rng.choice(ORDER_TYPES), rng.randint(1, MAX_QUANTITY))
        pending += 1
        if pending == 10:
            tick(pending)
            pending = 0
    tick(pending)
    return rec
