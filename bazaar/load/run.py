"""A whole load run: N sessions in parallel, then every acknowledged order read back."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bazaar.load.report import Report
from bazaar.load.session import DEFAULT_STOCKS, Recorder, Session, run_session
from bazaar.load.verify import Mismatch, find_duplicates, verify_chunk


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
