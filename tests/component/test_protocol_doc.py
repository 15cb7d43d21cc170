"""docs/protocol.md's raw pyzmq example runs, unchanged, against the real catalog (CurveZMQ)."""

import contextlib
import io
import os
import re
from pathlib import Path
from unittest import mock

from click.testing import CliRunner

from bazaar.catalog.service import CatalogService
from bazaar.commands import main
from bazaar.config import Config
from tests.conftest import KEYS_DIR

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def run_example(endpoint: str, keys) -> str:
    """The example as a user runs it: it defines everything it uses, from the environment."""
    (example,) = python_blocks()
    out = io.StringIO()
    env = {"BAZAAR_CATALOG": endpoint, "BAZAAR_KEYS_DIR": str(keys)}
    with contextlib.redirect_stdout(out), mock.patch.dict(os.environ, env):
        exec(compile(example, str(DOC), "exec"), {})
    return out.getvalue()


def test_raw_pyzmq_example_from_the_doc(tmp_path):
    config = Config(
        catalog="tcp://127.0.0.1:0",
        catalog_pub="tcp://127.0.0.1:0",
        data_dir=tmp_path / "catalog",
        keys_dir=KEYS_DIR,
    )
    with CatalogService(config) as catalog:
        assert "'service': 'catalog'" in run_example(catalog.rpc_endpoint, KEYS_DIR)
        # The same script with keys that are not the cluster's gets no answer at all.
        from bazaar import security

        security.init_keys(tmp_path / "other")
        assert run_example(catalog.rpc_endpoint, tmp_path / "other") == ""


def test_cli_call_prints_json(server):
    result = CliRunner().invoke(
        main, ["call", "--server", "catalog", server.endpoint, "echo", "value=[1, 2]"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["[", "1,", "2", "]"]


def test_cli_call_ping(server):
    result = CliRunner().invoke(main, ["call", "--server", "catalog", server.endpoint, "ping"])
    assert result.exit_code == 0
    assert '"service": "demo"' in result.output


def test_cli_call_error_exit_status_and_code(server):
    result = CliRunner().invoke(main, ["call", "--server", "catalog", server.endpoint, "nope"])
    assert result.exit_code == 1
    assert "UNIMPLEMENTED" in result.stderr


def test_cli_call_timeout():
    from tests.conftest import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        main, ["call", "--server", "catalog", endpoint, "ping", "--timeout", "0.2"]
    )
    assert result.exit_code == 1
    assert "UNAVAILABLE" in result.stderr


def test_cli_call_rejects_malformed_arguments(server):
    result = CliRunner().invoke(
        main, ["call", "--server", "catalog", server.endpoint, "echo", "novalue"]
    )
    assert result.exit_code == 2
    assert "key=value" in result.output


def test_cli_call_waits_for_a_service_that_is_still_starting():
    import threading

    from bazaar.rpc import Server
    from tests.conftest import free_port, keys_for

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    servers = []
    later = threading.Timer(
        1.0,
        lambda: servers.append(Server(endpoint, service="late", keys=keys_for("catalog")).start()),
    )
    later.start()
    try:
        result = CliRunner().invoke(
            main, ["call", "--server", "catalog", endpoint, "ping", "--timeout", "10"]
        )
    finally:
        later.join()
        for srv in servers:
            srv.stop()
    assert result.exit_code == 0, result.output
    assert '"service": "late"' in result.output
