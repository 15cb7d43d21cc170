"""ZeroMQ RPC: `Server` (one ROUTER socket) and `Client` (a pool of DEALERs).

The byte format lives in `bazaar.wire`; this package only moves frames.
Its parts:
- `sockets` — every socket option (LINGER 0, bounded HWMs, MAXMSGSIZE,
  liveness of connecting sockets) and the frame helpers of the hot paths;
- `methods` — a registered method, running it (`execute`), and what a
  running handler may ask: `time_left`, `caller`;
- `server` — `Server`: the ROUTER's I/O thread and its dispatch; `workers`
  its worker pool; `backlog` the replies held for a peer that does not read;
- `client` — `Client` (no socket reused after a timeout), `Pipeline`
  (one-way streams), `call` (one-shot).

Security (SPEC section 2): given `keys`, the ROUTER is a CurveZMQ server in a
context whose ZAP handler (`bazaar.security`) admits only the cluster's keys
and names the caller's role; each method then admits only the roles it was
registered with, anything else is PERMISSION_DENIED. Without keys (insecure
mode) every caller may call everything. Input limits: a request of more than
MAX_FRAMES frames is refused without keeping its frames, queues are HWM
messages deep per connection and frames are at most MAXMSGSIZE bytes, and no
reply is larger than wire.MAX_MESSAGE_BYTES, so a peer that never reads its
replies holds a bounded amount of this process's memory per connection (see
REPLY_HWM), and only a holder of a cluster key gets a connection at all.
"""

from bazaar.rpc.backlog import BACKLOG_BYTES, PEER_BACKLOG_BYTES
from bazaar.rpc.client import (
    CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    HANDSHAKE_GRACE,
    LIVENESS_SLICE,
    Client,
    Pipeline,
    call,
)
from bazaar.rpc.methods import Later, caller, time_left
from bazaar.rpc.server import MAX_FRAMES, REPLY_HWM, Server
from bazaar.rpc.sockets import (
    CONNECT_TIMEOUT_MS,
    HEARTBEAT_IVL_MS,
    HEARTBEAT_TIMEOUT_MS,
    HWM,
    PIPELINE_HWM,
    harden,
    watch_peer,
)

__all__ = [
    "BACKLOG_BYTES",
    "CONNECT_TIMEOUT",
    "CONNECT_TIMEOUT_MS",
    "DEFAULT_TIMEOUT",
    "HANDSHAKE_GRACE",
    "HEARTBEAT_IVL_MS",
    "HEARTBEAT_TIMEOUT_MS",
    "HWM",
    "LIVENESS_SLICE",
    "Later",
    "MAX_FRAMES",
    "PEER_BACKLOG_BYTES",
    "PIPELINE_HWM",
    "REPLY_HWM",
    "Client",
    "Pipeline",
    "Server",
    "call",
    "caller",
    "harden",
    "time_left",
    "watch_peer",
]
