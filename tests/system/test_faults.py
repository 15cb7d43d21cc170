"""Fault injection on the five real services, with clients trading through HTTP.

Each test keeps several client sessions trading through the real front end
while it kills (SIGKILL), pauses (SIGSTOP) or restarts a process, or fills a
replica's disk, then checks the SPEC section 4 invariants at quiescence:

- every acknowledged number is readable with the same content;
- no number was acknowledged for two different keys, no key committed twice;
- conservation per stock: 100 - sum(buys) + sum(sells) over the order log is
  the catalog's quantity, and its volume is the traded total;
- the three replicas' logs are byte-identical and numbered 0..N-1.

Randomness is seeded; the seed is printed (replay with BAZAAR_FAULT_SEED=...).
`make test` runs short variants; `make chaos` (-m chaos) runs 20+ leader kills.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.conftest import wait_until
from tests.system.cluster import Cluster, rpc_client

STOCKS = ("GameStart", "FishCo", "BoarCo", "MenhirCo")
SESSIONS = 8

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def seed():
    value = int(os.environ.get("BAZAAR_FAULT_SEED") or random.randrange(1 << 32))
    print(f"\nfault-test seed: BAZAAR_FAULT_SEED={value}")
    return value


@pytest.fixture
def chaos_only(request):
    if "chaos" not in (request.config.getoption("-m") or ""):
        pytest.skip("long fault run: `make chaos` (pytest -m chaos)")


@dataclass
class Traders:
    """SESSIONS threads placing orders (each with its own Idempotency-Key) until stopped."""

    cluster: Cluster
    seed: int
    acked: dict[int, tuple] = field(default_factory=dict)  # number -> (key, name, type, qty)
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
                time.sleep(0.05)

    def _record(self, number: int, key: str, order: dict) -> None:
        entry = (key, order["name"], order["type"], order["quantity"])
        with self.lock:
            if number in self.acked and self.acked[number][0] != key:
                self.dup_numbers.append((number, self.acked[number], entry))
            self.acked[number] = entry

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_progress(self, more: int = 20, timeout: float = 60.0) -> None:
        target = self.count() + more
        wait_until(lambda: self.count() >= target, timeout, 0.05, f"{more} more acks")

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def leader_of(cluster: Cluster) -> int:
    def known():
        status, body = cluster.http("GET", "/health", timeout=3)
        leader = body["data"]["order"]["leader"] if isinstance(body, dict) else None
        return leader if status == 200 and leader else None

    return wait_until(known, 30, 0.1, "a known order leader")


def check_invariants(cluster: Cluster, traders: Traders) -> list[list[str]]:
    """SPEC section 4 at quiescence; returns the (common) order log."""
    assert not traders.dup_numbers, f"numbers acknowledged for two keys: {traders.dup_numbers}"
    for name in ("catalog", "order1", "order2", "order3", "frontend"):
        if cluster.procs[name].poll() is not None:
            cluster.start(name)
    cluster.wait_healthy(60)

    def identical():
        logs = [tuple(map(tuple, cluster.read_log(r))) for r in (1, 2, 3)]
        return logs[0] if len(set(logs)) == 1 else None

    wait_until(identical, 60, 0.2, "identical order logs")
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
        }
    for stock in STOCKS:
        mine = [r for r in rows if r[1] == stock]
        sells = sum(int(r[3]) for r in mine if r[2] == "sell")
        buys = sum(int(r[3]) for r in mine if r[2] == "buy")
        status, body = cluster.http("GET", f"/stocks/{stock}")
        assert status == 200, body
        assert body["data"]["quantity"] == 100 - buys + sells, f"{stock}: not conserved"
        assert body["data"]["volume"] == buys + sells, f"{stock}: volume"
    print(f"{len(rows)} orders committed, {len(traders.acked)} acknowledged, {traders.errors}")
    return rows


@pytest.fixture
def trading(cluster, seed):
    traders = Traders(cluster, seed).start()
    traders.wait_progress(20)
    yield traders
    traders.finish()


def kill_leader_rounds(cluster: Cluster, traders: Traders, rounds: int, rng) -> None:
    for i in range(rounds):
        leader = leader_of(cluster)
        time.sleep(rng.uniform(0.0, 0.5))
        name = f"order{leader}"
        print(f"round {i}: kill -9 {name}")
        cluster.kill(name)
        traders.wait_progress(10, timeout=60)  # a new leader takes orders
        cluster.start(name)
        # Sometimes kill the next leader while this one is still starting up.
        traders.wait_progress(rng.choice((0, 5, 10)), timeout=60)


def test_kill_leader_repeatedly(cluster, trading, seed):
    kill_leader_rounds(cluster, trading, 3, random.Random(seed))
    trading.finish()
    check_invariants(cluster, trading)


@pytest.mark.chaos
@pytest.mark.usefixtures("chaos_only")
def test_chaos_kill_leader_twenty_times(cluster, trading, seed):
    kill_leader_rounds(cluster, trading, 22, random.Random(seed))
    trading.finish()
    check_invariants(cluster, trading)


@pytest.mark.chaos
@pytest.mark.usefixtures("chaos_only")
def test_chaos_mixed_faults(cluster, trading, seed):
    """One fault at a time, chosen at random: kill or pause the leader, kill a
    follower, kill the catalog; each healed before the next."""
    rng = random.Random(seed)
    for i in range(20):
        leader = leader_of(cluster)
        fault = rng.choice(("kill-leader", "pause-leader", "kill-follower", "kill-catalog"))
        victim = {
            "kill-leader": f"order{leader}",
            "pause-leader": f"order{leader}",
            "kill-follower": f"order{rng.choice([r for r in (1, 2, 3) if r != leader])}",
            "kill-catalog": "catalog",
        }[fault]
        print(f"round {i}: {fault} ({victim})")
        time.sleep(rng.uniform(0.0, 0.5))
        if fault == "pause-leader":
            cluster.signal(victim, signal.SIGSTOP)
            time.sleep(rng.uniform(2.5, 5.0))
            cluster.signal(victim, signal.SIGCONT)
        else:
            cluster.kill(victim)
            time.sleep(rng.uniform(0.2, 2.0))
            cluster.start(victim)
        trading.wait_progress(10, timeout=60)
    trading.finish()
    check_invariants(cluster, trading)


def test_paused_leader_is_fenced(cluster, trading):
    old = leader_of(cluster)
    cluster.signal(f"order{old}", signal.SIGSTOP)
    try:
        wait_until(lambda: leader_of(cluster) != old, 30, 0.2, "a new leader")
        trading.wait_progress(20)
    finally:
        cluster.signal(f"order{old}", signal.SIGCONT)
    new = leader_of(cluster)
    client_epoch = cluster.health()["data"]["order"]["epoch"]

    def deposed():
        with rpc_client(cluster.order_endpoints[old], "client", f"order{old}", timeout=2) as c:
            st = c.call("status")
        return st["role"] == "follower" and st["epoch"] >= client_epoch

    wait_until(deposed, 30, 0.2, "the resumed old leader follows")
    trading.wait_progress(20)
    assert leader_of(cluster) == new
    trading.finish()
    check_invariants(cluster, trading)


def test_double_fault_followers_stalled_then_leader_killed(cluster, trading, seed):
    """Both followers stall (SIGSTOP) while 8 sessions trade, the leader dies
    (SIGKILL), the followers come back: the leader could acknowledge nothing
    alone, so no acknowledged number may read back as another order. The
    trades it made at the catalog meanwhile are reconciled under new numbers."""
    rng = random.Random(seed)
    for i in range(3):
        leader = leader_of(cluster)
        followers = [f"order{r}" for r in (1, 2, 3) if r != leader]
        time.sleep(rng.uniform(0.0, 0.3))
        print(f"round {i}: SIGSTOP {followers}, then kill -9 order{leader}")
        for name in followers:
            cluster.signal(name, signal.SIGSTOP)
        try:
            time.sleep(rng.uniform(0.6, 1.5))  # the leader is alone: orders wait or fail
            acked = trading.count()
            time.sleep(0.5)
            assert trading.count() == acked, "acknowledged while both followers were stopped"
            cluster.kill(f"order{leader}")
        finally:
            for name in followers:
                cluster.signal(name, signal.SIGCONT)
        trading.wait_progress(20)
        cluster.start(f"order{leader}")
        trading.wait_progress(10)
    trading.finish()
    check_invariants(cluster, trading)


def test_follower_restart_catches_up(cluster, trading, seed):
    leader = leader_of(cluster)
    follower = random.Random(seed).choice([r for r in (1, 2, 3) if r != leader])
    cluster.kill(f"order{follower}")
    trading.wait_progress(40)
    cluster.start(f"order{follower}")
    trading.wait_progress(20)
    trading.finish()
    check_invariants(cluster, trading)


def test_catalog_killed_mid_trade(cluster, trading):
    for _ in range(2):
        cluster.kill("catalog")
        time.sleep(1.0)
        cluster.start("catalog")
        trading.wait_progress(20)
    trading.finish()
    check_invariants(cluster, trading)


# ---- disk failures ------------------------------------------------------------------------
def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disks(tmp_path):
    """Each replica's data dir on its own 4 MiB tmpfs, so a test can fill it."""
    if not _can_mount():
        pytest.skip("needs root to mount a small tmpfs as a data dir")
    mounted = []
    for rid in (1, 2, 3):
        path = tmp_path / f"order{rid}"
        path.mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)]
        res = subprocess.run(cmd, capture_output=True)
        if res.returncode != 0:
            for done in mounted:
                subprocess.run(["umount", "-l", str(done)])
            pytest.skip("mount is not permitted here")
        mounted.append(path)
    yield
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)])


def fill(path) -> None:
    """Fill the tmpfs holding `path` up to the last byte."""
    with open(path / "filler", "wb", buffering=0) as fh:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * chunk)


@pytest.mark.usefixtures("small_disks")
def test_full_disks_give_clear_errors_and_lose_nothing(tmp_path, seed):
    with Cluster(tmp_path) as cluster:
        cluster.start_all()
        traders = Traders(cluster, seed).start()
        try:
            traders.wait_progress(20)
            leader = leader_of(cluster)
            follower = next(r for r in (1, 2, 3) if r != leader)
            fill(cluster.data_dir(f"order{follower}"))  # a follower's disk fills up
            traders.wait_progress(30)
            (cluster.data_dir(f"order{follower}") / "filler").unlink()
            fill(cluster.data_dir(f"order{leader}"))  # then the leader's

            def leader_moved():
                return leader_of(cluster) != leader

            wait_until(leader_moved, 60, 0.2, "leadership away from the full disk")
            traders.wait_progress(30)
            (cluster.data_dir(f"order{leader}") / "filler").unlink()
            traders.wait_progress(10)
            for rid in (1, 2, 3):
                assert cluster.procs[f"order{rid}"].poll() is None, f"order{rid} crashed"
        finally:
            traders.finish()
        check_invariants(cluster, traders)
        log_text = (tmp_path / f"order{leader}.log").read_text()
        assert "No space left on device" in log_text
