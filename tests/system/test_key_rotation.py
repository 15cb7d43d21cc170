"""docs/security.md's rotation of one role's keys, run as written against a real cluster.

The doc's shell blocks are taken from its "Rotating keys" section and run in a
directory laid out as `make run` lays it out (`data/keys`), with the catalog's
real port in place of 5555. Afterwards: every acknowledged order reads back
the same, new orders are taken, the rotated role's new pair is answered and
its old pair is not, and no other role's key changed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from bazaar.testing.cluster import Cluster

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("catalog", "order1", "order2", "order3", "frontend", "client")


def rotation_blocks() -> list[str]:
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## Rotating keys", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(b).strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S)]


def block_with(blocks: list[str], needle: str) -> str:
    (block,) = [b for b in blocks if needle in b and "docker compose" not in b]
    return block


def shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def place_order(cluster: Cluster, i: int) -> tuple[int, dict]:
    body = {"name": "GameStart", "type": "buy" if i % 2 else "sell", "quantity": 1 + i % 3}
    status, reply = cluster.http("POST", "/orders", body, {"Idempotency-Key": uuid.uuid4().hex})
    assert status == 200, reply
    return reply["data"]["transaction_number"], body


def test_rotating_one_roles_keys_as_the_doc_says(tmp_path):
    blocks = rotation_blocks()
    copy = block_with(blocks, "cp -a data/keys")
    rotate = block_with(blocks, "rm data/keys/order2.key")
    check = block_with(blocks, "--role order2")

    work = tmp_path / "work"  # where `make run` would run: ./data/keys
    keys = work / "data" / "keys"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("BAZAAR_KEYS_DIR", None)  # the CLI finds data/keys as `make run` leaves it
    work.mkdir()
    (tmp_path / "cluster").mkdir()
    made = shell("bazaar keys init data/keys", work, env)
    assert made.returncode == 0, made.stderr

    cluster = Cluster(tmp_path / "cluster", extra_env={"BAZAAR_KEYS_DIR": str(keys)})
    try:
        cluster.start_all()
        cluster.wait_healthy()
        placed = dict(place_order(cluster, i) for i in range(6))

        assert shell(copy, work, env).returncode == 0
        cluster.stop_all()
        rotated = shell(rotate, work, env)
        assert rotated.returncode == 0, rotated.stderr

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

        port = cluster.catalog_endpoint.rsplit(":", 1)[1]
        env["BAZAAR_CATALOG"] = cluster.catalog_endpoint  # so `bazaar call` knows whose port it is
        old_pair, new_pair = check.replace(":5555", f":{port}").splitlines()
        refused = shell(old_pair, work, env)
        assert refused.returncode != 0 and "pong" not in refused.stdout, refused
        answered = shell(new_pair, work, env)
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.strip(), "no answer printed"
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
