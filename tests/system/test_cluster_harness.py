"""The process cluster of bazaar.testing: a service that dies at start fails the start at once."""

from __future__ import annotations

import time

import pytest

from bazaar.testing.waiting import ProcessDied


def test_a_service_dying_at_start_fails_start_all_at_once_with_its_log(stopped_cluster):
    cluster = stopped_cluster
    path = cluster.catalog_csv()
    path.write_text("name,price,quantity,volume,max_volume\nGameStart,cheap,100,0,\n")
    timeout = 120.0
    start = time.monotonic()
    with pytest.raises(ProcessDied) as died:
        cluster.start_all(timeout)
    took = time.monotonic() - start
    message = str(died.value)
    assert "cluster healthy" in message and message.count("exited with status") == 1, message
    assert "catalog" in message and "price 'cheap' is not a number" in message, message
    assert took < timeout / 2, f"start_all waited {took:.1f} s for a dead catalog"
