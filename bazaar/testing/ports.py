"""Free TCP ports on 127.0.0.1 for test and benchmark services, never the same one twice."""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

_PORTS_GIVEN: set[int] = set()
_PORT_PICKER = random.Random(os.getpid() ^ time.monotonic_ns())


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on, never handed out twice in a run.

    Asking the kernel for port 0 is not enough: it may hand the same number to
    two callers in a row (CI once gave the catalog's PUB port to replica 2 as
    well), and any outgoing connection can take a number from its ephemeral
    range between our check and the service's bind. So the port is drawn from
    below that range and remembered.
    """
    low, _high = _ephemeral_range()
    first = 10000 if low > 12000 else 1024
    for _ in range(2000):
        port = _PORT_PICKER.randrange(first, low) if low > first else _kernel_port()
        if port in _PORTS_GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # zmq listens with SO_REUSEADDR, so a port in TIME_WAIT is usable for it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
