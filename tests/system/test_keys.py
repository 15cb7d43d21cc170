"""Starting without keys: a one-line refusal, unless BAZAAR_INSECURE=1 says otherwise.

The only tests that set BAZAAR_INSECURE: they test insecure mode itself.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bazaar import rpc
from bazaar.errors import BazaarError
from tests.conftest import free_port, keys_for, wait_until

pytestmark = pytest.mark.timeout(120)


def catalog_env(tmp_path, **extra) -> tuple[dict, str]:
    port = free_port()
    env = dict(
        os.environ,
        BAZAAR_CATALOG=f"tcp://127.0.0.1:{port}",
        BAZAAR_CATALOG_PUB=f"tcp://127.0.0.1:{free_port()}",
        BAZAAR_DATA_DIR=str(tmp_path / "data"),
        BAZAAR_KEYS_DIR=str(tmp_path / "no-keys"),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env, f"tcp://127.0.0.1:{port}"


@pytest.mark.parametrize("role", [["catalog"], ["order", "--id", "1"], ["frontend"]])
def test_a_service_without_keys_refuses_to_start_in_one_line(tmp_path, role):
    env, _ = catalog_env(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "bazaar.cli", *role], env=env, capture_output=True, timeout=60
    )
    assert run.returncode == 1
    lines = run.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "bazaar keys init" in lines[0] and "BAZAAR_INSECURE=1" in lines[0]
    assert not (tmp_path / "data" / "catalog.db").exists()  # refused before touching data


def test_insecure_mode_runs_plaintext_and_warns(tmp_path):
    env, endpoint = catalog_env(tmp_path, BAZAAR_INSECURE="1")
    log = tmp_path / "catalog.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bazaar.cli", "catalog"], env=env, stdout=out, stderr=out
        )
    try:
        with rpc.Client(endpoint, timeout=1.0) as plain:  # no keys at all
            wait_until(
                lambda: plain.call("ping", idempotent=True),
                60,
                msg="catalog up",
                processes={"catalog": proc},
                log_dir=tmp_path,
            )
            # No roles either: anybody may fence (what insecure mode gives up).
            assert plain.call("fence", epoch=5)["epoch"] == 5
        secure = rpc.Client(endpoint, timeout=0.5, keys=keys_for("client"), server_role="catalog")
        with secure, pytest.raises(BazaarError) as err:
            secure.call("ping")  # a CURVE client cannot talk to a plaintext server
        assert err.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    finally:
        proc.terminate()
        proc.wait(10)
    text = log.read_text()
    assert "WARNING" in text and "WITHOUT CurveZMQ" in text
