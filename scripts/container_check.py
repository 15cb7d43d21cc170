"""HTTP checks for scripts/container-test.sh: the stack seen from outside.

Standard library only (runs with any python3 on the host). Each subcommand
prints one line of JSON or a short message and exits non-zero when its check
fails, so the shell script can stay a plain sequence of steps.

    wait-health URL [--want ok|orders] [--timeout S]   until /health says so
    leader URL                                         the order leader's id
    place URL N FILE                                   N acknowledged orders -> FILE
    verify URL FILE                                    every order in FILE reads back the same
    wait-synced URL [--timeout S]                      all replicas up, same last_number
    same-files F1 F2 ...                               byte-identical files
    snapshot URL                                       the market and the leader, as JSON
    prometheus PROM_URL --alerts FILE [--targets N]    Prometheus (its HTTP API) sees the stack
        [--elections-above N] [--timeout S]            (below)
    doc-block FILE MARKER                              the ```sh block after <!-- test: MARKER -->
    restored URL ORDERS_CSV --acked FILE...            a restored stack holds every acknowledged
                                                       order, gapless, and a market that matches
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

STOCKS = ("GameStart", "FishCo", "BoarCo", "MenhirCo")
SEED_QUANTITY = 100  # of each stock in a new market (bazaar/catalog/market.py)


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"null")
        except ValueError:
            return err.code, None
    except (OSError, ValueError) as err:  # refused, reset, timeout, not JSON
        return None, str(err)


def health(url: str):
    status, body = http("GET", f"{url}/health")
    data = body.get("data") if isinstance(body, dict) else None
    return status, data


def summary(status, data) -> str:
    """One line of /health: what changed while waiting (printed to stderr)."""
    if not data:
        return f"http {status}"
    order = data.get("order") or {}
    replicas = " ".join(
        f"{rid}:{'up' if r.get('up') else 'down'}/{r.get('role')}"
        for rid, r in sorted((order.get("replicas") or {}).items())
    )
    catalog = "up" if (data.get("catalog") or {}).get("up") else "down"
    return f"{data.get('status')} catalog:{catalog} leader:{order.get('leader')} {replicas}"


def cmd_wait_health(args) -> int:
    start = time.monotonic()
    deadline = start + args.timeout
    last = None
    shown = None
    while time.monotonic() < deadline:
        status, data = health(args.url)
        last = (status, data)
        line = summary(status, data)
        if line != shown:
            print(f"  {time.monotonic() - start:5.1f}s /health: {line}", file=sys.stderr)
            shown = line
        if data:
            if args.want == "ok" and data.get("status") == "ok":
                print(json.dumps(data))
                return 0
            if args.want == "orders" and data.get("status") in ("ok", "degraded"):
                print(json.dumps(data))
                return 0
        time.sleep(1)
    print(f"/health not {args.want} after {args.timeout}s; last answer: {last}", file=sys.stderr)
    return 1


def cmd_leader(args) -> int:
    _, data = health(args.url)
    leader = (data or {}).get("order", {}).get("leader")
    if leader is None:
        print(f"no order leader in /health: {data}", file=sys.stderr)
        return 1
    print(leader)
    return 0


def place_one(url: str, i: int, deadline: float) -> dict:
    # Alternate sell/buy of one share: the market never runs dry.
    order = {
        "name": STOCKS[i % len(STOCKS)],
        "type": "sell" if i % 2 == 0 else "buy",
        "quantity": 1,
    }
    key = uuid.uuid4().hex
    while True:
        status, body = http("POST", f"{url}/orders", order, {"Idempotency-Key": key})
        if status == 200:
            return {"number": body["data"]["transaction_number"], **order}
        if time.monotonic() > deadline or status not in (None, 502, 503, 504):
            raise SystemExit(f"order {order} failed: {status} {body}")
        time.sleep(0.2)  # same key again: at most one trade


def cmd_place(args) -> int:
    deadline = time.monotonic() + args.timeout
    placed = [place_one(args.url, i, deadline) for i in range(args.n)]
    numbers = [p["number"] for p in placed]
    if len(set(numbers)) != len(numbers):
        print(f"transaction numbers handed out twice: {numbers}", file=sys.stderr)
        return 1
    with open(args.file, "w") as f:
        json.dump(placed, f)
    print(json.dumps({"placed": len(placed), "first": min(numbers), "last": max(numbers)}))
    return 0


def cmd_verify(args) -> int:
    with open(args.file) as f:
        placed = json.load(f)
    bad = []
    for p in placed:
        status, body = http("GET", f"{args.url}/orders/{p['number']}")
        got = (body or {}).get("data") if isinstance(body, dict) else None
        if (
            status != 200
            or not got
            or any(got.get(k) != p[k] for k in ("number", "name", "type", "quantity"))
        ):
            bad.append({"expected": p, "status": status, "got": body})
    if bad:
        print(json.dumps({"lost_or_changed": bad[:10], "count": len(bad)}), file=sys.stderr)
        return 1
    print(json.dumps({"verified": len(placed)}))
    return 0


def cmd_wait_synced(args) -> int:
    deadline = time.monotonic() + args.timeout
    last = None
    while time.monotonic() < deadline:
        _, data = health(args.url)
        replicas = ((data or {}).get("order") or {}).get("replicas") or {}
        last = replicas
        numbers = {r.get("last_number") for r in replicas.values()}
        if len(replicas) == 3 and all(r.get("up") for r in replicas.values()) and len(numbers) == 1:
            print(json.dumps({"last_number": numbers.pop(), "leader": data["order"].get("leader")}))
            return 0
        time.sleep(1)
    print(f"replicas not in sync after {args.timeout}s: {last}", file=sys.stderr)
    return 1


def cmd_snapshot(args) -> int:
    """The four stocks and (leader, epoch): what an intruder must not change."""
    stocks = {}
    for name in STOCKS:
        status, body = http("GET", f"{args.url}/stocks/{name}")
        if status != 200:
            print(f"GET /stocks/{name}: {status} {body}", file=sys.stderr)
            return 1
        stocks[name] = body["data"]
    _, data = health(args.url)
    order = (data or {}).get("order") or {}
    snap = {"stocks": stocks, "leader": order.get("leader"), "epoch": order.get("epoch")}
    print(json.dumps(snap, sort_keys=True))
    return 0


def cmd_same_files(args) -> int:
    digests = {}
    for path in args.files:
        with open(path, "rb") as f:
            content = f.read()
        digests[path] = (hashlib.sha256(content).hexdigest()[:16], content.count(b"\n"))
    print(json.dumps(digests))
    return 0 if len({d for d, _ in digests.values()}) == 1 else 1


def promql(prom: str, query: str) -> list | None:
    """An instant query's result vector, or None when Prometheus does not answer."""
    status, body = http("GET", f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
        return None
    return body["data"]["result"]


def scalar(prom: str, query: str) -> float | None:
    result = promql(prom, query)
    return float(result[0]["value"][1]) if result else None


def prometheus_view(prom: str, alert_names: set[str]) -> dict:
    """What the compose Prometheus sees: its targets, the leader count, counters, rules."""
    status, body = http("GET", f"{prom}/api/v1/targets")
    targets = {}
    if status == 200 and isinstance(body, dict):
        for t in body["data"]["activeTargets"]:
            name = f"{t['labels'].get('job')}/{t['labels'].get('instance')}"
            targets[name] = (
                t["health"] if t["health"] == "up" else f"{t['health']}: {t['lastError']}"
            )
    up = {
        f"{r['metric'].get('job')}/{r['metric'].get('instance')}": r["value"][1]
        for r in promql(prom, "up") or []
    }
    status, body = http("GET", f"{prom}/api/v1/rules")
    loaded = set()
    if status == 200 and isinstance(body, dict):
        loaded = {r["name"] for g in body["data"]["groups"] for r in g["rules"]}
    return {
        "targets": targets,
        "up": up,
        "leaders": scalar(prom, "sum(bazaar_order_is_leader)"),
        "orders": scalar(prom, "sum(bazaar_orders_total)"),
        "elections": scalar(prom, "sum(bazaar_leader_elections_total)"),
        "rules_missing": sorted(alert_names - loaded),
    }


def cmd_prometheus(args) -> int:
    """Until Prometheus's HTTP API shows every target up (`up == 1`), exactly one
    order leader, orders counted, every alert of FILE loaded, and (optionally)
    more leader elections than before."""
    with open(args.alerts) as f:
        alert_names = set(re.findall(r"^\s*- alert:\s*(\w+)", f.read(), re.M))
    if not alert_names:
        print(f"no alerts found in {args.alerts}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    view: dict = {}
    while time.monotonic() < deadline:
        view = prometheus_view(args.prom, alert_names)
        if (
            len(view["targets"]) == args.targets
            and set(view["targets"].values()) == {"up"}
            and len(view["up"]) == args.targets
            and set(view["up"].values()) == {"1"}
            and view["leaders"] == 1
            and (view["orders"] or 0) > 0
            and (view["elections"] or 0) > args.elections_above
            and not view["rules_missing"]
        ):
            print(json.dumps(view, sort_keys=True))
            return 0
        time.sleep(1)
    print(f"Prometheus did not see the stack after {args.timeout}s: {view}", file=sys.stderr)
    return 1


def cmd_doc_block(args) -> int:
    """Print the ```sh block right after `<!-- test: MARKER -->` (the tests' convention)."""
    from bazaar.testing.docblocks import marked_block

    with open(args.file) as f:
        block = marked_block(f.read(), args.marker)
    if block is None:
        print(
            f"{args.file} has no ```sh block marked <!-- test: {args.marker} -->", file=sys.stderr
        )
        return 1
    print(block, end="")
    return 0


def cmd_restored(args) -> int:
    """One look at a restored stack: its order log (a replica's `bazaar export orders`)
    is numbered 0..N-1 and holds every acknowledged order unchanged, the front end
    reads them back, and each stock's quantity and volume are what the log says
    (seed quantity - buys + sells; buys + sells)."""
    with open(args.orders) as f:
        rows = list(csv.DictReader(f))
    problems = []
    numbers = [int(r["number"]) for r in rows]
    if numbers != list(range(len(rows))):
        problems.append(f"log not numbered 0..{len(rows) - 1}")
    by_number = {int(r["number"]): r for r in rows}
    acked = []
    for path in args.acked:
        with open(path) as f:
            acked += json.load(f)
    for p in acked:
        got = by_number.get(p["number"])
        want = {"name": p["name"], "type": p["type"], "quantity": str(p["quantity"])}
        if got is None or {k: got[k] for k in want} != want:
            problems.append(f"acknowledged order {p} restored as {got}")
    for name in STOCKS:
        mine = [r for r in rows if r["name"] == name]
        buys = sum(int(r["quantity"]) for r in mine if r["type"] == "buy")
        sells = sum(int(r["quantity"]) for r in mine if r["type"] == "sell")
        status, body = http("GET", f"{args.url}/stocks/{name}")
        data = (body or {}).get("data") if isinstance(body, dict) else None
        want = {"quantity": SEED_QUANTITY - buys + sells, "volume": buys + sells}
        if status != 200 or not data or {k: data.get(k) for k in want} != want:
            problems.append(f"{name}: market says {status} {data}, the log {want}")
    for p in acked[:: max(1, len(acked) // 10)]:  # a sample through the HTTP API as well
        status, body = http("GET", f"{args.url}/orders/{p['number']}")
        if status != 200 or (body or {}).get("data", {}).get("name") != p["name"]:
            problems.append(f"GET /orders/{p['number']}: {status} {body}")
    if problems:
        print(json.dumps({"problems": problems[:10], "count": len(problems)}), file=sys.stderr)
        return 1
    print(json.dumps({"restored_orders": len(rows), "acknowledged_checked": len(acked)}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("wait-health")
    p.add_argument("url")
    p.add_argument("--want", choices=("ok", "orders"), default="ok")
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(func=cmd_wait_health)
    p = sub.add_parser("leader")
    p.add_argument("url")
    p.set_defaults(func=cmd_leader)
    p = sub.add_parser("place")
    p.add_argument("url")
    p.add_argument("n", type=int)
    p.add_argument("file")
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(func=cmd_place)
    p = sub.add_parser("verify")
    p.add_argument("url")
    p.add_argument("file")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("wait-synced")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=90)
    p.set_defaults(func=cmd_wait_synced)
    p = sub.add_parser("snapshot")
    p.add_argument("url")
    p.set_defaults(func=cmd_snapshot)
    p = sub.add_parser("same-files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_same_files)
    p = sub.add_parser("prometheus")
    p.add_argument("prom")
    p.add_argument("--alerts", required=True)
    p.add_argument("--targets", type=int, default=5)
    p.add_argument("--elections-above", type=float, default=-1)
    p.add_argument("--timeout", type=float, default=90)
    p.set_defaults(func=cmd_prometheus)
    p = sub.add_parser("doc-block")
    p.add_argument("file")
    p.add_argument("marker")
    p.set_defaults(func=cmd_doc_block)
    p = sub.add_parser("restored")
    p.add_argument("url")
    p.add_argument("orders")
    p.add_argument("--acked", nargs="+", required=True)
    p.set_defaults(func=cmd_restored)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
