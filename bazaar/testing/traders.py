"""Clients trading through the real front end, and the SPEC section 4 checks at quiescence.

`Traders` runs SESSIONS threads, each placing orders with its own
Idempotency-Key and retrying a key up to five times, recording every
acknowledged number. `check_invariants` then restarts whatever is down,
waits for the replicas' logs to agree and checks:

- every acknowledged number is readable with the same content;
- no number was acknowledged for two different keys, no key committed twice;
- conservation per stock: 100 - sum(buys) + sum(sells) over the order log is
  the catalog's quantity, and its volume is the traded total;
- the three replicas' logs are identical and numbered 0..N-1.

Used by the fault, partition, multi-host and backup tests on a `Cluster`
(or one laid out on network namespaces).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from bazaar.testing import START_QUANTITY, STOCKS
from bazaar.testing.cluster import SERVICES, Cluster

SESSIONS = 8
# Waits on the cluster's progress are generous: CI runs the suite once on a
# small, shared machine, and these waits are about liveness, not speed.
PROGRESS_TIMEOUT = 120.0


@dataclass
class Traders:
    """SESSIONS threads placing orders (each with its own Idempotency-Key) until stopped."""

    cluster: Cluster
    seed: int
    acked: dict[int, tuple] = field(default_factory=dict)  # number -> (key, name, type, qty)
    acked_at: list[float] = field(default_factory=list)  # time.monotonic() of each ack, in order
    dup_numbers: list = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list = field(default_factory=list)

    def start(self) -> Traders:
        for i in range(SESSIONS):
            rng = random.Random(self.seed * 1000 + i)
            t = threading.Thread(target=self._session, args=(rng,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _session(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            order = {
                "name": rng.choice(STOCKS),
                "type": rng.choice(("buy", "sell")),
                "quantity": rng.randint(1, 3),
            }
            key = uuid.UUID(int=rng.getrandbits(128)).hex
            for _attempt in range(5):  # the same key: a retry must never trade twice
                try:
                    status, body = self.cluster.http(
                        "POST", "/orders", order, headers={"Idempotency-Key": key}, timeout=15
                    )
                except OSError as exc:
                    status, body = 0, str(exc)
                if status == 200:
                    self._record(body["data"]["transaction_number"], key, order)
                    break
                with self.lock:
                    self.errors[status] += 1
                if status in (400, 404):
                    break  # e.g. not enough stock: a clear answer, not a fault
                self.stop.wait(0.05)  # a client's back-off before it retries the key

    def _record(self, number: int, key: str, order: dict) -> None:
        entry = (key, order["name"], order["type"], order["quantity"])
        now = time.monotonic()
        with self.lock:
            self.acked_at.append(now)
            if number in self.acked and self.acked[number][0] != key:
                self.dup_numbers.append((number, self.acked[number], entry))
            self.acked[number] = entry

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def numbers(self) -> set[int]:
        with self.lock:
            return set(self.acked)

    def first_ack_after(self, moment: float) -> float | None:
        """When the first acknowledgement after `moment` (time.monotonic()) arrived, if any."""
        with self.lock:
            return next((t for t in self.acked_at if t > moment), None)

    def refusals(self) -> int:
        """Answers so far that were neither an acknowledgement nor a clear 400/404."""
        with self.lock:
            return sum(n for status, n in self.errors.items() if status not in (400, 404))

    def wait_progress(self, more: int = 20, timeout: float = PROGRESS_TIMEOUT) -> None:
        """Wait for `more` acknowledgements; fail at once if a service died unasked."""
        target = self.count() + more
        self.cluster.wait_until(lambda: self.count() >= target, timeout, 0.05, f"{more} more acks")

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    @classmethod
    @contextlib.contextmanager
    def running(cls, cluster: Cluster, seed: int) -> Iterator[Traders]:
        """Sessions started and trading (20 acknowledged), finished afterwards."""
        traders = cls(cluster, seed).start()
        try:
            traders.wait_progress(20)
            yield traders
        finally:
            traders.finish()


def leader_of(cluster: Cluster, timeout: float = 60.0) -> int:
    """The order leader the front end reports, once it knows one."""

    def known():
        status, body = cluster.http("GET", "/health", timeout=3)
        leader = body["data"]["order"]["leader"] if isinstance(body, dict) else None
        return leader if status == 200 and leader else None

    return cluster.wait_until(known, timeout, 0.1, "a known order leader")


def kill_leader_rounds(cluster: Cluster, traders: Traders, rounds: int, rng) -> None:
    for i in range(rounds):
        leader = leader_of(cluster)
        time.sleep(rng.uniform(0.0, 0.5))  # the kill lands at a random point of the stream
        name = f"order{leader}"
        print(f"round {i}: kill -9 {name}")
        cluster.kill(name)
        traders.wait_progress(10)  # a new leader takes orders
        cluster.start(name)
        # Sometimes kill the next leader while this one is still starting up.
        traders.wait_progress(rng.choice((0, 5, 10)))


def check_invariants(cluster: Cluster, traders: Traders) -> list[list[str]]:
    """SPEC section 4 at quiescence; returns the (common) order log."""
    assert not traders.dup_numbers, f"numbers acknowledged for two keys: {traders.dup_numbers}"
    for name in SERVICES:
        if cluster.procs[name].poll() is not None:
            cluster.start(name)
    cluster.wait_healthy(PROGRESS_TIMEOUT)

    def identical():
        logs = [tuple(map(tuple, cluster.read_log(r))) for r in (1, 2, 3)]
        return logs[0] if len(set(logs)) == 1 else None

    cluster.wait_until(identical, PROGRESS_TIMEOUT, 0.2, "identical order logs")
    rows = cluster.read_log(1)
    assert [int(r[0]) for r in rows] == list(range(len(rows))), "numbers are not 0..N-1"
    keys = Counter(r[4] for r in rows)
    assert not [k for k, c in keys.items() if c > 1], "a key was committed twice"
    for number, (key, name, kind, qty) in traders.acked.items():
        assert number < len(rows), f"acknowledged order {number} lost"
        assert rows[number][1:5] == [name, kind, str(qty), key], f"order {number} changed"
    sample = random.Random(len(rows)).sample(sorted(traders.acked), min(30, len(traders.acked)))
    for number in sample:
        status, body = cluster.http("GET", f"/orders/{number}")
        key, name, kind, qty = traders.acked[number]
        assert status == 200 and body["data"] == {
            "number": number,
            "name": name,
            "type": kind,
            "quantity": qty,
        }, (status, body)
    for stock in STOCKS:
        mine = [r for r in rows if r[1] == stock]
        sells = sum(int(r[3]) for r in mine if r[2] == "sell")
        buys = sum(int(r[3]) for r in mine if r[2] == "buy")
        status, body = cluster.http("GET", f"/stocks/{stock}")
        assert status == 200, body
        assert body["data"]["quantity"] == START_QUANTITY - buys + sells, f"{stock}: not conserved"
        assert body["data"]["volume"] == buys + sells, f"{stock}: volume"
    print(f"{len(rows)} orders committed, {len(traders.acked)} acknowledged, {traders.errors}")
    return rows
