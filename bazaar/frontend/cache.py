"""The front end's lookup cache and the catalog invalidation feed that keeps it honest.

`LookupCache` is a thread-safe LRU of stock name -> cached value (the front end
stores the encoded response body). It never serves data older than an
invalidation it has seen:

- Fills are guarded by a logical clock. `begin()` returns a token before
  the catalog is asked; `fill(name, value, token)` stores the answer only if
  neither that name nor the whole cache was invalidated since. So a lookup
  racing with an invalidation can never put stale data back.
- The cache is *live* only while the catalog's PUB feed is: until the first
  message arrives, and after 3 s without one, nothing is filled or served.

`InvalidationFeed` is the SUB thread (SPEC section 2). It drops one entry per
`invalidate`, and flushes everything on a `seq` gap, `seq` going backwards, a
new catalog `boot` id, or silence. `handle(topic, body, now)` holds all that
logic and does no I/O, so unit tests drive it directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import zmq

from bazaar import security, wire
from bazaar.rpc import harden

log = logging.getLogger(__name__)

SILENCE_FLUSH_SECONDS = 3.0
_MAX_TRACKED_NAMES = 10_000  # invalidation marks kept before a full flush is cheaper


class LookupCache:
    """LRU of `capacity` entries (0 = off) with hit/miss counters and race-free fills."""

    def __init__(self, capacity: int):
        self.capacity = max(0, int(capacity))
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._clock = 0  # rises on every invalidation or flush
        self._flushed_at = 0
        self._invalidated_at: dict[str, int] = {}
        self._live = False
        self.hits = 0
        self.misses = 0
        self.flushes = 0

    # ---- reads and fills ----------------------------------------------
    def get(self, name: str) -> Any | None:
        """The cached value, or None (a miss)."""
        with self._lock:
            value = self._entries.get(name) if self._live else None
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(name)
            self.hits += 1
            return value

    def begin(self) -> int | None:
        """A fill token taken *before* asking the catalog; None when filling is off."""
        if self.capacity == 0:
            return None
        with self._lock:
            return self._clock if self._live else None

    def fill(self, name: str, value: Any, token: int | None) -> bool:
        """Store `value` unless `name` was invalidated (or all flushed) after `token`."""
        if token is None:
            return False
        with self._lock:
            if not self._live or self._flushed_at > token:
                return False
            if self._invalidated_at.get(name, -1) > token:
                return False
            self._entries[name] = value
            self._entries.move_to_end(name)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return True

    # ---- invalidation -------------------------------------------------
    def invalidate(self, name: str) -> None:
        with self._lock:
            self._clock += 1
            self._entries.pop(name, None)
            if len(self._invalidated_at) >= _MAX_TRACKED_NAMES:
                self._flush_locked()
            else:
                self._invalidated_at[name] = self._clock

    def flush(self) -> None:
        with self._lock:
            self._clock += 1
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._entries.clear()
        self._invalidated_at.clear()
        self._flushed_at = self._clock
        self.flushes += 1

    def set_live(self, live: bool) -> None:
        """Turn the cache on (feed healthy) or off (feed silent: flush, then off)."""
        with self._lock:
            if not live:
                self._clock += 1
                self._flush_locked()
            self._live = live

    @property
    def live(self) -> bool:
        return self._live

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "capacity": self.capacity,
                "size": len(self._entries),
                "hits": self.hits,
                "misses": self.misses,
                "live": self._live,
                "flushes": self.flushes,
            }


class FeedState:
    """Sequence tracking for the catalog PUB feed; no sockets, no clock of its own."""

    def __init__(self, cache: LookupCache, silence: float = SILENCE_FLUSH_SECONDS):
        self.cache = cache
        self.silence = silence
        self.boot: Any = None
        self.seq: int | None = None
        self.last_message: float | None = None

    def _reset(self, reason: str) -> None:
        log.info("cache flushed: %s", reason)
        self.cache.flush()

    def handle(self, topic: bytes, body: Any, now: float) -> None:
        """Apply one feed message (`invalidate` or `heartbeat`) received at `now`."""
        if topic not in (b"invalidate", b"heartbeat"):
            return
        seq = body.get("seq") if isinstance(body, dict) else None
        if not wire.is_int(seq):
            # A garbled message may have been an invalidation: assume the worst.
            self._reset(f"malformed {topic.decode()} message")
            return
        boot = body.get("boot")
        self.last_message = now
        if self.seq is None:
            pass  # first message: the cache was off (empty) until now
        elif boot != self.boot:
            self._reset(f"catalog restarted (boot {self.boot!r} -> {boot!r})")
        elif seq < self.seq:
            self._reset(f"seq went backwards ({self.seq} -> {seq})")
        elif topic == b"invalidate" and seq != self.seq + 1:
            self._reset(f"seq gap ({self.seq} -> {seq})")
        elif topic == b"heartbeat" and seq != self.seq:
            self._reset(f"heartbeat seq {seq} after {self.seq}: invalidations were lost")
        self.boot, self.seq = boot, seq
        if topic == b"invalidate" and isinstance(body.get("name"), str):
            self.cache.invalidate(body["name"])
        if not self.cache.live:
            self.cache.set_live(True)

    def tick(self, now: float) -> None:
        """Called periodically: a silent feed turns the cache off (and flushes it)."""
        if self.last_message is not None and now - self.last_message > self.silence:
            log.warning("no catalog heartbeat for %.1fs: cache flushed and off", self.silence)
            self.cache.set_live(False)
            self.last_message = None
            self.seq = None


class InvalidationFeed:
    """A SUB thread on the catalog's PUB endpoint feeding a `FeedState`."""

    def __init__(
        self,
        endpoint: str,
        cache: LookupCache,
        *,
        silence: float = SILENCE_FLUSH_SECONDS,
        keys: security.Keys | None = None,
    ):
        self.endpoint = endpoint
        self.keys = keys  # CurveZMQ to the catalog's PUB (None: plaintext)
        self.state = FeedState(cache, silence)
        self._ctx = zmq.Context.instance()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> InvalidationFeed:
        self._thread = threading.Thread(target=self._loop, name="cache-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        sock = harden(self._ctx.socket(zmq.SUB))
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.setsockopt(zmq.SUBSCRIBE, b"invalidate")
        sock.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
        if self.keys is not None:
            security.secure_client(sock, self.keys, "catalog")
        sock.connect(self.endpoint)
        # A blocking recv with a timeout: one call per message. (poll + a
        # non-blocking drain built a Poller per wake-up and ended every drain
        # on a zmq.Again exception: ~20 % of the front end's Python time
        # under orders, one invalidation per trade.)
        sock.rcvtimeo = 100
        try:
            while not self._stop.is_set():
                try:
                    frames = sock.recv_multipart()
                except zmq.Again:
                    frames = None
                if frames is not None:
                    self._handle(frames)
                self.state.tick(time.monotonic())
        finally:
            sock.close(0)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        try:
            body = wire.unpack(frames[1])
        except Exception:
            body = None  # FeedState flushes on a garbled message
        self.state.handle(frames[0], body, time.monotonic())
