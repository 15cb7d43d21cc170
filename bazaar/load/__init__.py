"""The load client behind `bazaar load` (SPEC section 5).

N sessions run as threads, each with its own keep-alive HTTP connection (a
urllib3 pool of size one). Each session does M iterations: look up a random
stock and, with probability P, buy or sell a small quantity of it. Every
request's latency is recorded per request type (`lookup`, `order`,
`get_order`) together with its outcome. At the end every acknowledged order is
read back with `GET /orders/<n>` and compared (same name, type, quantity; no
transaction number handed out twice).

The parts, small and pure where they can be:
- `session`: the HTTP session, the recorder, one session's iterations;
- `verify`: `check_order` / `find_duplicates` and reading orders back;
- `report`: `summarize` (numpy percentiles), the text report, the plots
  (numpy and matplotlib, from the `load` extra, imported only when used);
- `run`: `run_load`, which takes a session factory so tests can drive it
  against a fake bazaar.
`main` (here) is what the CLI calls; it returns the process exit code. The
names tests and the CLI use are importable from `bazaar.load` itself.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from bazaar.load.report import (
    KindSummary,
    Report,
    format_report,
    format_sweep,
    format_table,
    plot_histograms,
    plot_sweep,
    summarize,
)
from bazaar.load.run import run_load, verify_all
from bazaar.load.session import (
    DEFAULT_STOCKS,
    KINDS,
    Ack,
    HttpSession,
    Recorder,
    Reply,
    Session,
    TransportError,
    classify,
    do_lookup,
    do_order,
    run_session,
)
from bazaar.load.verify import Mismatch, check_order, find_duplicates, verify_chunk

__all__ = [
    "DEFAULT_STOCKS",
    "KINDS",
    "Ack",
    "HttpSession",
    "KindSummary",
    "Mismatch",
    "Recorder",
    "Reply",
    "Report",
    "Session",
    "TransportError",
    "check_order",
    "classify",
    "do_lookup",
    "do_order",
    "find_duplicates",
    "format_report",
    "format_table",
    "main",
    "parse_floats",
    "plot_histograms",
    "plot_sweep",
    "run_load",
    "run_session",
    "summarize",
    "verify_all",
    "verify_chunk",
]


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
