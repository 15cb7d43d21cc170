"""The `bazaar` command's click app: every command, flag and help text.

`bazaar.cli.main` starts a service role (`catalog`, `order`, `frontend`)
without loading this module when it can parse the flags itself; everything
else (other commands, --help, --version, a flag it does not take, a value it
would reject) comes here, so what the user sees is click's in every case.
The role commands below run the same `bazaar.role.start`. Other commands
import what they use lazily so `bazaar call` stays fast and light.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import click

import bazaar
from bazaar import config as configmod
from bazaar import security
from bazaar.errors import BazaarError


def _load_config(**overrides) -> configmod.Config:
    try:
        return configmod.from_env().with_(**overrides)
    except configmod.ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _serve(role: str, **overrides) -> None:
    """A role command: `bazaar.role.start` with click's error line on a RoleError."""
    from bazaar import role as rolemod

    try:
        rolemod.start(role, **overrides)
    except rolemod.RoleError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
# The code's own version, not the installed metadata's: after `git checkout` of
# another release, `make run` reinstalls only when pyproject.toml changed, and a
# version bump does not change it.
@click.version_option(version=bazaar.__version__, prog_name="bazaar")
def main() -> None:
    """Stock Bazaar: run services, call them, load them."""


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), help="Overrides BAZAAR_DATA_DIR.")
def catalog(data_dir):
    """Run the catalog service."""
    _serve("catalog", data_dir=data_dir)


@main.command()
@click.option("--id", "order_id", type=click.IntRange(min=1), help="Overrides BAZAAR_ORDER_ID.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Overrides BAZAAR_DATA_DIR.")
def order(order_id, data_dir):
    """Run one order replica."""
    _serve("order", order_id=order_id, data_dir=data_dir)


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), help="Overrides BAZAAR_HTTP_PORT.")
def frontend(port):
    """Run the HTTP front end."""
    _serve("frontend", http_port=port)


@main.command("run-all")
def run_all():
    """Run catalog, order 1-3 and the front end; logs prefixed by service, Ctrl-C stops all."""
    cfg = _load_config()  # a bad BAZAAR_* value is one clear line here, not five tracebacks
    if not cfg.insecure:  # first start: the cluster's keys, next to the data
        _init_keys(cfg.keys_path)
    from bazaar.supervise import run_all as supervise

    sys.exit(supervise())


def _parse_value(text: str):
    """`key=value` values: JSON when they parse (numbers, true, null, lists), else strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _init_keys(directory) -> None:
    try:
        made = security.init_keys(directory)
    except (OSError, security.KeysError) as exc:
        raise click.ClickException(f"keys in {directory}: {exc}") from None
    if made:
        click.echo(f"made keys for {', '.join(made)} in {directory}", err=True)


@main.group()
def keys():
    """The cluster's CurveZMQ keys."""


@keys.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
def keys_init(directory):
    """Make a key pair per role in DIRECTORY (never overwrites; exit 0 when present)."""
    _init_keys(directory)


def _server_role(cfg: configmod.Config, endpoint: str) -> str | None:
    """The role serving ENDPOINT according to BAZAAR_* (by endpoint, then by port).

    A port only names a role when one service has it: on separate hosts the
    replicas may share one (deploy/kubernetes: 5561 on every replica)."""
    servers = {cfg.catalog: "catalog"} | {
        ep: security.replica_role(rid) for rid, ep in cfg.order_replicas.items()
    }
    if endpoint in servers:
        return servers[endpoint]
    ports = Counter(ep.rsplit(":", 1)[1] for ep in servers)
    by_port = {ep.rsplit(":", 1)[1]: role for ep, role in servers.items()}
    port = endpoint.rsplit(":", 1)[-1]
    return by_port[port] if ports[port] == 1 else None


@main.command()
@click.argument("endpoint")
@click.argument("method")
@click.argument("args", nargs=-1)
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds.")
@click.option(
    "--keys",
    "keys_dir",
    type=click.Path(file_okay=False),
    help="The cluster's keys (default: BAZAAR_KEYS_DIR, else <data dir>/keys).",
)
@click.option(
    "--role",
    default="client",
    show_default=True,
    type=click.Choice(security.ROLES),
    help="Speak as.",
)
@click.option(
    "--server",
    "server_role",
    type=click.Choice(security.ROLES[:-1]),
    help="Role of the service at ENDPOINT (default: found from BAZAAR_* by endpoint or port).",
)
def call(endpoint, method, args, timeout, keys_dir, role, server_role):
    """Call METHOD on the service at ENDPOINT with key=value arguments; prints JSON.

    Speaks CurveZMQ with the `client` key (read-only methods) unless
    BAZAAR_INSECURE=1."""
    from bazaar import rpc

    kwargs = {}
    for item in args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"argument {item!r} is not key=value")
        kwargs[key] = _parse_value(value)
    cfg = _load_config(keys_dir=keys_dir and configmod.Path(keys_dir))
    creds = None
    if not cfg.insecure or keys_dir:
        server_role = server_role or _server_role(cfg, endpoint)
        if server_role is None:
            raise click.UsageError(f"which service is {endpoint}? say --server ROLE")
        try:
            creds = security.load_keys(cfg.keys_path, role)
        except security.KeysError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        result = rpc.call(
            endpoint, method, kwargs, timeout=timeout, keys=creds, server_role=server_role
        )
    except BazaarError as err:
        click.echo(f"{err.code}: {err.message}", err=True)
        sys.exit(1)
    click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


@main.group()
def export():
    """Print a service's data as the seed's CSV on stdout (safe while it runs)."""


@export.command("market")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Overrides BAZAAR_DATA_DIR.")
def export_market(data_dir):
    """The catalog's market: name,price,quantity,volume,max_volume (empty max_volume: no limit)."""
    from bazaar.catalog.export import ExportError, market_csv

    cfg = _load_config(data_dir=data_dir and configmod.Path(data_dir))
    try:
        text = market_csv(cfg.data_dir)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(text, nl=False)


@export.command("orders")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Overrides BAZAAR_DATA_DIR.")
@click.option(
    "--replica",
    type=click.IntRange(min=1),
    help="Replica id (default: BAZAAR_ORDER_ID, else the only orders-<id>.db in the dir).",
)
def export_orders(data_dir, replica):
    """Print a replica's order log as CSV: number,name,type,quantity."""
    import csv

    from bazaar.order.log import db_path, read_only_rows

    cfg = _load_config(data_dir=data_dir and configmod.Path(data_dir))
    replica = replica or cfg.order_id
    if replica is None:
        found = sorted(cfg.data_dir.glob("orders-*.db"))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise click.ClickException(
                f"export orders: give --replica N (order logs in {cfg.data_dir}: {names})"
            )
        replica = int(found[0].stem.removeprefix("orders-"))
    rows = read_only_rows(db_path(cfg.data_dir, replica), "number, name, type, quantity")
    writer = csv.writer(sys.stdout, lineterminator="\n")
    try:
        first = next(rows, None)  # opens the database: a missing one fails before any output
        writer.writerow(("number", "name", "type", "quantity"))
        if first is not None:
            writer.writerow(first)
            writer.writerows(rows)
    except BazaarError as err:
        raise click.ClickException(f"{err.code}: {err.message}") from None


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Overrides BAZAAR_DATA_DIR.")
def backup(directory, data_dir):
    """Copy every database of the data dir into DIRECTORY while the services run.

    Each file is one consistent state (SQLite's online backup); order logs are
    copied before the catalog. docs/deploy.md says how to restore.
    """
    from bazaar.backup import BackupError
    from bazaar.backup import backup as run_backup

    cfg = _load_config(data_dir=data_dir and configmod.Path(data_dir))
    try:
        copied = run_backup(cfg.data_dir, configmod.Path(directory))
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    for item in copied:
        click.echo(f"{directory}/{item.name}: {item.rows} {item.what}, {item.bytes} bytes")


def _default_url() -> str:
    try:
        return f"http://127.0.0.1:{configmod.from_env().http_port}"
    except configmod.ConfigError:
        return "http://127.0.0.1:8080"


@main.command()
@click.option("--url", default=_default_url, show_default="http://127.0.0.1:$BAZAAR_HTTP_PORT")
@click.option("--sessions", "-n", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--requests", "-m", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "-p",
    "prob",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Probability that an iteration also places an order.",
)
@click.option("--seed", type=int, help="Random seed (printed; random when not given).")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="PNG: latency histograms, or the sweep plot with --sweep.",
)
@click.option("--sweep", help="Comma-separated probabilities, e.g. 0,0.2,0.4,0.6,0.8.")
@click.option("--stocks", help="Comma-separated stock names (default: the four seed stocks).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Per request, s.")
@click.option(
    "--error-tolerance",
    type=click.FloatRange(0, 1),
    default=0.001,
    show_default=True,
    help="Fraction of requests allowed to fail unexpectedly.",
)
def load(url, sessions, requests, prob, seed, plot, sweep, stocks, timeout, error_tolerance):
    """Closed-loop load against the front end; verifies every acknowledged order."""
    from bazaar import load as loadmod

    try:
        sweep_ps = loadmod.parse_floats(sweep) if sweep else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sweep") from None
    names = [s.strip() for s in stocks.split(",") if s.strip()] if stocks else None
    code = loadmod.main(
        url,
        sessions,
        requests,
        prob,
        seed=seed,
        plot=plot,
        sweep=sweep_ps,
        stocks=names or loadmod.DEFAULT_STOCKS,
        timeout=timeout,
        error_tolerance=error_tolerance,
        out=click.echo,
    )
    sys.exit(code)
