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

import msgpack
import zmq

CALLS = (
    ("fence", {"epoch": 2**62}),
    ("trade", {"key": "intruder", "name": "GameStart", "type": "buy", "quantity": 1, "epoch": 1}),
    ("set_leader", {"leader": 1, "epoch": 2**62}),
    ("replicate", {"epoch": 2**62, "leader": 1, "records": []}),
    ("ping", {}),
)


def attempt(ctx: zmq.Context, endpoint: str, mode: str, method: str, args: dict) -> bool:
    """True if the server answered."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if mode != "plaintext":
        public, secret = zmq.curve_keypair()
        server_public, _ = zmq.curve_keypair()  # the real one is not ours to read
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = server_public
    try:
        sock.connect(endpoint)
        request = {"v": 1, "id": 1, "method": method, "args": args}
        sock.send_multipart([b"", msgpack.packb(request)])
        return bool(sock.poll(700))
    finally:
        sock.close(0)


def overhears(ctx: zmq.Context, endpoint: str, mode: str) -> bool:
    """True if a SUB got any message within two heartbeat intervals."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    if mode != "plaintext":
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey, _ = zmq.curve_keypair()
    try:
        sock.connect(endpoint)
        return bool(sock.poll(2500))
    finally:
        sock.close(0)


def main(args: list[str]) -> int:
    pubs = [args[i + 1] for i, a in enumerate(args) if a == "--pub"]
    hosts = [a for i, a in enumerate(args) if a != "--pub" and (i == 0 or args[i - 1] != "--pub")]
    ctx = zmq.Context()
    tried, answered = 0, []
    for host in pubs:
        for mode in ("plaintext", "curve-own-keys"):
            tried += 1
            if overhears(ctx, f"tcp://{host}", mode):
                answered.append(f"{host} {mode} subscribe")
    for host in hosts:
        endpoint = f"tcp://{host}"
        for mode in ("plaintext", "curve-own-keys"):
            for method, call_args in CALLS:
                tried += 1
                if attempt(ctx, endpoint, mode, method, call_args):
                    answered.append(f"{host} {mode} {method}")
    ctx.term()
    print(json.dumps({"tried": tried, "answered": answered}))
    return 1 if answered else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
