"""OrderRouter election and retry rules with fake replica clients: no sockets, no waiting."""

from __future__ import annotations

import time

import pytest

from bazaar.errors import BazaarError
from bazaar.frontend.leader import MAX_EPOCH, Backoff, OrderRouter


def remote(code, message="", **details):
    err = BazaarError(code, message, details or None)
    err.remote = True
    return err


class FakeReplica:
    """Answers like docs/architecture.md's order replica; `down` = unreachable."""

    def __init__(self, rid, epoch=0, leader=None):
        self.rid, self.epoch, self.leader = rid, epoch, leader
        self.down = False
        self.hidden_epoch = None  # an accepted epoch its status does not show yet
        self.order_errors: list[BazaarError] = []
        self.calls: list[tuple] = []
        self.last = (None, None)  # (last record's epoch, last number)
        self.role, self.majority = None, None

    def call(self, method, /, *, timeout=None, idempotent=False, retry=None, **args):
        return self.call_args(method, args, timeout=timeout, idempotent=idempotent, retry=retry)

    def call_args(self, method, args, *, timeout=None, idempotent=False, retry=None):  # noqa: ARG002 (the real signature)
        self.calls.append((method, dict(args)))
        if self.down:
            raise BazaarError("UNAVAILABLE", f"replica {self.rid} unreachable")
        if method == "status":
            return {
                "id": self.rid,
                "leader": self.leader,
                "epoch": self.epoch,
                "last_epoch": self.last[0],
                "last_number": self.last[1],
                "role": self.role,
                "majority": self.majority,
            }
        if method == "set_leader":
            known = max(self.epoch, self.hidden_epoch or 0)
            if args["epoch"] < known or (
                args["epoch"] == self.epoch and args["leader"] != self.leader
            ):
                raise remote("ABORTED", "stale", epoch=known)
            self.leader, self.epoch = args["leader"], args["epoch"]
            return {"leader": self.leader, "epoch": self.epoch, "last_number": None}
        if method == "order":
            if self.order_errors:
                raise self.order_errors.pop(0)
            if self.leader != self.rid:
                raise remote("UNAVAILABLE", "not leader", not_leader=True, leader=self.leader)
            return {"transaction_number": 0}
        raise AssertionError(method)

    def set_leader_calls(self):
        return [(a["leader"], a["epoch"]) for m, a in self.calls if m == "set_leader"]

    def close(self):
        pass


@pytest.fixture
def make_router():
    made = []

    def factory(*replicas, deadline=1.0):
        router = OrderRouter(
            {r.rid: f"tcp://127.0.0.1:{9000 + r.rid}" for r in replicas}, deadline=deadline
        )
        for client in router.clients.values():
            client.close()
        router.clients = {r.rid: r for r in replicas}
        made.append(router)
        return router

    yield factory
    for router in made:
        router.close()


def test_first_election_highest_live_epoch_1(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    router = make_router(r1, r2, r3)
    assert router.elect((None, 0)) == (3, 1)
    assert r3.set_leader_calls() == [(3, 1)]
    assert r1.set_leader_calls() == [(3, 1)] and r2.set_leader_calls() == [(3, 1)]


def test_epoch_is_one_above_everything_seen(make_router):
    r1, r2, r3 = FakeReplica(1, epoch=7, leader=2), FakeReplica(2, epoch=4), FakeReplica(3)
    router = make_router(r1, r2, r3)
    assert router.elect((None, 0)) == (3, 8)


def test_dead_highest_is_skipped(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    r3.down = True
    router = make_router(r1, r2, r3)
    assert router.elect((None, 0)) == (2, 1)
    # A replica that did not answer `status` costs the election nothing more...
    assert r3.set_leader_calls() == []
    # ... and the monitor tells it who leads once it is back.
    r3.down = False
    router.check()
    assert r3.set_leader_calls() == [(2, 1)]


def test_aborted_raises_epoch_above_the_replicas(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    r3.hidden_epoch = 5
    router = make_router(r1, r2, r3)
    assert router.elect((None, 0)) == (3, 6)


def test_follower_with_higher_epoch_forces_a_new_round(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    r1.hidden_epoch = 9
    router = make_router(r1, r2, r3)
    leader, epoch = router.elect((None, 0))
    assert leader == 3 and epoch >= 10
    assert (r1.leader, r1.epoch) == (3, epoch)


def test_agreement_is_adopted_and_stale_followers_told(make_router):
    r1, r2, r3 = FakeReplica(1, 4, 3), FakeReplica(2, 2, 3), FakeReplica(3, 4, 3)
    router = make_router(r1, r2, r3)
    assert router.elect((None, 0)) == (3, 4)
    assert r3.set_leader_calls() == [] and r1.set_leader_calls() == []
    assert r2.set_leader_calls() == [(3, 4)]


def test_stale_claim_is_not_adopted(make_router):
    # 3 still thinks it leads epoch 4, but 1 accepted epoch 5 (3 was paused meanwhile).
    r1, r2, r3 = FakeReplica(1, 5, 2), FakeReplica(2), FakeReplica(3, 4, 3)
    r2.down = True
    router = make_router(r1, r2, r3)
    assert router.elect((None, 0)) == (3, 6)


def test_no_live_replica_is_unavailable(make_router):
    replicas = [FakeReplica(i) for i in (1, 2, 3)]
    for r in replicas:
        r.down = True
    router = make_router(*replicas)
    with pytest.raises(BazaarError) as info:
        router.elect((None, 0))
    assert info.value.code == "UNAVAILABLE"


def test_elect_is_skipped_when_someone_already_replaced_the_leader(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    router = make_router(r1, r2, r3)
    router.elect((None, 0))
    calls = len(r3.calls)
    assert router.elect((2, 0)) == (3, 1)  # a stale observation: nothing happens
    assert len(r3.calls) == calls


def test_order_retries_same_leader_on_plain_unavailable(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    router = make_router(r1, r2, r3)
    router.elect((None, 0))
    r3.order_errors = [remote("UNAVAILABLE", "catalog down")] * 2
    assert router.order("k", "GameStart", "buy", 1) == {"transaction_number": 0}
    assert router.elections == 1


def test_order_gives_up_at_deadline_with_503(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    router = make_router(r1, r2, r3, deadline=0.3)
    router.elect((None, 0))
    r3.order_errors = [remote("UNAVAILABLE", "catalog down")] * 100
    with pytest.raises(BazaarError) as info:
        router.order("k", "GameStart", "buy", 1)
    assert info.value.http_status == 503


def test_order_business_errors_are_not_retried(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    router = make_router(r1, r2, r3)
    router.elect((None, 0))
    r3.order_errors = [remote("FAILED_PRECONDITION", "not enough stock")]
    with pytest.raises(BazaarError) as info:
        router.order("k", "GameStart", "buy", 1)
    assert info.value.code == "FAILED_PRECONDITION"
    assert sum(1 for m, _ in r3.calls if m == "order") == 1


def test_unreachable_leader_fails_over_with_same_key(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    router = make_router(r1, r2, r3)
    router.elect((None, 0))
    r3.down = True
    assert router.order("key-7", "GameStart", "buy", 1) == {"transaction_number": 0}
    assert (router.leader, router.epoch) == (2, 2)
    keys = [a["key"] for m, a in r3.calls + r2.calls if m == "order"]
    assert keys == ["key-7", "key-7"]


# ---- majority, up-to-date logs, back-off, epoch range ------------------------------------
def test_no_majority_answers_no_election_and_no_epoch_spent(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    r1.down = r2.down = True
    router = make_router(r1, r2, r3)
    with pytest.raises(BazaarError) as info:
        router.elect((None, 0))
    assert info.value.code == "UNAVAILABLE" and "majority" in info.value.message
    assert r3.set_leader_calls() == [] and router.leader is None


def test_the_most_up_to_date_log_wins_then_the_highest_id(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    r1.last, r2.last, r3.last = (2, 3), (2, 3), (1, 9)  # 3: longer, but an older last epoch
    router = make_router(r1, r2, r3)
    assert router.elect((None, 0)) == (2, 1)
    r4, r5, r6 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    r4.last, r5.last, r6.last = (2, 3), (2, 3), (2, 4)
    assert make_router(r4, r5, r6).elect((None, 0)) == (3, 1)


def test_a_serving_leader_is_kept_even_when_not_the_highest_id(make_router):
    r1, r2, r3 = FakeReplica(1, 4, 2), FakeReplica(2, 4, 2), FakeReplica(3, 4, 2)
    r2.role, r2.majority = "leader", True
    router = make_router(r1, r2, r3)
    assert router.elect((None, 0)) == (2, 4)  # a slow call is no reason to depose it
    assert r2.set_leader_calls() == [] and r3.set_leader_calls() == []


def test_a_leader_without_majority_is_replaced_by_one_with(make_router):
    r1, r2, r3 = FakeReplica(1, 4, 3), FakeReplica(2, 4, 3), FakeReplica(3, 4, 3)
    r3.role, r3.majority = "leader", False  # cut off from its followers
    r3.order_errors = [remote("UNAVAILABLE", "no majority", no_majority=True, leader=3)]
    router = make_router(r1, r2, r3)
    router.elect((None, 0))
    assert router.order("k", "GameStart", "buy", 1) == {"transaction_number": 0}
    assert router.leader == 2 and (r2.leader, r2.epoch) == (2, router.epoch)


def test_epochs_outside_the_range_are_ignored_and_never_exceeded(make_router):
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    r1.epoch = 2**60  # a bad answer must not push every later epoch out of range
    router = make_router(r1, r2, r3)
    assert router.elect((None, 0)) == (3, 1)
    for r in (r1, r2, r3):
        r.epoch, r.leader = MAX_EPOCH, None
    with pytest.raises(BazaarError) as info:
        router.elect((3, 1))
    assert "exhausted" in info.value.message
    assert all(e <= MAX_EPOCH for r in (r1, r2, r3) for _, e in r.set_leader_calls())


def test_backoff_grows_randomised_and_resets():
    b = Backoff(base=0.1, cap=1.0, quiet=10.0)
    assert b.wait(0.0) == 0.0  # the first election runs at once
    waits = []
    now = 0.0
    for _ in range(8):
        now += b.wait(now)
        b.started(now)
        waits.append(b.wait(now))
    assert 0.05 <= waits[0] <= 0.1 and all(0.5 <= w <= 1.0 for w in waits[4:])
    b.reset()
    assert b.wait(now) == 0.0


def test_a_leader_that_keeps_failing_costs_few_epochs(make_router):
    """One bad leader (e.g. fenced at once each time) used to burn ~140 epochs a second."""
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    router = make_router(r1, r2, r3, deadline=3.0)
    router.elect((None, 0))
    for r in (r1, r2, r3):
        r.order_errors = [remote("UNAVAILABLE", "fenced", not_leader=True, leader=None)] * 10_000
    with pytest.raises(BazaarError):
        router.order("k", "GameStart", "buy", 1)
    assert router.epoch <= 15, router.epoch


def test_a_recovering_leader_without_promises_yet_is_not_deposed_within_its_grace(make_router):
    """Under load a leader's promise round can end without a majority twice in a
    row; within RECOVERY_GRACE the monitor keeps it, after it elects again."""
    r1, r2, r3 = FakeReplica(1, 4, 3), FakeReplica(2, 4, 3), FakeReplica(3, 4, 3)
    r3.role, r3.majority = "recovering", False
    router = make_router(r1, r2, r3)
    router._current = (3, 4)
    grace = {"recovering_for": 1.0}
    original = r3.call_args

    def status_with_grace(method, args, **kw):
        result = original(method, args, **kw)
        return {**result, **grace} if method == "status" else result

    r3.call_args = status_with_grace
    for _ in range(3):
        router.check()
    assert router.leader == 3 and router.elections == 0
    grace["recovering_for"] = 4.0  # it has had its time: replaced after two checks
    router.check()
    router.check()
    assert router.elections == 1 and router.leader != 3


def test_a_serving_leader_that_lost_its_majority_is_deposed_after_two_checks(make_router):
    r1, r2, r3 = FakeReplica(1, 4, 3), FakeReplica(2, 4, 3), FakeReplica(3, 4, 3)
    r3.role, r3.majority = "leader", False
    router = make_router(r1, r2, r3)
    router._current = (3, 4)
    router.check()
    assert router.elections == 0
    router.check()
    assert router.elections == 1 and router.leader != 3


def test_a_leader_that_does_not_answer_is_replaced_after_two_checks(make_router):
    r1, r2, r3 = FakeReplica(1, 4, 3), FakeReplica(2, 4, 3), FakeReplica(3, 4, 3)
    r3.role, r3.majority = "recovering", None
    router = make_router(r1, r2, r3)
    router._current = (3, 4)
    r3.down = True  # dead or cut off from the front end: no grace
    router.check()
    router.check()
    assert router.elections == 1 and router.leader in (1, 2)


def test_a_round_without_a_majority_does_not_grow_the_back_off(make_router):
    """No epoch spent, nothing to pace: once the majority is back the election runs
    at once (SPEC: orders within 1 s), while elections that spend epochs back off."""
    r1, r2, r3 = FakeReplica(1), FakeReplica(2), FakeReplica(3)
    r2.down = r3.down = True
    router = make_router(r1, r2, r3)
    for _ in range(5):
        with pytest.raises(BazaarError):
            router.elect((None, 0))
    assert router.backoff.wait(time.monotonic()) == 0.0 and r1.set_leader_calls() == []
    r2.down = r3.down = False
    assert router.elect((None, 0)) == (3, 1)
    assert router.backoff.wait(time.monotonic()) > 0  # an epoch was spent: the next one waits
