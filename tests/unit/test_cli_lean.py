"""`bazaar.cli` reads a role's flags itself (no click in a service) and leaves the rest to click."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest

from bazaar import cli
from bazaar.commands import main as click_main


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        (["catalog"], ("catalog", {})),
        (["catalog", "--data-dir", "/no/such/dir"], ("catalog", {"data_dir": "/no/such/dir"})),
        (["catalog", "--data-dir=/tmp"], ("catalog", {"data_dir": "/tmp"})),
        (["order", "--id", "2"], ("order", {"order_id": 2})),
        (["order", "--id=3", "--data-dir", "d"], ("order", {"order_id": 3, "data_dir": "d"})),
        (["order", "--id", "1", "--id", "2"], ("order", {"order_id": 2})),  # last wins, as click
        (["frontend", "--port", "8081"], ("frontend", {"http_port": 8081})),
    ],
)
def test_plain_role_commands_are_read_without_click(argv, parsed):
    assert cli.parse_role(argv) == parsed


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["--version"],
        ["call", "tcp://127.0.0.1:5555", "ping"],
        ["run-all"],
        ["order", "--help"],
        ["order", "-h"],
        ["order", "--id"],  # no value
        ["order", "--id", "0"],  # below IntRange(min=1)
        ["order", "--id", "x"],
        ["order", "--id", "-1"],
        ["order", "--bogus", "1"],
        ["order", "--id", "1", "extra"],
        ["order", "--port", "1"],  # another role's flag
        ["frontend", "--port", "0"],
        ["frontend", "--port", "65536"],
        ["catalog", "--data-dir", "-x"],  # click decides whether that is a value
        ["catalog", "--data-dir", __file__],  # click.Path(file_okay=False): a file is refused
        ["catalog", "--data"],  # no abbreviations (click has none)
    ],
)
def test_anything_else_is_left_to_click(argv):
    assert cli.parse_role(argv) is None


def test_the_lean_flags_are_the_click_commands_flags():
    ctx = click.Context(click_main)
    for role, flags in cli.FLAGS.items():
        command = click_main.get_command(ctx, role)
        opts = {opt for param in command.params for opt in param.opts}
        assert opts == set(flags), role


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bazaar.cli", *argv], capture_output=True, text=True, timeout=60
    )


def test_help_and_errors_are_clicks():
    help_text = _run("order", "--help")
    assert help_text.returncode == 0
    assert "Usage: python -m bazaar.cli order [OPTIONS]" in help_text.stdout
    assert "--id INTEGER RANGE" in help_text.stdout
    bad = _run("order", "--id", "0")
    assert bad.returncode == 2
    assert "Invalid value for '--id': 0 is not in the range x>=1." in bad.stderr


def test_a_role_that_cannot_start_says_one_line_like_click(tmp_path):
    # BAZAAR_ORDER_ID unset, no --id: refused in the lean path with click's "Error:" line.
    env_run = subprocess.run(
        [sys.executable, "-m", "bazaar.cli", "order", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "BAZAAR_ORDER_ID"},
    )
    assert env_run.returncode == 1
    assert env_run.stderr == "Error: order: give --id N or set BAZAAR_ORDER_ID\n"
