"""The pure recovery machine (bazaar.order.recovering) on its own: answers and time in, actions out.

No sockets, threads or files: each test plays the peers and the catalog by
hand, feeding the machine the answers its actions ask for, and writes its
replica's `Persist`/`Truncate` to a list (`Disk`) as the service's group
commit would.
"""

from __future__ import annotations

import pytest

from bazaar.errors import BazaarError
from bazaar.order import recovering as rec
from bazaar.order import replication as rep
from bazaar.order.log import Record
from tests.unit.fake_network import MemoryLog


def r(n: int, epoch: int = 1, key: str | None = None) -> Record:
    return Record(n, "GameStart", "buy", 1, key or f"k{n}-{epoch}", None, epoch)


class Disk:
    """One replica's machine over a list, with the writes it queued flushed on demand."""

    def __init__(self, records=(), epoch=0, leader=None, rid=1):
        self.records = list(records)
        self.m = rep.Replica(rid, [1, 2, 3], MemoryLog(self.records), epoch, leader)
        self.queued: list = []
        self.acked = -1

    def take(self, actions: list) -> list:
        """Queue the replica's writes; return the machine's own requests."""
        requests = []
        for a in actions:
            if isinstance(a, rep.Persist | rep.Truncate):
                self.queued.append(a)
            elif isinstance(a, rep.Acknowledge):
                self.acked = a.upto
            elif isinstance(a, rep.SaveState):  # saved at once, as the service does
                requests += self.take(self.m.on_saved(a.epoch, a.leader))
            elif not isinstance(a, rep.Send | rep.Abort):
                requests.append(a)
        return requests

    def flush(self, now: float = 0.0) -> None:
        for op in self.queued:
            if isinstance(op, rep.Truncate):
                del self.records[op.from_number :]
            else:
                self.records.extend(op.records)
        self.queued = []
        self.take(self.m.on_durable(len(self.records) - 1, now))


def peer(rid, records, promised=False, after=-1, more=False, page=None):
    runs = MemoryLog(list(records)).epoch_runs()
    sent = [x for x in records if x.number > after][:page]
    return rep.PeerLog(rid, len(records) - 1, runs, sent, more, promised)


def elected(disk: Disk, epoch: int = 2) -> rec.Recovering:
    disk.take(disk.m.on_set_leader(disk.m.id, epoch))
    assert disk.m.role == rep.RECOVERING
    return rec.Recovering(disk.m, rec.LEAD, epoch, retry=0.2, ask_timeout=1.0, wait_timeout=5.0)


# ---- a (re)started replica -----------------------------------------------------------
def test_catch_up_asks_every_peer_adopts_the_best_log_and_ends():
    d = Disk([r(0)])
    run = rec.Recovering(d.m, rec.CATCH_UP)
    asks = d.take(run.start(0.0))
    assert asks == [rec.AskPeer(1, 2, 0, None), rec.AskPeer(1, 3, 0, None)]
    log2 = [r(0), r(1), r(2)]
    assert d.take(run.on_answer(1, 2, peer(2, log2, after=0), 0.0)) == []  # waits for 3
    assert d.take(run.on_answer(1, 3, BazaarError("UNAVAILABLE", "down"), 0.0)) == []
    assert run.phase == rec.PAGING and not run.finished  # the page is being written
    d.flush()
    assert d.take(run.tick(0.0)) == []
    assert run.finished and run.error is None and run.adopted == 1
    assert d.records == log2


def test_catch_up_pages_until_the_source_has_no_more():
    d = Disk()
    run = rec.Recovering(d.m, rec.CATCH_UP)
    d.take(run.start(0.0))
    log2 = [r(n) for n in range(5)]
    d.take(run.on_answer(1, 2, peer(2, log2, page=2, more=True), 0.0))
    d.take(run.on_answer(1, 3, peer(3, []), 0.0))
    d.flush()
    (fetch,) = d.take(run.tick(0.0))
    assert fetch == rec.FetchPage(fetch.round, 2, 1)  # after our last durable record
    d.take(run.on_page(fetch.round, log2[2:4], True, 0.0))
    d.flush()
    (fetch,) = d.take(run.tick(0.0))
    assert fetch.after == 3
    d.take(run.on_page(fetch.round, log2[4:], False, 0.0))
    d.flush()
    run.tick(0.0)
    assert run.finished and d.records == log2 and run.adopted == 3


def test_a_diverged_log_is_cut_only_together_with_the_records_that_replace_it():
    """Cutting first would leave an acknowledged record (re-stamped in the better
    log) on too few disks until the page came back: the simulation found it."""
    d = Disk([r(0), r(1), r(2, epoch=2)])
    run = rec.Recovering(d.m, rec.CATCH_UP)
    d.take(run.start(0.0))
    better = [r(0), r(1), r(2, epoch=3, key="k2-2")]  # our record 2, re-stamped by epoch 3
    d.take(run.on_answer(1, 2, peer(2, better, after=2), 0.0))
    (fetch,) = d.take(run.on_answer(1, 3, peer(3, [r(0)], after=2), 0.0))
    assert fetch == rec.FetchPage(fetch.round, 2, 1) and d.queued == []  # nothing cut yet
    d.take(run.on_page(fetch.round, better[2:], False, 0.0))
    assert [type(op) for op in d.queued] == [rep.Truncate, rep.Persist]  # one write
    d.flush()
    run.tick(0.0)
    assert run.finished and d.records == better


def test_catch_up_ends_with_an_error_when_a_page_fails_or_times_out():
    d = Disk()
    run = rec.Recovering(d.m, rec.CATCH_UP, ask_timeout=1.0)
    d.take(run.start(0.0))
    d.take(run.on_answer(1, 2, peer(2, [r(0), r(1)], page=1, more=True), 0.0))
    assert d.take(run.tick(0.5)) == []  # 3 has not answered yet
    d.take(run.tick(1.0))  # now it is absent
    d.flush()
    (fetch,) = d.take(run.tick(1.0))
    d.take(run.on_page(fetch.round, BazaarError("UNAVAILABLE", "peer died"), False, 1.0))
    assert run.finished and "peer died" in run.error.message and d.records == [r(0)]


def test_answers_to_an_older_round_are_ignored():
    d = Disk()
    run = rec.Recovering(d.m, rec.CATCH_UP)
    d.take(run.start(0.0))
    assert run.on_answer(7, 2, peer(2, [r(0)]), 0.0) == []
    assert run.phase == rec.ASKING and run._answers == {}


# ---- an elected replica ----------------------------------------------------------------
def test_a_leader_needs_a_majority_of_promises_and_asks_again_without():
    d = Disk([r(0)], epoch=1, leader=3)
    run = elected(d)
    asks = d.take(run.start(0.0))
    assert {a.epoch for a in asks} == {2} and run.promised is None
    refused = BazaarError("UNAVAILABLE", "no promise: disk full")
    d.take(run.on_answer(1, 2, refused, 0.0))
    d.take(run.on_answer(1, 3, peer(3, [r(0)]), 0.0))  # answered, but no promise
    assert run.promised is False and "only 1 of 3 replicas promised" in run.note
    assert d.take(run.tick(0.1)) == []  # retries after `retry`
    again = d.take(run.tick(0.2))
    assert [a.round for a in again] == [2, 2] and run.promised is False
    assert d.m.role == rep.RECOVERING and not run.finished


def test_a_leader_decides_once_a_majority_promised_without_waiting_for_a_silent_peer():
    d = Disk([r(0)], epoch=1, leader=3)
    run = elected(d)
    d.take(run.start(0.0))
    log2 = [r(0), r(1)]
    d.take(run.on_answer(1, 2, peer(2, log2, promised=True, after=0), 0.0))
    assert run.promised is True  # 3 (paused, say) is not waited for
    d.flush()
    (fence,) = d.take(run.tick(0.0))
    assert fence == rec.Fence(fence.round, 2, 1)
    assert d.m.role == rep.LEADER  # it leads (re-stamped) before it fences
    assert d.queued[-1].records[0] == r(1, epoch=2, key="k1-1")
    # 2 promised and counts as heard; silent 3 only once it answers (not assumed)
    assert {p: s["heard"] for p, s in d.m.follower_status().items()} == {2: True, 3: False}


def lead_until_fenced(d: Disk, run: rec.Recovering) -> rec.Fence:
    d.take(run.start(0.0))
    requests = d.take(run.on_answer(1, 2, peer(2, list(d.records), promised=True), 0.0))
    d.flush()
    (fence,) = requests + d.take(run.tick(0.0))
    return fence


def test_fence_then_reconcile_orphans_then_serve():
    d = Disk([r(0, key="a")], epoch=1, leader=3)
    run = elected(d)
    fence = lead_until_fenced(d, run)
    (trades,) = d.take(run.on_fence(fence.round, {"epoch": 2, "leader": 1}, 0.0))
    assert trades == rec.FetchTrades(trades.round, None)  # from the log's watermark
    page = [rec.Trade(1, "a", "GameStart", "buy", 1), rec.Trade(2, "b", "GameStart", "sell", 2)]
    assert d.take(run.on_trades(trades.round, page, False, 0.0, busy=frozenset())) == []
    assert d.m.number_of("b") == 1 and run.reconciled == 1  # "a" is in the log already
    assert not run.finished  # until "b" commits
    d.flush()
    d.take(d.m.on_reply(2, rep.ReplicateReply(2, True, 1, 1), 0.1))
    assert d.m.commit == 1
    assert run.tick(0.1) == [rec.Serve(2)] and run.finished and run.error is None


def test_a_key_an_order_is_placing_is_not_reconciled():
    d = Disk([], epoch=1, leader=3)
    run = elected(d)
    fence = lead_until_fenced(d, run)
    (trades,) = d.take(run.on_fence(fence.round, {"epoch": 2}, 0.0))
    page = [rec.Trade(1, "busy", "GameStart", "buy", 1)]
    assert run.on_trades(trades.round, page, False, 0.0, busy=frozenset({"busy"})) == [rec.Serve(2)]
    assert d.m.number_of("busy") is None


def test_trades_are_read_page_by_page():
    d = Disk([], epoch=1, leader=3)
    run = elected(d)
    fence = lead_until_fenced(d, run)
    (first,) = d.take(run.on_fence(fence.round, {"epoch": 2}, 0.0))
    page = [rec.Trade(5, "x", "GameStart", "buy", 1)]
    assert d.take(run.on_trades(first.round, page, True, 0.0)) == []  # "x" commits first
    d.flush()
    d.take(d.m.on_reply(2, rep.ReplicateReply(2, True, 0, 0), 0.1))
    (second,) = d.take(run.tick(0.1))
    assert second == rec.FetchTrades(second.round, 5)  # after the last seq seen


def test_a_catalog_failure_fences_again_after_a_pause():
    d = Disk([], epoch=1, leader=3)
    run = elected(d)
    fence = lead_until_fenced(d, run)
    d.take(run.on_fence(fence.round, BazaarError("UNAVAILABLE", "catalog down"), 0.0))
    assert "catalog" in run.note and not run.finished
    assert run.tick(0.1) == []
    (again,) = d.take(run.tick(0.25))
    assert isinstance(again, rec.Fence) and again.round > fence.round


@pytest.mark.parametrize(
    "answer",
    [{"epoch": 3, "leader": 2}, BazaarError("ABORTED", "epoch taken", {"epoch": 2, "leader": 3})],
)
def test_a_catalog_fenced_by_another_leader_ends_the_leadership(answer):
    d = Disk([], epoch=1, leader=3)
    run = elected(d)
    fence = lead_until_fenced(d, run)
    d.take(run.on_fence(fence.round, answer, 0.0))
    assert run.finished and run.error.details["not_leader"]
    assert d.m.role == rep.FOLLOWER


def test_a_newer_epoch_stops_the_run():
    d = Disk([], epoch=1, leader=3)
    run = elected(d)
    d.take(run.start(0.0))
    d.take(d.m.on_set_leader(3, 3))  # another front end elected 3 meanwhile
    d.take(run.on_answer(1, 2, peer(2, [], promised=True), 0.0))
    assert run.finished and run.error is not None and d.m.role == rep.FOLLOWER


def test_a_peer_that_granted_the_epoch_to_another_fences_us():
    d = Disk([], epoch=1, leader=3)
    run = elected(d)
    d.take(run.start(0.0))
    d.take(run.on_answer(1, 2, BazaarError("ABORTED", "taken", {"epoch": 2}), 0.0))
    assert run.finished and d.m.role == rep.FOLLOWER


def test_a_disk_error_while_adopting_ends_the_leadership_attempt():
    d = Disk([], epoch=1, leader=3)
    run = elected(d)
    d.take(run.start(0.0))
    d.take(run.on_answer(1, 2, peer(2, [r(0), r(1)], promised=True), 0.0))
    d.queued = []
    d.take(d.m.on_disk_error(BazaarError("UNAVAILABLE", "disk full")))
    d.m.reset_log()
    run.tick(0.0)
    assert run.finished and d.m.role == rep.FOLLOWER


def test_reconcile_mode_runs_the_reconciliation_alone():
    d = Disk([], epoch=1, leader=3)
    run = elected(d)
    fence = lead_until_fenced(d, run)
    (trades,) = d.take(run.on_fence(fence.round, {"epoch": 2}, 0.0))
    assert run.on_trades(trades.round, [], False, 0.0) == [rec.Serve(2)]
    again = rec.Recovering(d.m, rec.RECONCILE, 2)
    (fetch,) = again.start(1.0)
    assert isinstance(fetch, rec.FetchTrades)
    assert again.on_trades(fetch.round, [], False, 1.0) == [] and again.finished


def test_every_wait_is_bounded():
    d = Disk([], epoch=1, leader=3)
    run = elected(d)
    fence = lead_until_fenced(d, run)
    assert run.wake_at() == 5.0  # the fence's answer may be lost: then it fences again
    d.take(run.tick(5.0))
    assert not run.finished and run._retry_at == 5.2
    (again,) = d.take(run.tick(5.2))
    assert isinstance(again, rec.Fence) and again.round > fence.round
