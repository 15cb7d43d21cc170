"""bazaar.frontend.election: whom the front end keeps or appoints, from replicas' status maps."""

from __future__ import annotations

from bazaar.frontend.election import (
    RECOVERY_GRACE,
    answered_epoch,
    candidates,
    serving_leader,
    without_majority,
)
from bazaar.wire import MAX_EPOCH


def status(rid, leader=None, epoch=0, role="follower", last_number=-1, last_epoch=0, **kw):
    return {
        "id": rid,
        "leader": leader,
        "epoch": epoch,
        "role": role,
        "last_number": last_number,
        "last_epoch": last_epoch,
        **kw,
    }


def nobody(_rid: int) -> bool:
    return False


def test_a_leader_of_the_top_epoch_with_its_majority_is_kept():
    live = {
        1: status(1, leader=2, epoch=4),
        2: status(2, leader=2, epoch=4, role="leader", majority=True),
    }
    assert serving_leader(live, 4, nobody) == 2
    assert serving_leader(live, 5, nobody) is None  # someone saw a later epoch
    assert serving_leader(live, 4, lambda rid: rid == 2) is None  # suspected: not kept


def test_a_leader_without_its_majority_is_not_kept():
    live = {2: status(2, leader=2, epoch=4, role="leader", majority=False)}
    assert serving_leader(live, 4, nobody) is None
    recovering = {2: status(2, leader=2, epoch=4, role="recovering")}  # majority not known yet
    assert serving_leader(recovering, 4, nobody) == 2


def test_candidates_rank_by_log_then_id_with_suspects_last():
    live = {
        1: status(1, last_number=9, last_epoch=3),
        2: status(2, last_number=12, last_epoch=2),  # longer, but an older epoch
        3: status(3, last_number=9, last_epoch=3),
    }
    assert candidates(live, nobody) == [3, 1, 2]
    assert candidates(live, lambda rid: rid == 3) == [1, 2, 3]
    live[1]["last_number"] = "junk"  # a malformed answer ranks as an empty log
    assert candidates(live, nobody) == [3, 1, 2]


def test_epoch_of_takes_only_real_epochs():
    assert [answered_epoch(v) for v in (1, 7, MAX_EPOCH)] == [1, 7, MAX_EPOCH]
    assert [answered_epoch(v) for v in (0, -1, MAX_EPOCH + 1, True, 2.0, "3", None)] == [0] * 7


def test_a_recovering_leader_gets_a_bounded_grace_and_a_serving_one_none():
    recovering = status(2, leader=2, epoch=4, role="recovering", majority=False)
    assert without_majority({**recovering, "recovering_for": 0.5}) is False
    assert without_majority({**recovering, "recovering_for": RECOVERY_GRACE - 0.01}) is False
    assert without_majority({**recovering, "recovering_for": RECOVERY_GRACE}) is True
    assert without_majority(recovering) is True  # no recovering_for: no grace
    for junk in (-1, True, "1", None):
        assert without_majority({**recovering, "recovering_for": junk}) is True
    serving = status(2, leader=2, epoch=4, role="leader", majority=False, recovering_for=0.1)
    assert without_majority(serving) is True  # lost its followers: no grace
    assert without_majority({**recovering, "majority": None}) is False  # first round still out
    live = {2: {**recovering, "recovering_for": 1.0}}
    assert serving_leader(live, 4, nobody) == 2  # kept within its grace
    live[2]["recovering_for"] = 5.0
    assert serving_leader(live, 4, nobody) is None
