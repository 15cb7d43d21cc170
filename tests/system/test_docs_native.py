"""The docs walked as a new user and an operator, natively: every command run as written.

Each test lays out a directory as a fresh checkout (`make run`'s `bazaar
run-all` keeping everything in ./data, `.venv` this environment) and runs the
docs' own shell blocks in it, found by their `<!-- test: … -->` marker or a
line only they contain (tests/docblocks.py), with the docs' default addresses
(`localhost:8080`, `tcp://127.0.0.1:5555`, …) pointed at the bazaar under
test. What they print is checked against what the docs say they print.

- api.md's examples answer exactly the JSON the page shows (a fresh market),
  a retry with the same `Idempotency-Key` gets the same number, `/health`
  has exactly the fields of the example; README.md's quick start, scripting
  (`bazaar call`, `bazaar load`), protocol.md's `bazaar call` lines,
  releasing.md's version and `python_info` checks, deploy.md's `bazaar
  export`, troubleshooting.md's "who holds the catalog" command;
  configuration.md's table of what `make run` writes, and its reset.
- troubleshooting.md's rebuild of one replica from its peers with `make run`.
- configuration.md's `make PYTHON=… run` and `make clean`, releasing.md's
  version-bump `sed` lines, on copies of the real files.

The backup and restore (test_backup_restore.py), key rotation
(test_key_rotation.py), upgrade and rollback (test_upgrade.py), the start-up
errors (test_troubleshooting.py) and protocol.md's pyzmq example
(tests/component/test_protocol_doc.py) are run by their own tests.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import prometheus_client
import pytest

import bazaar
from bazaar import supervise
from bazaar.order.log import read_only_rows
from bazaar.testing.makerun import MakeRun
from bazaar.testing.procs import stop_processes
from bazaar.testing.traders import Traders
from tests import docblocks
from tests.system.fixtures import failed

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def make_run(tmp_path, request):
    """A fresh checkout's directory and its `make run`, not started; stopped afterwards
    (its log printed if the test failed)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (the docs' commands use it)")
    work = tmp_path / "stock-bazaar"
    work.mkdir()
    run = MakeRun(work, tmp_path / "logs")
    try:
        yield run
    finally:
        run.stop()
        if failed(request):
            print(run.log()[-6000:])


def sh(run: MakeRun, block: str, **kw) -> str:
    """Run a doc block against `run` (addresses pointed at it); its stdout."""
    pointed = docblocks.pointed(block, run.ports["http"], run.ports)
    return docblocks.run(pointed, run.workdir, run.env(), **kw).stdout


def api_examples() -> list[tuple[str, str]]:
    """docs/api.md's (```sh, ```json) pairs: a command and the answer the page shows."""
    text = (ROOT / "docs" / "api.md").read_text()
    return re.findall(r"```sh\n(.*?)```\n```json\n(.*?)```", text, re.S)


def key_paths(value, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            path = f"{prefix}.{'<id>' if key.isdigit() else key}"
            out |= {path} | key_paths(inner, path)
    return out


def inline(doc: str, start: str) -> str:
    """The `code` span of `doc` that starts with `start` (table cells escape | as \\|)."""
    text = re.sub(r"```.*?```", "", (ROOT / doc).read_text(), flags=re.S)
    (found,) = {m for m in re.findall(r"`([^`\n]+)`", text) if m.startswith(start)}
    return found.replace("\\|", "|")


def test_a_new_users_walk(make_run):
    run = make_run
    run.start()
    run.wait_healthy()

    # docs/api.md: each example's command prints the answer the page shows.
    examples = api_examples()
    assert [c.split()[-1] for c, _ in examples][:1] == ["localhost:8080/stocks/GameStart"]
    assert len(examples) == 4, [c for c, _ in examples]

    def run_example(command):
        (answer,), rest = docblocks.json_values(sh(run, command))
        assert not rest.strip(), rest
        return answer

    def healthy_example(command):
        # /health is a view refreshed in the background: one late status answer
        # shows degraded for a moment, so the example is run until it says ok.
        answer = run_example(command)
        return answer if answer["data"]["status"] == "ok" else None

    for command, shown in examples:
        shown = json.loads(shown)
        if "/health" in command:  # values vary; the fields are the page's, all of them
            answer = run.wait_until(lambda c=command: healthy_example(c), 30, 0.2, "/health ok")
            assert key_paths(answer) == key_paths(shown)
            assert answer["data"]["status"] == "ok"
            continue
        answer = run_example(command)
        assert answer == shown, command  # a fresh market: the page's answer exactly
        if "Idempotency-Key" in command:  # a retry with the same key: the same order
            (again,), _ = docblocks.json_values(sh(run, command))
            assert again == shown
    one_liner = inline("docs/api.md", "curl -s localhost:8080/health | python3 -c")
    run.wait_until(lambda: sh(run, one_liner).strip() == "ok", 30, 0.2, "the one-liner says ok")
    assert sh(run, inline("docs/troubleshooting.md", "curl -s localhost:8080/health"))

    # README.md's quick start (after the api.md order: this one is number 1).
    quick = docblocks.containing("README.md", "curl localhost:8080/stocks/GameStart")
    stock, placed, order0, health = docblocks.json_values(sh(run, quick))[0]
    assert stock["data"]["name"] == "GameStart" and stock["data"]["quantity"] == 99
    assert placed == {"data": {"transaction_number": 1}}
    assert order0["data"] == {"number": 0, "name": "GameStart", "type": "buy", "quantity": 1}
    assert health["data"]["status"] == "ok"

    # README.md's scripting block: `bazaar call` with data/keys, and a short `bazaar load`.
    scripting = docblocks.containing("README.md", "bazaar load --url")
    assert "--requests 200" in scripting
    out = sh(run, scripting.replace("--requests 200", "--requests 5"))
    (fishco,), report = docblocks.json_values(out)
    assert fishco["name"] == "FishCo" and fishco["quantity"] == 100, fishco
    assert (run.workdir / "lat.png").stat().st_size > 1000, report
    same_logs(run)  # the exports below read replica 1's log: let it catch up first
    assert re.search(r"^lookup +80 ", report, re.M), report  # 16 sessions x 5 requests
    assert "mismatches: 0" in report and "unexpected errors: 0/" in report, report

    # docs/protocol.md's command line: the first three as written, the fourth on this host.
    calls = docblocks.containing("docs/protocol.md", "bazaar call --server order2")
    ping, lookup, order, status = docblocks.json_values(
        sh(run, calls.replace("tcp://10.0.0.7:", "tcp://127.0.0.1:"))
    )[0]
    assert ping["service"] == "catalog" and ping["version"] == bazaar.__version__, ping
    assert lookup["name"] == "GameStart"
    assert order["number"] == 0 and order["name"] == "GameStart", order
    assert status["role"] in ("leader", "follower"), status

    # docs/releasing.md: which version, and which Python (not the compose line).
    version = docblocks.containing("docs/releasing.md", ".venv/bin/bazaar --version")
    native = "\n".join(line for line in version.splitlines() if "docker" not in line)
    printed = sh(run, native).splitlines()
    said = re.search(r"# (bazaar, version [\d.]+)", version).group(1)
    assert printed[0] == said == f"bazaar, version {bazaar.__version__}"
    assert printed[1].startswith("python_info{") and printed[1].endswith(" 1.0"), printed
    # api.md's /metrics: the Content-Type it names.
    with urllib.request.urlopen(f"{run.url}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
    assert f"`{prometheus_client.CONTENT_TYPE_LATEST}`" in (ROOT / "docs" / "api.md").read_text()

    # docs/troubleshooting.md: the command that shows who holds the catalog's data dir.
    who = inline("docs/troubleshooting.md", "pgrep -af")
    catalogs = sh(run, who)
    (pid,) = re.findall(r"started catalog \(pid (\d+)\)", run.log())
    assert re.search(rf"^{pid} \S*python3? -m bazaar\.cli catalog$", catalogs, re.M), catalogs

    # docs/deploy.md's CSV export with `make run`, while it runs.
    sh(run, docblocks.marked("docs/deploy.md", "export"))
    with (run.workdir / "market.csv").open() as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 11, rows
    for name, row in rows.items():  # the market as the front end answers it
        status, body = run.http("GET", f"/stocks/{name}")
        assert status == 200 and int(row["quantity"]) == body["data"]["quantity"], (row, body)
    orders = (run.workdir / "orders.csv").read_text().splitlines()
    assert orders[:3] == ["number,name,type,quantity", "0,GameStart,buy,1", "1,GameStart,buy,1"]
    assert len(orders) > 13, "bazaar load placed no orders"  # ~40 of 16 x 5 requests at p = 0.5

    # docs/architecture.md's export and sqlite3 backups, while it runs (its paths are
    # the image's /data; here ./data).
    if shutil.which("sqlite3"):
        (run.workdir / "backup").mkdir()
        replica = docblocks.containing("docs/architecture.md", "sqlite3 /data/orders-1.db")
        sh(run, replica.replace("/data", "data").replace("/backup", "backup"))
        assert (run.workdir / "orders.csv").read_text().splitlines()[:3] == orders[:3]
        copied = list(read_only_rows(run.workdir / "backup" / "orders-1.db"))
        assert len(copied) == len(orders) - 1  # nothing trades meanwhile
        catalog = inline("docs/architecture.md", 'sqlite3 catalog.db ".backup')
        docblocks.run(catalog, run.data, run.env(), checkout=False)
        assert (run.data / "backup.db").stat().st_size > 0
        (run.data / "backup.db").rename(run.workdir / "backup" / "catalog.db")
        shutil.rmtree(run.workdir / "backup")

    # docs/configuration.md: `make run` writes only under ./data, as its table says.
    made = {p.name for p in run.workdir.iterdir()}
    assert made == {"data", ".venv", "lat.png", "market.csv", "orders.csv"}, made
    check_data_dir_as_documented(run.data)

    # docs/security.md's rotation of all keys with `make run`: stop, the command, start.
    assert run.stop() == 0
    old_key = (run.data / "keys" / "order2.key").read_bytes()
    sh(run, inline("docs/security.md", "rm -r data/keys"))
    run.start()
    run.wait_healthy()
    assert (run.data / "keys" / "order2.key").read_bytes() != old_key, "no new keys were made"
    status, body = run.http("GET", "/orders/1")
    assert status == 200 and body["data"]["name"] == "GameStart", body

    # docs/configuration.md's reset: Ctrl-C, the block, `make run` again.
    assert run.stop() == 0
    sh(run, docblocks.marked("docs/configuration.md", "reset"))
    assert not run.data.exists()
    run.start()
    run.wait_healthy()
    status, body = run.http("GET", "/stocks/GameStart")
    assert body["data"]["quantity"] == 100 and body["data"]["volume"] == 0, body
    assert run.http("GET", "/orders/0")[0] == 404
    assert run.stop() == 0

    # troubleshooting.md: what `bazaar call` answers when nothing listens.
    said = docblocks.run(
        docblocks.pointed(scripting.splitlines()[0], run.ports["http"], run.ports),
        run.workdir,
        run.env(),
        check=False,
    )
    assert said.returncode == 1, said
    quoted = inline("docs/troubleshooting.md", "UNAVAILABLE: tcp://")
    pattern = re.escape(quoted).replace("…", ".*").replace(":5555", r":\d+")
    pattern = pattern.replace(re.escape("<method>"), r"\w+")
    assert re.fullmatch(pattern, said.stderr.strip()), (quoted, said.stderr)


def same_logs(run: MakeRun) -> list[tuple]:
    """The order log, once the three replicas' copies are the same."""

    def same():
        logs = [list(read_only_rows(run.data / f"orders-{rid}.db")) for rid in (1, 2, 3)]
        return logs[0] if logs[0] == logs[1] == logs[2] else None

    return run.wait_until(same, 60, 0.2, "the three order logs the same")


def check_data_dir_as_documented(data: Path) -> None:
    """Every file `make run` made is in configuration.md's table, every row exists."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("## What `make run` needs and writes", 1)[1]
    patterns = []
    for row in re.findall(r"^\| (`data/.*?) \|", section, re.M):
        names = re.findall(r"`(?:data/)?([^`]+)`", row)
        if ".." in row:  # `data/orders-1.db` .. `orders-3.db`
            names = [re.sub(r"-\d\.", "-[1-3].", names[0])]
        patterns += names
    assert len(patterns) >= 5, patterns
    found = [p.name + ("/" if p.is_dir() else "") for p in data.iterdir()]
    for name in found:
        assert any(Path(name.rstrip("/")).match(p.rstrip("/")) for p in patterns), (
            f"data/{name} is not in docs/configuration.md's table {patterns}"
        )
    for pattern in patterns:
        assert list(data.glob(pattern.rstrip("/"))), f"data/{pattern} was not made"
    assert (data / "keys").stat().st_mode & 0o777 == 0o700
    for secret in (data / "keys").glob("*.key_secret"):
        assert secret.stat().st_mode & 0o777 == 0o600


def test_rebuilding_one_replica_with_make_run(make_run):
    """troubleshooting.md: Ctrl-C, move order2's files aside, `make run`: it catches up."""
    run = make_run
    run.start()
    run.wait_healthy()
    traders = Traders(run, 7).start()
    try:
        traders.wait_progress(30)
    finally:
        traders.finish()
    acked = dict(traders.acked)
    assert run.stop() == 0

    block = docblocks.marked("docs/troubleshooting.md", "rebuild-make-run")
    sh(run, docblocks.without_make_run(block))
    assert not list(run.data.glob("orders-2.db*")), "order2's files are still there"
    assert (run.data / "damaged" / "orders-2.db").exists()
    run.start()
    health = run.wait_healthy()
    assert health["data"]["order"]["replicas"]["2"]["up"]

    def log(rid: int) -> list[tuple]:
        return list(read_only_rows(run.data / f"orders-{rid}.db"))

    rows = run.wait_until(
        lambda: log(1) if log(2) == log(1) == log(3) and log(2) else None,
        120,
        0.2,
        "order2 caught up from its peers",
    )
    assert len(rows) >= len(acked)
    for number, (key, name, kind, qty) in acked.items():
        assert list(rows[number][:5]) == [number, name, kind, qty, key], rows[number]
    status, body = run.http(
        "POST",
        "/orders",
        {"name": "FishCo", "type": "sell", "quantity": 1},
        {"Idempotency-Key": uuid.uuid4().hex},
    )
    assert status == 200 and body["data"]["transaction_number"] == len(rows), body

    # /health's `degraded` under `make run`: order2 dies, run-all goes on without it,
    # and the documented command brings it back beside it. (Within run-all's start-up
    # window a service that exits stops them all instead.)
    run.wait_until(lambda: supervise.STARTED in run.log(), 60, 0.2, "run-all's start-up over")
    pid = re.findall(r"started order2 \(pid (\d+)\)", run.log())[-1]  # of this run
    os.kill(int(pid), signal.SIGKILL)

    def degraded():
        status, body = run.http("GET", "/health", timeout=3)
        return status == 200 and body["data"]["status"] == "degraded"

    run.wait_until(degraded, 60, 0.2, "/health degraded without order2")
    restart = inline("docs/troubleshooting.md", ".venv/bin/bazaar order --id 2")
    with open(run.log_dir / "order2-by-hand.log", "wb") as out:
        by_hand = subprocess.Popen(
            ["bash", "-c", f"exec {restart}"], cwd=run.workdir, env=run.env(), stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        run.wait_healthy()
        run.wait_until(lambda: len(log(2)) == len(rows) + 1, 60, 0.2, "order2 caught up")
    finally:
        stop_processes([by_hand])
    assert by_hand.returncode == 0, (run.log_dir / "order2-by-hand.log").read_text()


def test_makefile_as_configuration_md_says(tmp_path):
    """`make PYTHON=… run` builds the venv with that Python; `make clean` never touches ./data."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    doc = (ROOT / "docs" / "configuration.md").read_text()
    (python,) = set(re.findall(r"`make PYTHON=(\S+) run`", doc))
    # As from a shell: not as a sub-make of `make test` (which prints its directories).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(
        ["make", "-n", f"PYTHON={python}", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dry.returncode == 0, dry.stderr
    assert f"{python} -m venv .venv" in dry.stdout, dry.stdout
    assert dry.stdout.rstrip().endswith(".venv/bin/bazaar run-all"), dry.stdout

    assert "`make clean` removes `.venv` and tool caches, never `./data`" in doc
    for path in (".venv/bin", ".pytest_cache", ".ruff_cache", "data/keys"):
        (tmp_path / path).mkdir(parents=True)
    (tmp_path / "data" / "catalog.db").write_bytes(b"the market")
    done = subprocess.run(["make", "clean"], cwd=tmp_path, env=env, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"Makefile", "pyproject.toml", "data"}, left
    assert (tmp_path / "data" / "catalog.db").read_bytes() == b"the market"


def test_release_version_bump_lines_change_the_real_files(tmp_path):
    """releasing.md's `sed` lines find what they edit (a sed that matches nothing says nothing)."""
    block = docblocks.containing("docs/releasing.md", "sed -i 's/^__version__")
    seds = "\n".join(line for line in block.splitlines() if line.startswith("sed -i"))
    assert seds.count("sed -i") == 2, block
    new = re.search(r'__version__ = "([\d.]+)"', seds).group(1)
    shutil.copytree(ROOT / "bazaar", tmp_path / "bazaar")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    docblocks.run(seds, tmp_path, {"PATH": "/usr/bin:/bin"})
    init = (tmp_path / "bazaar" / "__init__.py").read_text()
    assert f'\n__version__ = "{new}"\n' in init
    compose = (tmp_path / "docker-compose.yml").read_text()
    assert f"${{BAZAAR_IMAGE:-stock-bazaar:{new}}}" in compose
    assert f"stock-bazaar:{bazaar.__version__}" not in compose
    # A checkout of the new version says so, though the venv's metadata is the old
    # one (`make run` reinstalls only when pyproject.toml changes).
    said = subprocess.run(
        [sys.executable, "-m", "bazaar.cli", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert said.stdout.strip() == f"bazaar, version {new}", said
