"""Cluster keys and CurveZMQ: who may speak on the internal network (SPEC section 2).

Owns:
- the key files: `init_keys(DIR)` (the `bazaar keys init` command) writes one
  CURVE pair per role with pyzmq's certificate helpers, `DIR/<role>.key` and
  `DIR/<role>.key_secret` (0600), and never overwrites one;
- `load_keys(DIR, role)`: that role's pair plus the public key of every role;
- the ZAP handler: pyzmq's `ThreadAuthenticator`, one per zmq context that
  has server sockets, admitting only the cluster's public keys and naming the
  caller's role as the ZAP User-Id (so a ROUTER reads the role of each
  request from its frames);
- the socket options that turn CURVE on (`secure_server`, `secure_client`).

It never decides what a role may call: `rpc.Server`'s per-method table does.
With no ZAP handler libzmq admits every CURVE client, so a server socket must
be made secure only after `Authenticators.acquire` started one in its context.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

log = logging.getLogger(__name__)

ROLES = ("catalog", "order1", "order2", "order3", "frontend", "client")
RPC_DOMAIN = "bazaar-rpc"  # ROUTER servers: any cluster key, the method table decides
PUB_DOMAIN = "bazaar-pub"  # the catalog's invalidations: the front end only
PUB_SUBSCRIBERS = frozenset({"frontend"})
DENIED_LOG_INTERVAL = 10.0  # seconds between "unknown key" warnings (a flood stays quiet)


class KeysError(Exception):
    """Keys missing, unreadable or inconsistent; the message is one line for humans."""


def replica_role(replica_id: int) -> str:
    return f"order{replica_id}"


def _public_path(directory: Path, role: str) -> Path:
    return directory / f"{role}.key"


def _secret_path(directory: Path, role: str) -> Path:
    return directory / f"{role}.key_secret"


def _write_new(path: Path, content: bytes, mode: int) -> bool:
    """Create `path` with `mode`; False (and nothing written) if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, mode)  # the umask may have taken bits off
    return True


def init_keys(directory: str | os.PathLike, roles: tuple[str, ...] = ROLES) -> list[str]:
    """Make a key pair for every role that has none; returns the roles made.

    Existing keys are never touched, so running it again (every `make run`,
    every `docker compose up`) is a no-op. A public key without its secret
    (or the reverse) is an error: replacing half a pair would lock that role
    out of a running cluster.
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    made: list[str] = []
    for role in roles:
        public, secret = _public_path(directory, role), _secret_path(directory, role)
        if public.exists() and secret.exists():
            continue
        if public.exists() or secret.exists():
            half = public if public.exists() else secret
            raise KeysError(f"{half} exists without its other half; restore it or remove it")
        import tempfile  # here: it pulls in random and shutil (~0.7 MB) every service

        with tempfile.TemporaryDirectory() as tmp:
            pub_file, sec_file = zmq.auth.create_certificates(tmp, role)
            pub_bytes, sec_bytes = Path(pub_file).read_bytes(), Path(sec_file).read_bytes()
        # The secret first: a public key on disk always has its secret next to it.
        if _write_new(secret, sec_bytes, 0o600):
            _write_new(public, pub_bytes, 0o644)
            made.append(role)
    return made


@dataclass(frozen=True)
class Keys:
    """One role's CURVE pair and the public key (z85) of every role of the cluster."""

    role: str
    public: bytes
    secret: bytes
    cluster: Mapping[str, bytes]

    def public_of(self, role: str) -> bytes:
        try:
            return self.cluster[role]
        except KeyError:
            raise KeysError(f"no public key for {role!r} in the cluster's keys") from None

    def __repr__(self) -> str:  # never print a secret
        return f"Keys(role={self.role!r}, roles={sorted(self.cluster)})"


def _load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeysError(f"cannot read {path}: {exc}") from None
    return public


def load_keys(directory: str | os.PathLike, role: str) -> Keys:
    """`role`'s pair from `directory` and every public key found there."""
    directory = Path(directory)
    if role not in ROLES:
        raise KeysError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    secret_file = _secret_path(directory, role)
    if not secret_file.is_file():
        raise KeysError(
            f"no key for {role} in {directory} (make them with `bazaar keys init {directory}`,"
            " or set BAZAAR_INSECURE=1 to run without CurveZMQ)"
        )
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise KeysError(f"cannot read {secret_file}: {exc}") from None
    if not secret:
        raise KeysError(f"{secret_file} holds no secret key")
    if secret_file.stat().st_mode & 0o077:
        log.warning("%s is readable by others than its owner: chmod 600 it", secret_file)
    cluster = {
        r: _load_public(_public_path(directory, r))
        for r in ROLES
        if _public_path(directory, r).is_file()
    }
    if cluster.get(role) != public:
        raise KeysError(f"{_public_path(directory, role)} does not match {secret_file}")
    return Keys(role, public, secret, cluster)


# ---- sockets --------------------------------------------------------------
def secure_server(sock: zmq.Socket, keys: Keys, domain: str = RPC_DOMAIN) -> None:
    """CURVE server options; before bind, and only in a context with an authenticator."""
    sock.curve_server = True
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
    sock.zap_domain = domain.encode()


def secure_client(sock: zmq.Socket, keys: Keys, server_role: str) -> None:
    """CURVE client options for talking to `server_role`; before connect."""
    sock.curve_serverkey = keys.public_of(server_role)
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret


# ---- the ZAP handler --------------------------------------------------------
class ClusterPolicy:
    """Admits the cluster's public keys; the ZAP User-Id it hands back is the role.

    Mixed into pyzmq's Authenticator, run on a plain thread, by
    `authenticator_class()`, which imports it only when a server needs one:
    `bazaar call` and `bazaar keys` (healthchecks, scripts) stay light.
    """

    def __init__(self, context: zmq.Context):
        super().__init__(context, log=logging.getLogger("zmq.auth"))
        self.roles_by_key: dict[bytes, str] = {}
        self.denied = 0
        self._last_warning = float("-inf")

    def add_cluster(self, keys: Keys) -> None:
        for role, public in keys.cluster.items():
            self.roles_by_key.setdefault(public, role)

    def start(self) -> None:
        super().start()
        for domain in (RPC_DOMAIN, PUB_DOMAIN):
            self.configure_curve_callback(domain, self)

    # zmq.auth's credentials-provider protocol: (domain, z85 public key) -> allowed
    def callback(self, domain: str, key: bytes) -> bool:
        role = self.roles_by_key.get(key)
        allowed = role is not None and (domain != PUB_DOMAIN or role in PUB_SUBSCRIBERS)
        if not allowed:
            self.denied += 1
            now = time.monotonic()
            if now - self._last_warning >= DENIED_LOG_INTERVAL:
                self._last_warning = now
                who = f"role {role}" if role else "a key not in the cluster"
                log.warning(
                    "refused a CurveZMQ connection from %s on %s (%d refused so far)",
                    who,
                    domain,
                    self.denied,
                )
        return allowed

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.roles_by_key.get(z85.encode(client_public_key), "")


def _run_sync(coroutine) -> None:
    """Run a coroutine that never suspends (pyzmq's ZAP handling with our plain callback)."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("the ZAP handler suspended: it needs an event loop")


@functools.cache
def authenticator_class() -> type:
    """pyzmq's Authenticator on a plain thread, with our ClusterPolicy.

    Not pyzmq's ThreadAuthenticator: it runs an asyncio loop, and importing
    asyncio (and with it ssl and OpenSSL) costs every service ~5 MB of RSS for
    a loop that only ever waits on two sockets. Our credentials callback is
    synchronous, so `handle_zap_message` completes without suspending.
    """
    from zmq.auth.base import Authenticator

    class ThreadedAuthenticator(Authenticator):
        _pipe: zmq.Socket | None = None
        _thread: threading.Thread | None = None

        def start(self) -> None:
            super().start()  # binds the ZAP socket
            endpoint = f"inproc://zap-pipe-{id(self)}"
            self._pipe = self.context.socket(zmq.PAIR)
            self._pipe.setsockopt(zmq.LINGER, 1)
            self._pipe.bind(endpoint)
            thread_pipe = self.context.socket(zmq.PAIR)
            thread_pipe.setsockopt(zmq.LINGER, 1)
            thread_pipe.connect(endpoint)
            self._thread = threading.Thread(
                target=self._run, args=(thread_pipe,), name="zap-handler", daemon=True
            )
            self._thread.start()

        def _run(self, pipe: zmq.Socket) -> None:
            poller = zmq.Poller()
            poller.register(pipe, zmq.POLLIN)
            poller.register(self.zap_socket, zmq.POLLIN)
            try:
                while True:
                    events = dict(poller.poll())
                    if pipe in events:
                        pipe.recv()  # TERMINATE
                        return
                    if self.zap_socket in events:
                        msg = self.zap_socket.recv_multipart()
                        try:
                            _run_sync(self.handle_zap_message(msg))
                        except Exception:  # one bad request never ends the handler
                            log.exception("ZAP request failed")
            finally:
                pipe.close()

        def stop(self) -> None:
            if self._pipe is not None:
                self._pipe.send(b"TERMINATE")
                if self._thread is not None and self._thread.is_alive():
                    self._thread.join()
                self._thread = None
                self._pipe.close()
                self._pipe = None
            super().stop()

    return type("ClusterAuthenticator", (ClusterPolicy, ThreadedAuthenticator), {})


class _Authenticators:
    """One ClusterAuthenticator per context, shared by its server sockets (refcounted).

    libzmq allows one ZAP handler per context; two servers in one context (tests
    do this) share it, and the last one to go stops it, before the context is
    destroyed (a ZAP socket closed under its thread would crash it).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._by_ctx: dict[int, tuple[ClusterPolicy, int]] = {}

    def acquire(self, ctx: zmq.Context, keys: Keys) -> None:
        with self._lock:
            auth, count = self._by_ctx.get(id(ctx), (None, 0))
            if auth is None:
                auth = self._start(ctx)
            auth.add_cluster(keys)
            self._by_ctx[id(ctx)] = (auth, count + 1)

    @staticmethod
    def _start(ctx: zmq.Context) -> ClusterPolicy:
        # A handler stopped a moment ago may still hold the ZAP address: libzmq
        # unbinds an inproc endpoint only once its closed socket is reaped.
        deadline = time.monotonic() + 2.0
        while True:
            auth = authenticator_class()(ctx)
            try:
                auth.start()
                return auth
            except zmq.ZMQError as exc:
                auth.stop()
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def release(self, ctx: zmq.Context) -> None:
        with self._lock:
            auth, count = self._by_ctx.get(id(ctx), (None, 0))
            if auth is None:
                return
            if count > 1:
                self._by_ctx[id(ctx)] = (auth, count - 1)
                return
            del self._by_ctx[id(ctx)]
        auth.stop()

    def get(self, ctx: zmq.Context) -> ClusterPolicy | None:
        with self._lock:
            entry = self._by_ctx.get(id(ctx))
        return entry[0] if entry else None


authenticators = _Authenticators()


# ---- services -----------------------------------------------------------------
def for_service(keys_dir: str | os.PathLike, insecure: bool, role: str) -> Keys | None:
    """The keys a service runs with, or None in insecure mode (logged as a warning).

    Raises KeysError (one line) when they are missing and insecure mode is off.
    """
    if insecure:
        log.warning(
            "BAZAAR_INSECURE=1: %s runs WITHOUT CurveZMQ; anyone who reaches its ports"
            " can call every method",
            role,
        )
        return None
    return load_keys(keys_dir, role)
