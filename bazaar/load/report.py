"""The report of a load run: percentiles, tables, the verdict, and the plots.

numpy (percentiles) and matplotlib (plots) come with the `load` extra; each is
imported only by the function that needs it, so importing this module does not
pull them in.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bazaar.load.session import EXPECTED, KINDS, Recorder
from bazaar.load.verify import Mismatch

PERCENTILES = (50, 95, 99)


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
    import numpy as np

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
# Plots (matplotlib, imported only when asked for)
# ---------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histograms(report: Report, path: str) -> None:
    """One latency histogram per request type, side by side, in a PNG."""
    import numpy as np

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
