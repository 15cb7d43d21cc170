"""RPC benchmark: our Client -> Server `ping` beside a raw pyzmq DEALER/ROUTER echo.

Both servers run in their own process (so client and server do not share a
GIL) on 127.0.0.1, and both carry the same request payload. Prints one table:
round-trip latency p50/p99 and throughput for one synchronous caller, 16
threads sharing one client, and a pipelined caller (64 requests in flight).

    .venv/bin/python bench/rpc.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time

import numpy as np
import zmq

from bazaar import wire
from bazaar.rpc import Client, Server

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


def our_server(port_queue: mp.Queue, stop: mp.Event) -> None:
    server = Server("tcp://127.0.0.1:0", service="bench")
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


def start(target) -> tuple[str, mp.Event, mp.Process]:
    queue, stop = mp.Queue(), mp.Event()
    proc = mp.Process(target=target, args=(queue, stop), daemon=True)
    proc.start()
    return f"tcp://127.0.0.1:{queue.get(timeout=10)}", stop, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    n = parser.parse_args().calls

    raw_ep, raw_stop, raw_proc = start(raw_echo_server)
    our_ep, our_stop, our_proc = start(our_server)
    raw, ours = RawClient(raw_ep), Client(our_ep, timeout=5)

    def our_call():
        ours.call("ping")

    def our_pipelined(k):
        ours.call_many("ping", [{}] * k, window=WINDOW)

    # Interleave raw and ours in rounds, so background noise on this shared
    # machine hits both sides alike; report the median round.
    rounds, chunk = 5, max(n // 5, 1)
    samples: dict[str, list] = {k: [] for k in ("raw_lat", "our_lat", "raw_sync", "our_sync")}
    samples.update({k: [] for k in ("raw_thr", "our_thr", "raw_pipe", "our_pipe")})
    try:
        for _ in range(rounds):
            lat, rate = measure_sequential(raw.call, chunk)
            samples["raw_lat"].append(lat)
            samples["raw_sync"].append(rate)
            lat, rate = measure_sequential(our_call, chunk)
            samples["our_lat"].append(lat)
            samples["our_sync"].append(rate)
            samples["raw_thr"].append(measure_threads(raw.call, chunk))
            samples["our_thr"].append(measure_threads(our_call, chunk))
            samples["raw_pipe"].append(measure_pipelined(raw.pipelined, chunk))
            samples["our_pipe"].append(measure_pipelined(our_pipelined, chunk))
    finally:
        raw.close()
        ours.close()
        for stop, proc in ((raw_stop, raw_proc), (our_stop, our_proc)):
            stop.set()
            proc.join(5)

    def us(key, q):
        return float(np.median([np.percentile(lat, q) for lat in samples[key]])) * 1e6

    def med(key):
        return float(np.median(samples[key]))

    raw_sync, our_sync = med("raw_sync"), med("our_sync")
    raw_thr, our_thr, raw_pipe, our_pipe = (
        med(k) for k in ("raw_thr", "our_thr", "raw_pipe", "our_pipe")
    )

    rows = [
        ("round trip p50 (us)", us("raw_lat", 50), us("our_lat", 50), "ours <= 1.3x raw"),
        ("round trip p99 (us)", us("raw_lat", 99), us("our_lat", 99), ""),
        ("1 sync caller (calls/s)", raw_sync, our_sync, ">= 5,000"),
        (f"{THREADS} threads, 1 client (calls/s)", raw_thr, our_thr, ""),
        (f"pipelined, {WINDOW} in flight (calls/s)", raw_pipe, our_pipe, ">= 30,000"),
    ]
    print(
        f"RPC benchmark: {n} calls per row in {rounds} interleaved rounds (median), payload {len(PAYLOAD)} bytes, servers in own process"
    )
    print(f"{'measure':<36}{'raw pyzmq':>12}{'bazaar.rpc':>12}{'ratio':>8}  goal")
    for name, raw_v, our_v, goal in rows:
        print(f"{name:<36}{raw_v:>12,.0f}{our_v:>12,.0f}{our_v / raw_v:>8.2f}  {goal}")


if __name__ == "__main__":
    main()
