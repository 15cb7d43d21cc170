"""The load client behind `bazaar load` (SPEC section 5).

N sessions run as threads, each with its own keep-alive HTTP connection (a
urllib3 pool of size one). Each session does M iterations: look up a random
stock and, with probability P, buy or sell a small quantity of it. Every
request's latency is recorded per request type (`lookup`, `order`,
`get_order`) together with its outcome. At the end every acknowledged order is
read back with `GET /orders/<n>` and compared (same name, type, quantity; no
transaction number handed out twice).

The parts are small and pure where they can be: `summarize` (numpy
percentiles), `check_order` / `find_duplicates` (verification), and
`run_load`, which takes a session factory so tests can drive it against a fake
bazaar. `main` is what the CLI calls; it returns the process exit code.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bazaar.wire import is_int

KINDS = ("lookup", "order", "get_order")
DEFAULT_STOCKS = ("GameStart", "FishCo", "BoarCo", "MenhirCo")
PERCENTILES = (50, 95, 99)
MAX_QUANTITY = 5
ORDER_ATTEMPTS = 3  # an order is retried (same Idempotency-Key) after a transport failure
RETRY_STATUSES = (502, 503, 504)

# Outcome names. "ok" and "rejected" are expected; everything else is an error.
OK = "ok"
REJECTED = "rejected"  # 400 on an order: not enough stock / over max_volume
EXPECTED = frozenset({OK, REJECTED})


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status and parsed JSON body (None when not JSON)."""

    status: int
    body: Any


class TransportError(Exception):
    """No HTTP answer at all: connection refused or reset, timeout."""


class Session(Protocol):
    def request(self, method: str, path: str, body: Any = None, headers=None) -> Reply: ...

    def close(self) -> None: ...


class HttpSession:
    """One keep-alive HTTP connection to the front end (urllib3, pool of one)."""

    def __init__(self, url: str, timeout: float = 10.0):
        import urllib3

        parsed = urllib3.util.parse_url(url)
        self._errors = urllib3.exceptions.HTTPError
        self._prefix = (parsed.path or "").rstrip("/")
        self._pool = urllib3.HTTPConnectionPool(
            parsed.host or "127.0.0.1",
            parsed.port or 80,
            maxsize=1,
            block=True,
            timeout=urllib3.Timeout(total=timeout),
            retries=False,
        )

    def request(self, method: str, path: str, body: Any = None, headers=None) -> Reply:
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            resp = self._pool.request(
                method, self._prefix + path, body=data, headers=headers, retries=False
            )
        except self._errors as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        return Reply(resp.status, _parse_json(resp.data))

    def close(self) -> None:
        self._pool.close()


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Ack:
    """An acknowledged order: what was asked and the number that came back."""

    number: int
    name: str
    type: str
    quantity: int
    key: str = ""


@dataclass
class Recorder:
    """What one session saw; merged after the run (no locks on the hot path)."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    outcomes: Counter = field(default_factory=Counter)
    acks: list[Ack] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(self, kind: str, outcome: str, seconds: float | None, note: str = "") -> None:
        self.outcomes[(kind, outcome)] += 1
        if seconds is not None:
            self.latencies[kind].append(seconds)
        if outcome not in EXPECTED and len(self.errors) < 20:
            self.errors.append(f"{kind}: {outcome} {note}".strip())

    def merge(self, other: Recorder) -> None:
        for kind in KINDS:
            self.latencies[kind].extend(other.latencies[kind])
        self.outcomes.update(other.outcomes)
        self.acks.extend(other.acks)
        self.errors.extend(other.errors[: max(0, 20 - len(self.errors))])


def classify(kind: str, reply: Reply) -> str:
    """The outcome name for an HTTP answer to a request of `kind`."""
    if reply.status == 200:
        return OK
    if kind == "order" and reply.status == 400:
        return REJECTED
    return f"http_{reply.status}"


def timed(session: Session, method: str, path: str, body=None, headers=None):
    """(reply or None, seconds, error text): one request, timed with perf_counter."""
    start = time.perf_counter()
    try:
        reply = session.request(method, path, body, headers)
    except TransportError as exc:
        return None, time.perf_counter() - start, str(exc)
    return reply, time.perf_counter() - start, ""


# ---------------------------------------------------------------------------
# One session
# ---------------------------------------------------------------------------
def do_lookup(session: Session, rec: Recorder, name: str) -> None:
    reply, seconds, err = timed(session, "GET", f"/stocks/{name}")
    if reply is None:
        rec.record("lookup", "transport", None, err)
        return
    outcome = classify("lookup", reply)
    if outcome == OK and not _valid_stock(reply.body, name):
        outcome = "bad_body"
    rec.record("lookup", outcome, seconds, f"{name}: {reply.body!r:.200}")


def _valid_stock(body: Any, name: str) -> bool:
    data = body.get("data") if isinstance(body, dict) else None
    return isinstance(data, dict) and data.get("name") == name and "quantity" in data


def do_order(session: Session, rec: Recorder, name: str, type_: str, quantity: int) -> None:
    """POST /orders with an Idempotency-Key; retried with the same key on transport failure."""
    key = uuid.uuid4().hex
    body = {"name": name, "type": type_, "quantity": quantity}
    for attempt in range(ORDER_ATTEMPTS):
        reply, seconds, err = timed(session, "POST", "/orders", body, {"Idempotency-Key": key})
        last = attempt == ORDER_ATTEMPTS - 1
        if reply is None:
            rec.record("order", "transport", None, err)
        elif reply.status in RETRY_STATUSES and not last:
            rec.record("order", classify("order", reply), seconds, f"{reply.body!r:.200}")
        else:
            _record_order_reply(rec, reply, seconds, Ack(-1, name, type_, quantity, key))
            return
        if not last:
            time.sleep(0.05 * (attempt + 1))


def _record_order_reply(rec: Recorder, reply: Reply, seconds: float, asked: Ack) -> None:
    outcome = classify("order", reply)
    number = _transaction_number(reply.body) if outcome == OK else None
    if outcome == OK and number is None:
        outcome = "bad_body"
    rec.record("order", outcome, seconds, f"{reply.body!r:.200}")
    if number is not None:
        rec.acks.append(Ack(number, asked.name, asked.type, asked.quantity, asked.key))


def _transaction_number(body: Any) -> int | None:
    data = body.get("data") if isinstance(body, dict) else None
    number = data.get("transaction_number") if isinstance(data, dict) else None
    return number if is_int(number) else None


def run_session(
    session: Session,
    rng: random.Random,
    stocks: Sequence[str],
    requests: int,
    p: float,
    tick: Callable[[int], None] = lambda _n: None,
) -> Recorder:
    """M iterations: look up a random stock; with probability p buy or sell some of it."""
    rec = Recorder()
    pending = 0
    for _ in range(requests):
        name = rng.choice(stocks)
        do_lookup(session, rec, name)
        if rng.random() < p:
            do_order(session, rec, name, rng.choice(("buy", "sell")), rng.randint(1, MAX_QUANTITY))
        pending += 1
        if pending == 10:
            tick(pending)
            pending = 0
    tick(pending)
    return rec


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Mismatch:
    number: int
    problem: str  # "missing", "different", "duplicate", "error"
    detail: str

    def __str__(self) -> str:
        return f"order {self.number}: {self.problem}: {self.detail}"


def check_order(ack: Ack, reply: Reply | None, error: str = "") -> Mismatch | None:
    """Compare one acknowledged order with what GET /orders/<n> returned."""
    if reply is None:
        return Mismatch(ack.number, "error", error or "no answer")
    if reply.status == 404:
        return Mismatch(ack.number, "missing", "GET /orders answered 404")
    if reply.status != 200:
        return Mismatch(ack.number, "error", f"HTTP {reply.status}: {reply.body!r:.200}")
    data = reply.body.get("data") if isinstance(reply.body, dict) else None
    want = {"number": ack.number, "name": ack.name, "type": ack.type, "quantity": ack.quantity}
    got = {k: data.get(k) for k in want} if isinstance(data, dict) else None
    if got != want:
        return Mismatch(ack.number, "different", f"acknowledged {want}, stored {got}")
    return None


def find_duplicates(acks: Iterable[Ack]) -> list[Mismatch]:
    """Two different orders (different keys) acknowledged with one number."""
    by_number: dict[int, Ack] = {}
    out = []
    for ack in acks:
        first = by_number.setdefault(ack.number, ack)
        if first is not ack and first.key != ack.key:
            out.append(Mismatch(ack.number, "duplicate", f"given to {first} and {ack}"))
    return out


def verify_chunk(session: Session, acks: Sequence[Ack], rec: Recorder) -> list[Mismatch]:
    """GET every order in `acks`; record get_order latencies; return the mismatches."""
    out = []
    for ack in acks:
        reply, seconds, err = timed(session, "GET", f"/orders/{ack.number}")
        if reply is None:
            rec.record("get_order", "transport", None, err)
        else:
            rec.record("get_order", classify("get_order", reply), seconds)
        mismatch = check_order(ack, reply, err)
        if mismatch is not None:
            out.append(mismatch)
    return out


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KindSummary:
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    throughput: float  # completed requests per second of the phase they ran in


def summarize(latencies: Sequence[float], seconds: float) -> KindSummary:
    """Percentiles (numpy, linear interpolation) of latencies given in seconds."""
    if len(latencies) == 0:
        nan = math.nan
        return KindSummary(0, nan, nan, nan, nan, nan, 0.0)
    ms = np.asarray(latencies, dtype=float) * 1000.0
    p50, p95, p99 = np.percentile(ms, PERCENTILES)
    rate = len(ms) / seconds if seconds > 0 else math.nan
    return KindSummary(
        len(ms), float(p50), float(p95), float(p99), float(ms.mean()), float(ms.max()), rate
    )


@dataclass
class Report:
    """The result of one load run."""

    seed: int
    p: float
    sessions: int
    requests: int
    rec: Recorder
    load_seconds: float
    verify_seconds: float
    mismatches: list[Mismatch]

    def summary(self) -> dict[str, KindSummary]:
        phase = {"lookup": self.load_seconds, "order": self.load_seconds}
        phase["get_order"] = self.verify_seconds
        return {k: summarize(self.rec.latencies[k], phase[k]) for k in KINDS}

    def error_count(self) -> int:
        return sum(n for (_, outcome), n in self.rec.outcomes.items() if outcome not in EXPECTED)

    def request_count(self) -> int:
        return sum(self.rec.outcomes.values())

    def ok(self, error_tolerance: float) -> bool:
        allowed = math.floor(error_tolerance * self.request_count())
        return not self.mismatches and self.error_count() <= allowed


def format_table(summary: dict[str, KindSummary]) -> str:
    head = f"{'request':<10}{'count':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"
    head += f"{'max ms':>10}{'req/s':>10}"
    lines = [head]
    for kind, s in summary.items():
        lines.append(
            f"{kind:<10}{s.count:>8}{s.p50_ms:>10.2f}{s.p95_ms:>10.2f}{s.p99_ms:>10.2f}"
            f"{s.max_ms:>10.2f}{s.throughput:>10.1f}"
        )
    return "\n".join(lines)


def format_outcomes(outcomes: Counter) -> str:
    parts = [f"{kind} {outcome}={n}" for (kind, outcome), n in sorted(outcomes.items())]
    return ", ".join(parts) or "none"


def format_report(report: Report, error_tolerance: float) -> str:
    lines = [
        (
            f"p={report.p} sessions={report.sessions} requests/session={report.requests} "
            f"seed={report.seed}"
        ),
        f"load phase {report.load_seconds:.2f}s, verify phase {report.verify_seconds:.2f}s",
        format_table(report.summary()),
        f"outcomes: {format_outcomes(report.rec.outcomes)}",
        f"acknowledged orders: {len(report.rec.acks)}, mismatches: {len(report.mismatches)}",
    ]
    lines += [f"  MISMATCH {m}" for m in report.mismatches[:20]]
    lines += [f"  error: {e}" for e in report.rec.errors[:10]]
    errors, total = report.error_count(), report.request_count()
    verdict = "OK" if report.ok(error_tolerance) else "FAILED"
    lines.append(
        f"unexpected errors: {errors}/{total} (tolerance {error_tolerance:.2%}): {verdict}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# A whole run
# ---------------------------------------------------------------------------
def _progress(total: int, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="it", file=sys.stderr, disable=not sys.stderr.isatty())
    lock = threading.Lock()

    def tick(n: int) -> None:
        if n:
            with lock:
                bar.update(n)

    return bar, tick


def _parallel(sessions: Sequence[Session], work: Callable[[int, Session], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        futures = [pool.submit(work, i, s) for i, s in enumerate(sessions)]
        return [f.result() for f in futures]


def run_load(
    make_session: Callable[[], Session],
    sessions: int,
    requests: int,
    p: float,
    seed: int,
    stocks: Sequence[str] = DEFAULT_STOCKS,
) -> Report:
    """Run the load, then verify every acknowledged order; returns the report."""
    conns = [make_session() for _ in range(sessions)]
    try:
        bar, tick = _progress(sessions * requests, f"load p={p}")
        start = time.perf_counter()
        with bar:
            recs = _parallel(
                conns,
                lambda i, s: run_session(
                    s, random.Random(f"{seed}:{i}"), stocks, requests, p, tick
                ),
            )
        load_seconds = time.perf_counter() - start
        rec = Recorder()
        for r in recs:
            rec.merge(r)
        mismatches, verify_seconds = verify_all(conns, rec)
    finally:
        for conn in conns:
            conn.close()
    return Report(seed, p, sessions, requests, rec, load_seconds, verify_seconds, mismatches)


def verify_all(conns: Sequence[Session], rec: Recorder) -> tuple[list[Mismatch], float]:
    """Read back every acknowledged order over all sessions; adds get_order samples to rec."""
    acks = sorted(rec.acks, key=lambda a: a.number)
    chunks = [acks[i :: len(conns)] for i in range(len(conns))]
    subs = [Recorder() for _ in conns]
    start = time.perf_counter()
    found = _parallel(conns, lambda i, s: verify_chunk(s, chunks[i], subs[i]))
    seconds = time.perf_counter() - start
    mismatches = find_duplicates(acks)
    for sub, chunk_mismatches in zip(subs, found, strict=True):
        mismatches.extend(chunk_mismatches)
        rec.merge(sub)  # sub has no acks: only get_order samples and outcomes
    return sorted(mismatches, key=lambda m: m.number), seconds


# ---------------------------------------------------------------------------
# Plots (matplotlib, imported only when asked for)
# ---------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histograms(report: Report, path: str) -> None:
    """One latency histogram per request type, side by side, in a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(KINDS), figsize=(5 * len(KINDS), 4), squeeze=False)
    summary = report.summary()
    for ax, kind in zip(axes[0], KINDS, strict=True):
        ms = np.asarray(report.rec.latencies[kind], dtype=float) * 1000.0
        if len(ms):
            ax.hist(ms, bins=50, color="tab:blue", alpha=0.8)
            for q, style in zip(PERCENTILES, ("-", "--", ":"), strict=True):
                value = getattr(summary[kind], f"p{q}_ms")
                ax.axvline(value, color="tab:red", linestyle=style, label=f"p{q} {value:.2f} ms")
            ax.legend()
        ax.set_title(f"{kind} (n={len(ms)})")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("requests")
    fig.suptitle(
        f"bazaar load: p={report.p}, {report.sessions} sessions x {report.requests} requests"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(reports: Sequence[Report], path: str, title: str = "") -> None:
    """p50 latency per request type against the order probability p."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ps = [r.p for r in reports]
    for kind in KINDS:
        values = [r.summary()[kind].p50_ms for r in reports]
        ax.plot(ps, values, marker="o", label=kind)
    ax.set_xlabel("order probability p")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    first = reports[0] if reports else None
    default = "bazaar load: p50 latency vs order probability"
    if first is not None:
        default += f"\n{first.sessions} sessions x {first.requests} iterations, seed {first.seed}"
    ax.set_title(title or default)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_sweep(reports: Sequence[Report]) -> str:
    lines = [f"{'p':>5}" + "".join(f"{k + ' p50':>16}" for k in KINDS)]
    for r in reports:
        s = r.summary()
        lines.append(f"{r.p:>5.2f}" + "".join(f"{s[k].p50_ms:>13.2f} ms" for k in KINDS))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Entry point for the CLI
# ---------------------------------------------------------------------------
def parse_floats(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part.strip()]
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{text!r}: give probabilities between 0 and 1, comma-separated")
    return values


def main(
    url: str,
    sessions: int,
    requests: int,
    p: float,
    seed: int | None = None,
    plot: str | None = None,
    sweep: Sequence[float] | None = None,
    stocks: Sequence[str] = DEFAULT_STOCKS,
    timeout: float = 10.0,
    error_tolerance: float = 0.001,
    out=print,
) -> int:
    """Run one load (or a sweep), print the report(s), write plots; 0 when all is well."""
    seed = secrets.randbelow(2**32) if seed is None else seed
    out(f"bazaar load: {url}, seed {seed}")

    def once(prob: float) -> Report:
        report = run_load(lambda: HttpSession(url, timeout), sessions, requests, prob, seed, stocks)
        out(format_report(report, error_tolerance))
        return report

    reports = [once(prob) for prob in (sweep or [p])]
    if sweep:
        out(format_sweep(reports))
        path = plot or "load-sweep.png"
        plot_sweep(reports, path)
        out(f"sweep plot written to {path}")
    elif plot:
        plot_histograms(reports[0], plot)
        out(f"latency histograms written to {plot}")
    return 0 if all(r.ok(error_tolerance) for r in reports) else 1
