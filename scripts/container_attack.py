"""An intruder on the compose network: every write the cluster has, without its keys.

Run by scripts/container-test.sh in a container of the image (pyzmq, msgpack)
on the stack's network, with no keys volume. For each internal endpoint it
sends the most damaging well-formed calls (fence at epoch 2^62, a trade,
set_leader and replicate with huge epochs) two ways: plaintext, and
CurveZMQ with a key pair of its own. It also subscribes to the catalog's
invalidations both ways. Every attempt must get no reply and no message at
all. Prints one JSON line; exit status 1 if anything answered.

    python3 container_attack.py --pub catalog:5556 catalog:5555 order1:5561 order2:5562 order3:5563
"""

from __future__ import annotations

import json
import sys
import time

import msgpack
import zmq

CALLS = (
    ("fence", {"epoch": 2**62}),
    ("trade", {"key": "intruder", "name": "GameStart", "type": "buy", "quantity": 1, "epoch": 1}),
    ("set_leader", {"leader": 1, "epoch": 2**62}),
    ("replicate", {"epoch": 2**62, "leader": 1, "records": []}),
    ("ping", {}),
)


# Every attempt is made at once and all are watched for WAIT_MS together: one
# wait for the lot (two catalog heartbeat intervals, so a SUB that could read
# would have a message), not one per attempt.
WAIT_MS = 2500


def own_curve(sock: zmq.Socket) -> None:
    """CurveZMQ with a key pair of its own, and a guessed server key (the real one is not ours)."""
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.curve_serverkey, _ = zmq.curve_keypair()


def attempt(ctx: zmq.Context, endpoint: str, mode: str, method: str, args: dict) -> zmq.Socket:
    """A DEALER that has sent one call; it must never get a reply."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if mode != "plaintext":
        own_curve(sock)
    sock.connect(endpoint)
    request = {"v": 1, "id": 1, "method": method, "args": args}
    sock.send_multipart([b"", msgpack.packb(request)])
    return sock


def subscriber(ctx: zmq.Context, endpoint: str, mode: str) -> zmq.Socket:
    """A SUB to every topic; it must never get a message."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if mode != "plaintext":
        own_curve(sock)
    sock.connect(endpoint)
    return sock


def main(args: list[str]) -> int:
    pubs = [args[i + 1] for i, a in enumerate(args) if a == "--pub"]
    hosts = [a for i, a in enumerate(args) if a != "--pub" and (i == 0 or args[i - 1] != "--pub")]
    ctx = zmq.Context()
    socks: dict[zmq.Socket, str] = {}
    for host in pubs:
        for mode in ("plaintext", "curve-own-keys"):
            socks[subscriber(ctx, f"tcp://{host}", mode)] = f"{host} {mode} subscribe"
    for host in hosts:
        for mode in ("plaintext", "curve-own-keys"):
            for method, call_args in CALLS:
                socks[attempt(ctx, f"tcp://{host}", mode, method, call_args)] = (
                    f"{host} {mode} {method}"
                )
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    answered = set()
    deadline = time.monotonic() + WAIT_MS / 1000
    while (left := deadline - time.monotonic()) > 0:
        for sock, _ in poller.poll(left * 1000):
            answered.add(socks[sock])
            poller.unregister(sock)
    for sock in socks:
        sock.close(0)
    ctx.term()
    print(json.dumps({"tried": len(socks), "answered": sorted(answered)}))
    return 1 if answered else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
