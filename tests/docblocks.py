"""The docs' shell blocks, found by marker or by a line they contain, and run as a user would.

A block is the ```sh fence right after `<!-- test: NAME -->` (`marked`), or the
one ```sh fence of a file that contains a given text (`containing`): either
way the test runs the doc's own text, so doc and test cannot drift. `run`
runs a block with bash -euo pipefail in a directory laid out as a checkout
(`.venv` is the test's own environment, `bazaar` is on PATH), with the
addresses of the docs (`localhost:8080`, `tcp://127.0.0.1:5555`) pointed at
the bazaar under test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from bazaar.testing.docblocks import marked_block

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORTS = {"catalog": 5555, "pub": 5556, "order1": 5561, "order2": 5562, "order3": 5563}


def sh_blocks(doc: str) -> list[str]:
    """Every ```sh block of README.md or docs/<doc>."""
    path = ROOT / doc
    return re.findall(r"```sh\n(.*?)```", path.read_text(), re.S)


def marked(doc: str, marker: str) -> str:
    """The ```sh block right after `<!-- test: marker -->` in `doc` (markers may be indented)."""
    block = marked_block((ROOT / doc).read_text(), marker)
    assert block is not None, f"{doc} has no ```sh block marked <!-- test: {marker} -->"
    return dedent_block(block)


def containing(doc: str, needle: str) -> str:
    """The one ```sh block of `doc` that contains `needle`."""
    found = [b for b in sh_blocks(doc) if needle in b]
    assert len(found) == 1, f"{doc}: {len(found)} ```sh blocks contain {needle!r}, expected 1"
    return dedent_block(found[0])


def dedent_block(block: str) -> str:
    import textwrap

    return textwrap.dedent(block).strip() + "\n"


def without_make_run(block: str) -> str:
    """The block up to its last command, which must be `make run` (the test starts that itself)."""
    lines = block.rstrip().splitlines()
    assert lines and lines[-1].split("#")[0].strip() == "make run", block
    return "\n".join(lines[:-1]) + "\n"


def pointed(block: str, http_port: int, ports: Mapping[str, int]) -> str:
    """`block` with the docs' default addresses replaced by the ones under test."""
    out = block.replace("localhost:8080", f"127.0.0.1:{http_port}")
    out = out.replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
    for name, default in DEFAULT_PORTS.items():
        out = re.sub(rf"(tcp://127\.0\.0\.1):{default}\b", rf"\g<1>:{ports[name]}", out)
    return out


def run(
    block: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float = 120.0,
    check: bool = True,
    checkout: bool = True,
) -> subprocess.CompletedProcess:
    """Run `block` in `cwd` as a user's shell would: in a checkout (`.venv` the test's own,
    unless checkout=False) with `bazaar` on PATH."""
    venv = Path(cwd) / ".venv"
    if checkout and not venv.exists() and not venv.is_symlink():
        venv.symlink_to(Path(sys.executable).parent.parent)
    env = dict(env)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert done.returncode == 0, (
            f"{block}\nexit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
        )
    return done


def json_values(text: str) -> tuple[list, str]:
    """The JSON values at the start of `text` (curl prints bodies back to back), and the rest."""
    decoder = json.JSONDecoder()
    values, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return values, text[pos:]
        values.append(value)
