"""scripts/container_attack.py (container-test's intruder) notices a server that answers.

Its real use expects silence from every port (tests/system/test_hostile.py
runs it against the real services); here a plaintext server must be caught,
so a silent run means the services refused, not that the script cannot hear.
"""

import json
import subprocess
import sys
from pathlib import Path

from bazaar.rpc import Server

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "container_attack.py"


def test_the_intruder_script_reports_a_server_that_answers_without_keys():
    srv = Server("tcp://127.0.0.1:0", service="demo", workers=2)  # plaintext: no keys
    srv.start()
    try:
        host = srv.endpoint.removeprefix("tcp://")
        run = subprocess.run(
            [sys.executable, str(SCRIPT), host], capture_output=True, text=True, timeout=60
        )
    finally:
        srv.stop()
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["tried"] == 2 * 5
    assert f"{host} plaintext ping" in report["answered"], report
    assert not [a for a in report["answered"] if "curve-own-keys" in a], report
