"""Socket options and frame moving shared by the RPC server and clients.

Owns every socket option of the RPC layer, so socket hygiene lives in one
place: LINGER 0, bounded HWMs, MAXMSGSIZE (`harden`), liveness of a
connecting socket (`watch_peer`), and the non-blocking frame helpers the hot
paths use instead of pyzmq's slower generic ones.
"""

from __future__ import annotations

import zmq

from bazaar import wire

# Messages queued per connection and direction. A caller waits for its replies
# (or pipelines a window of at most 64), so a deeper queue only ever fills for
# a peer that does not read; see the module docstring for the memory bound.
HWM = 128
PIPELINE_HWM = 1000  # requests a Pipeline may queue to its peer (its own messages)
# Plain ints: pyzmq's enum flags cost a few microseconds per frame on hot paths.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_RCVTIMEO = int(zmq.RCVTIMEO)


def readable(sock: zmq.Socket) -> bool:
    """A message is waiting (cheaper than a NOBLOCK recv that raises Again)."""
    return bool(sock.getsockopt(_EVENTS) & _POLLIN)


def recv_frames(sock: zmq.Socket, flags: int = _NOBLOCK) -> list[bytes]:
    """recv_multipart(flags) via Frame.more: one getsockopt fewer per frame."""
    frame = sock.recv(flags, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """send_multipart without per-frame enum arithmetic; raises zmq.Again if full."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, _NOBLOCK if i == last else _MORE_NOBLOCK)


def harden(sock: zmq.Socket, hwm: int = HWM) -> zmq.Socket:
    """Options every socket of ours gets: never block on close, bounded queues."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, wire.SOCKET_MAX_MESSAGE_BYTES)
    return sock


HEARTBEAT_IVL_MS = 500  # a PING on every connection this often...
HEARTBEAT_TIMEOUT_MS = 2000  # ...and a connection silent this long is dropped
CONNECT_TIMEOUT_MS = 250  # a TCP connect that hangs (a vanished host) is retried afresh
RECONNECT_IVL_MS = 50  # the first retry of a lost connection...
RECONNECT_IVL_MAX_MS = 100  # ...and the longest pause between retries


def watch_peer(sock: zmq.Socket) -> zmq.Socket:
    """Options of a connecting socket that must notice a vanished peer by itself.

    A peer that dies cleanly resets its connections, and `ZMQ_IMMEDIATE`
    makes that visible at once (no POLLOUT). A peer that vanishes without a
    word (a partition, a paused process, a container whose address went
    away) leaves the TCP connection hanging: zmq heartbeats drop it after
    HEARTBEAT_TIMEOUT_MS, and the connect timeout keeps reconnection from
    waiting out the kernel's minutes of SYN retries, so the new connection
    is up as soon as the peer is reachable again: a fresh SYN goes out at
    least every CONNECT_TIMEOUT_MS + RECONNECT_IVL_MAX_MS (0.35 s), so
    orders resume well within SPEC's 1 s of a partition healing (with 1 s
    and 0.5 s here they resumed 1.1-1.4 s after the heal; a connect on a
    LAN takes well under a millisecond, so retrying it sooner costs
    nothing).
    """
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    return sock
