"""RPC benchmark: our Client -> Server `ping`, plaintext and CurveZMQ, beside a raw pyzmq echo.

Every server runs in its own process (so client and server do not share a
GIL) on 127.0.0.1, and all carry the same request payload. Prints one table:
round-trip latency p50/p99 and throughput for one synchronous caller, 16
threads sharing one client, and a pipelined caller (64 requests in flight),
for raw pyzmq, bazaar.rpc in plaintext (BAZAAR_INSECURE) and bazaar.rpc with
CurveZMQ and roles (the default), and the cost of security (CURVE / plain).

    .venv/bin/python bench/rpc.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

# Run as a script, bench/ heads sys.path, and bench/http.py would shadow the
# standard library's http (which prometheus_client imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from bazaar import security, wire  # noqa: E402
from bazaar.rpc import Client, Server  # noqa: E402

PAYLOAD = wire.encode_request(1, "ping", {})
THREADS = 16
WINDOW = 64


def raw_echo_server(port_queue: mp.Queue, stop: mp.Event) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    port_queue.put(port)
    reply = wire.encode_result(1, {"service": "raw", "id": None, "version": "0"})
    sock.setsockopt(zmq.RCVTIMEO, 50)  # blocking recv: the tightest loop pyzmq allows
    while not stop.is_set():
        try:
            frames = sock.recv_multipart()
        except zmq.Again:
            continue
        sock.send_multipart([*frames[:-1], reply])
    sock.close()
    ctx.term()


def our_server(port_queue: mp.Queue, stop: mp.Event, keys_dir: str | None = None) -> None:
    keys = security.load_keys(keys_dir, "catalog") if keys_dir else None
    server = Server("tcp://127.0.0.1:0", service="bench", keys=keys, info_roles={"client"})
    port_queue.put(server.port)
    server.start()
    stop.wait()
    server.stop()


class RawClient:
    """The floor: a DEALER with no envelope handling beyond send/recv."""

    def __init__(self, endpoint: str):
        self._local = threading.local()
        self.endpoint = endpoint
        self.sockets: list[zmq.Socket] = []

    def _sock(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self._local.sock = sock
            self.sockets.append(sock)
        return sock

    def call(self) -> None:
        sock = self._sock()
        sock.send_multipart([b"", PAYLOAD])
        sock.recv_multipart()

    def pipelined(self, n: int) -> None:
        sock = self._sock()
        sent = received = 0
        while received < n:
            while sent < n and sent - received < WINDOW:
                sock.send_multipart([b"", PAYLOAD])
                sent += 1
            sock.recv_multipart()
            received += 1

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)


def measure_sequential(call, n: int) -> tuple[np.ndarray, float]:
    for _ in range(200):  # warm up connections and caches
        call()
    lat = np.empty(n)
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        call()
        lat[i] = time.perf_counter() - t0
    return lat, n / (time.perf_counter() - start)


def measure_threads(call, n: int) -> float:
    per_thread = n // THREADS
    barrier = threading.Barrier(THREADS + 1)

    def worker():
        barrier.wait()
        for _ in range(per_thread):
            call()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return per_thread * THREADS / (time.perf_counter() - start)


def measure_pipelined(run, n: int) -> float:
    start = time.perf_counter()
    run(n)
    return n / (time.perf_counter() - start)


def start(target, *extra) -> tuple[str, mp.Event, mp.Process]:
    queue, stop = mp.Queue(), mp.Event()
    proc = mp.Process(target=target, args=(queue, stop, *extra), daemon=True)
    proc.start()
    return f"tcp://127.0.0.1:{queue.get(timeout=10)}", stop, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    n = parser.parse_args().calls

    keys_dir = tempfile.mkdtemp(prefix="bench-keys-")
    security.init_keys(keys_dir)
    client_keys = security.load_keys(keys_dir, "client")
    raw_ep, raw_stop, raw_proc = start(raw_echo_server)
    our_ep, our_stop, our_proc = start(our_server)
    sec_ep, sec_stop, sec_proc = start(our_server, keys_dir)
    raw = RawClient(raw_ep)
    ours = Client(our_ep, timeout=5)
    secure = Client(sec_ep, timeout=5, keys=client_keys, server_role="catalog")
    sides = {
        "raw": (raw.call, raw.pipelined),
        "our": (
            lambda: ours.call("ping"),
            lambda k: ours.call_many("ping", [{}] * k, window=WINDOW),
        ),
        "sec": (
            lambda: secure.call("ping"),
            lambda k: secure.call_many("ping", [{}] * k, window=WINDOW),
        ),
    }

    # Interleave the three in rounds, so background noise on this shared
    # machine hits all alike; report the median round.
    rounds, chunk = 5, max(n // 5, 1)
    samples: dict[str, list] = {
        f"{side}_{m}": [] for side in sides for m in ("lat", "sync", "thr", "pipe")
    }
    try:
        for _ in range(rounds):
            for side, (call, _) in sides.items():
                lat, rate = measure_sequential(call, chunk)
                samples[f"{side}_lat"].append(lat)
                samples[f"{side}_sync"].append(rate)
            for side, (call, _) in sides.items():
                samples[f"{side}_thr"].append(measure_threads(call, chunk))
            for side, (_, pipelined) in sides.items():
                samples[f"{side}_pipe"].append(measure_pipelined(pipelined, chunk))
    finally:
        raw.close()
        ours.close()
        secure.close()
        for stop, proc in ((raw_stop, raw_proc), (our_stop, our_proc), (sec_stop, sec_proc)):
            stop.set()
            proc.join(5)

    def us(key, q):
        return float(np.median([np.percentile(lat, q) for lat in samples[key]])) * 1e6

    def med(key):
        return float(np.median(samples[key]))

    rows = [
        ("round trip p50 (us)", *(us(f"{s}_lat", 50) for s in sides), "CURVE <= 1.15x plain"),
        ("round trip p99 (us)", *(us(f"{s}_lat", 99) for s in sides), ""),
        ("1 sync caller (calls/s)", *(med(f"{s}_sync") for s in sides), ">= 5,000"),
        (f"{THREADS} threads, 1 client (calls/s)", *(med(f"{s}_thr") for s in sides), ""),
        (f"pipelined, {WINDOW} in flight (calls/s)", *(med(f"{s}_pipe") for s in sides), ""),
    ]
    print(
        f"RPC benchmark: {n} calls per row in {rounds} interleaved rounds (median), "
        f"payload {len(PAYLOAD)} bytes, servers in own process"
    )
    header = f"{'measure':<36}{'raw pyzmq':>11}{'plain':>9}{'CURVE':>9}{'plain/raw':>11}"
    print(f"{header}{'CURVE/plain':>13}  goal")
    for name, raw_v, our_v, sec_v, goal in rows:
        print(
            f"{name:<36}{raw_v:>11,.0f}{our_v:>9,.0f}{sec_v:>9,.0f}"
            f"{our_v / raw_v:>11.2f}{sec_v / our_v:>13.2f}  {goal}"
        )


if __name__ == "__main__":
    main()
