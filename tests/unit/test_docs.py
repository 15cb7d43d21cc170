"""The reference docs against the code, so they cannot drift.

- docs/api.md names every route of the Flask app and every key of the real
  `/health` and `/api/dashboard` bodies, by its real path (`data.order.leader`).
- docs/configuration.md's table lists exactly the BAZAAR_* variables that
  bazaar/config.py reads.
- The version is one: pyproject.toml, `bazaar --version`, compose's default
  image tag and the newest release in CHANGELOG.md agree.
- Every relative link in README.md and docs/ points at a file that exists.
- No text points at an issue tracker that is not in the repo ("issue 13").
- Every `bazaar` command, `make` target, `bazaar … --flag` and `bench/X.py`
  flag or subcommand the docs show exists (the commands themselves run in
  tests/system/test_docs_native.py and the tests it names).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import bazaar
from bazaar.commands import main
from bazaar.frontend.app import close_app, create_app
from bazaar.frontend.cache import LookupCache
from bazaar.testing.frontend_fakes import FakeCatalogClient, FakeOrders

ROOT = Path(__file__).resolve().parents[2]
API = (ROOT / "docs" / "api.md").read_text()
CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text()


@pytest.fixture
def app():
    cache = LookupCache(10)
    cache.set_live(True)
    app = create_app(catalog=FakeCatalogClient(), orders=FakeOrders(), cache=cache)
    app.extensions["bazaar"]["monitor"].refresh()
    yield app
    close_app(app)


def test_every_route_is_documented(app):
    routes = set()
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.add(f"`{method} {rule.rule}`")
    assert len(routes) >= 7
    missing = sorted(r for r in routes if f"### {r}" not in API)
    assert not missing, f"docs/api.md has no section for {missing}"
    documented = set(re.findall(r"^### (`[A-Z]+ /[^`]*`)", API, re.M))
    assert documented == routes, f"documented but not routes: {sorted(documented - routes)}"


def paths(value, prefix: str) -> set[str]:
    """Every key path of a JSON value; replica ids become `<id>`."""
    out = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            name = "<id>" if key.isdigit() else key
            out.add(f"{prefix}.{name}")
            out |= paths(inner, f"{prefix}.{name}")
    return out


def test_health_fields_are_documented_by_their_real_paths(app):
    resp = app.test_client().get("/health")
    assert resp.status_code == 200
    found = paths(resp.get_json(), "")
    found = {p.lstrip(".") for p in found}
    assert {"data.status", "data.order.leader", "data.order.replicas.<id>.lag"} <= found
    leaves = {p for p in found if not any(q.startswith(p + ".") for q in found)}
    undocumented = sorted(p for p in leaves if f"`{p}`" not in API)
    assert not undocumented, f"/health fields missing from docs/api.md: {undocumented}"
    # The short paths the old docs quoted are not what the body has.
    assert "`status`" not in API and "`order.leader`" not in API


def test_dashboard_fields_are_documented(app):
    body = app.test_client().get("/api/dashboard").get_json()
    for key in body["data"]:
        assert f"`data.{key}`" in API, key


def test_every_status_code_the_errors_map_to_is_documented():
    from bazaar.errors import HTTP_STATUS

    reachable = {400, 404, 405, 409, 413, 429, 500, 503, 504}
    assert reachable <= {*HTTP_STATUS.values(), 405, 413}
    for status in reachable:
        assert re.search(rf"^\| {status} \|", API, re.M), f"status {status} not in docs/api.md"


def config_vars() -> set[str]:
    return set(re.findall(r'"(BAZAAR_[A-Z_]+)"', (ROOT / "bazaar" / "config.py").read_text()))


def test_configuration_table_lists_exactly_what_config_reads():
    table = set(re.findall(r"^\| `(BAZAAR_[A-Z_]+)` \|", CONFIG_DOC, re.M))
    read = config_vars()
    assert len(read) >= 10
    assert read - table == set(), f"read by bazaar/config.py, not documented: {read - table}"
    assert table - read == set(), f"documented, not read by bazaar/config.py: {table - read}"


def test_documented_defaults_are_the_real_ones():
    from bazaar.config import Config

    cfg = Config()
    for var, value in (
        ("BAZAAR_CATALOG", cfg.catalog),
        ("BAZAAR_CATALOG_PUB", cfg.catalog_pub),
        ("BAZAAR_CACHE_SIZE", str(cfg.cache_size)),
        ("BAZAAR_HTTP_PORT", str(cfg.http_port)),
        ("BAZAAR_LOG_LEVEL", cfg.log_level),
        ("BAZAAR_BIND_HOST", cfg.bind_host),
        ("BAZAAR_METRICS_PORT", str(cfg.metrics_port)),
    ):
        row = re.search(rf"^\| `{var}` \| `([^`]*)`", CONFIG_DOC, re.M)
        assert row and row.group(1) == value, f"{var}: documented default is not {value!r}"
    replicas = ",".join(f"{rid}={ep}" for rid, ep in cfg.order_replicas.items())
    assert f"| `BAZAAR_ORDER_REPLICAS` | `{replicas}` |" in CONFIG_DOC


def version() -> str:
    """The version as written in bazaar/__init__.py (pyproject.toml reads it from there)."""
    text = (ROOT / "bazaar" / "__init__.py").read_text()
    return re.search(r'^__version__ = "(\d+\.\d+\.\d+)"$', text, re.M).group(1)


def test_one_version_everywhere():
    v = version()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bazaar.__version__"}
    assert bazaar.__version__ == v  # what every service's `ping` answers
    result = CliRunner().invoke(main, ["--version"], prog_name="bazaar")
    assert result.exit_code == 0 and result.output.strip() == f"bazaar, version {v}", result.output
    compose = (ROOT / "docker-compose.yml").read_text()
    assert f"image: ${{BAZAAR_IMAGE:-stock-bazaar:{v}}}" in compose
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.M)
    assert releases and releases[0] == v, f"newest release in CHANGELOG.md {releases[:1]} != {v}"
    assert "## [Unreleased]" in changelog
    for release in releases:
        assert f"[{release}]: " in changelog, f"CHANGELOG.md: no link for {release}"
    assert re.search(rf"\| {re.escape(v)} \|", (ROOT / "docs" / "releasing.md").read_text())


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    text = doc.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.name}: links to missing files {broken}"


def sh_blocks() -> list[tuple[str, str]]:
    out = []
    for doc in markdown_files():
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S):
            out.append((doc.name, block))
    return out


def test_every_shell_block_parses():
    """`bash -n` on every ```sh block of README.md and docs/ (placeholders like <you> filled)."""
    import subprocess

    blocks = sh_blocks()
    assert len(blocks) > 20
    for name, block in blocks:
        script = re.sub(r"<[A-Za-z][^<>\n]*>", "X", block)
        done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert done.returncode == 0, (
            f"{name}: a shell block does not parse:\n{block}\n{done.stderr}"
        )


def test_every_bazaar_command_in_the_docs_exists():
    import click

    ctx = click.Context(main)
    seen = set()
    for name, block in sh_blocks():
        for line in block.splitlines():
            for match in re.finditer(
                r"(?<!-n )(?:^|(?<=[\s/\"']))bazaar ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", line
            ):
                if "docker" in line and "exec" not in line and "run" not in line:
                    continue
                cmd = main.get_command(ctx, match.group(1))
                assert cmd is not None, f"{name}: `bazaar {match.group(1)}` does not exist: {line}"
                seen.add(match.group(1))
                if isinstance(cmd, click.Group) and match.group(2):
                    sub = cmd.get_command(ctx, match.group(2))
                    assert sub is not None, f"{name}: no `bazaar {match.group(1)} {match.group(2)}`"
    assert {"backup", "call", "load"} <= seen


def test_every_make_target_in_the_docs_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    for doc in markdown_files():
        for target in re.findall(r"`make(?: PYTHON=\S+)? ([a-z][a-z-]*)", doc.read_text()):
            assert target in targets, f"{doc.name}: `make {target}` is not a Makefile target"


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: p.name)
def test_no_references_to_an_issue_tracker_outside_the_repo(doc):
    """A reference such as "(issue 13)" means nothing here: the tracker is not in the repo."""
    found = re.findall(r"\b(?:issue|task)s? #?\d+", doc.read_text(), re.I)
    assert not found, f"{doc.name}: {found}; say what the change was instead"


def bench_invocations() -> list[tuple[str, str, list[str]]]:
    """(doc, script, argument tokens) of every `bench/<script>.py …` the docs show."""
    found = []
    for doc in markdown_files():
        for line in doc.read_text().splitlines():
            for match in re.finditer(r"bench/(\w+)\.py((?:[ \t]+[^\s`|#)\\]+)*)", line):
                tokens = [t.strip("[]") for t in match.group(2).split()]
                found.append((doc.name, match.group(1), [t for t in tokens if t]))
    return found


def test_every_bench_command_in_the_docs_takes_its_arguments():
    """Each documented `bench/X.py` flag and subcommand is one the script's --help lists."""
    import subprocess
    import sys

    invocations = bench_invocations()
    assert len(invocations) > 15
    helps = {}
    for doc, script, tokens in invocations:
        path = ROOT / "bench" / f"{script}.py"
        assert path.exists(), f"{doc}: bench/{script}.py does not exist"
        if script not in helps:
            done = subprocess.run(
                [sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            usage = done.stdout.split("\n\n", 1)[0]
            options = {
                flag: bool(value)
                for flag, value in re.findall(r"\[(--?[\w-]+)(?: ([A-Z_]+|\{[\w,]+\}))?\]", usage)
            }
            commands = set(",".join(re.findall(r"\{([\w,]+)\} \.\.\.", usage)).split(",")) - {""}
            helps[script] = options, commands
        options, commands = helps[script]
        rest = iter(tokens)
        for token in rest:
            if token.startswith("-"):
                assert token in options, f"{doc}: bench/{script}.py has no option {token}"
                if options[token]:
                    next(rest, None)  # its value
            else:
                assert token in commands, f"{doc}: bench/{script}.py {' '.join(tokens)}"
                break  # the subcommand's own arguments


def test_every_bazaar_option_in_the_docs_exists():
    """`bazaar <command> … --flag`: every flag the docs' shell blocks pass is the command's."""
    import click

    ctx = click.Context(main)
    checked = 0
    for name, block in sh_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            for match in re.finditer(r"(?:^|[\s/\"'])bazaar((?: [^\s#|;&>)'\"]+)+)", line):
                words = match.group(1).split()
                command, group = main, main
                rest = words
                while rest and not rest[0].startswith("-"):
                    inner = (
                        command.get_command(ctx, rest[0])
                        if isinstance(command, click.Group)
                        else None
                    )
                    if inner is None:
                        break
                    command, rest = inner, rest[1:]
                if command is group and (not rest or not rest[0].startswith("-")):
                    continue  # not a command line (prose, a path)
                opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
                opts |= {"--help", "-h"}
                for word in rest:
                    flag = word.split("=", 1)[0]
                    if flag.startswith("-") and not re.fullmatch(r"-\d.*", flag):
                        assert flag in opts, f"{name}: `bazaar {' '.join(words)}`: no {flag}"
                        checked += 1
    assert checked > 10
