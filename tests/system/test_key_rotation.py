"""docs/security.md's rotation of one role's keys, run as written against a real cluster.

The doc's shell blocks, found by a line they contain (`tests/docblocks`), run
in a directory laid out as `make run` lays it out (`data/keys`), with the
catalog's real port in place of 5555. Afterwards: every acknowledged order reads back
the same, new orders are taken, the rotated role's new pair is answered and
its old pair is not, and no other role's key changed.
"""

from __future__ import annotations

import os
import uuid

import pytest

from bazaar.testing.cluster import Cluster
from tests import docblocks

pytestmark = pytest.mark.timeout(300)

DOC = "docs/security.md"
ROLES = ("catalog", "order1", "order2", "order3", "frontend", "client")


def place_order(cluster: Cluster, i: int) -> tuple[int, dict]:
    body = {"name": "GameStart", "type": "buy" if i % 2 else "sell", "quantity": 1 + i % 3}
    status, reply = cluster.http("POST", "/orders", body, {"Idempotency-Key": uuid.uuid4().hex})
    assert status == 200, reply
    return reply["data"]["transaction_number"], body


def test_rotating_one_roles_keys_as_the_doc_says(tmp_path):
    copy = docblocks.containing(DOC, "cp -a data/keys")
    rotate = docblocks.containing(DOC, "rm data/keys/order2.key")
    check = docblocks.containing(DOC, "--role order2")

    work = tmp_path / "work"  # where `make run` would run: ./data/keys
    keys = work / "data" / "keys"
    env = dict(os.environ)
    env.pop("BAZAAR_KEYS_DIR", None)  # the CLI finds data/keys as `make run` leaves it
    work.mkdir()
    (tmp_path / "cluster").mkdir()
    docblocks.run("bazaar keys init data/keys", work, env, checkout=False)

    cluster = Cluster(tmp_path / "cluster", extra_env={"BAZAAR_KEYS_DIR": str(keys)})
    try:
        cluster.start_all()
        cluster.wait_healthy()
        placed = dict(place_order(cluster, i) for i in range(6))

        docblocks.run(copy, work, env, checkout=False)
        cluster.stop_all()
        docblocks.run(rotate, work, env, checkout=False)

        old = work / "keys-before-rotation"
        changed = {
            role
            for role in ROLES
            if (keys / f"{role}.key").read_bytes() != (old / f"{role}.key").read_bytes()
        }
        assert changed == {"order2"}
        assert (keys / "order2.key_secret").stat().st_mode & 0o077 == 0

        cluster.start_all()
        assert cluster.wait_healthy()["data"]["status"] == "ok"
        for number, body in placed.items():
            status, reply = cluster.http("GET", f"/orders/{number}")
            assert status == 200, reply
            assert {k: reply["data"][k] for k in body} == body
        number, _ = place_order(cluster, 6)
        assert number == max(placed) + 1

        env["BAZAAR_CATALOG"] = cluster.catalog_endpoint  # so `bazaar call` knows whose port it is
        ports = {"catalog": cluster.catalog_port, "pub": cluster.pub_port}
        ports.update({f"order{rid}": port for rid, port in cluster.order_ports.items()})
        old_pair, new_pair = docblocks.pointed(check, cluster.http_port, ports).splitlines()
        refused = docblocks.run(old_pair, work, env, check=False, checkout=False)
        assert refused.returncode != 0 and "pong" not in refused.stdout, refused
        answered = docblocks.run(new_pair, work, env, checkout=False)
        assert answered.stdout.strip(), "no answer printed"
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
