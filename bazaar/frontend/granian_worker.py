"""granian embedded in the front end: all that this project knows of granian.

The front end runs granian's WSGI worker as a thread of its own process, so
`serve(app, host, port, stop)` works from any thread, serves an app built
before it starts (zmq sockets, threads) and stops on an event. None of
granian's supported entry points does that (docs/performance.md, "granian
contained"): `Granian(...).serve()` forks a worker process and owns the main
thread's signals, `MTServer.serve()` needs a free-threaded Python, and the
embeddable `granian.server.embed.Server` speaks ASGI/RSGI, not WSGI.

So `serve` drives granian's multi-thread server through these internals of
the version pinned exactly in pyproject.toml (GRANIAN_VERSION):
- `MTServer(...)` and its `backlog` and `_shd` (the bound listener) attributes;
- `granian.net.SocketSpec(host, port, backlog).build()`, a handle with `get_fd()`;
- `MTServer._spawn_worker(idx=, target=, callback_loader=)`, which packs the
  server's settings into the 21 positional arguments of
- `MTServer._spawn_wsgi_worker`, the WSGI worker's body (WSGI_WORKER_ARGS);
- the returned worker's `inner` thread, `terminate()` and `join()`.

`probe()` checks what can be checked without building a server (imports,
methods, signatures); `serve()` checks the built server's attributes before
it binds and raises `Moved`. Either way the caller (`bazaar.frontend.server`)
falls back to waitress, with a log line naming what moved.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

GRANIAN_VERSION = "2.8.9"  # the version pyproject.toml pins and probe() was written against
# One arena, no thread caches, freed pages returned after 1 s: ~2-3 MB less RSS
# under load (the five services share a 150 MB budget) at no measurable cost.
LISTEN_TIMEOUT = 10.0  # seconds for the worker thread to listen (a loaded machine)
JEMALLOC_CONF = "narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0"
SPAWN_WORKER_ARGS = ("self", "idx", "target", "callback_loader")
WSGI_WORKER_ARGS = (
    "worker_id",
    "shutdown_event",
    "callback",
    "sock",
    "loop",
    "runtime_mode",
    "runtime_threads",
    "runtime_blocking_threads",
    "blocking_threads",
    "blocking_threads_idle_timeout",
    "backpressure",
    "task_impl",
    "http_mode",
    "http1_settings",
    "http2_settings",
    "websockets",
    "static_path",
    "log_access_fmt",
    "ssl_ctx",
    "scope_opts",
    "metrics",
)


class Moved(Exception):
    """An internal `serve` relies on is not there: nothing was bound, use another server."""


def _arg_names(func) -> tuple[str, ...]:
    return tuple(inspect.signature(inspect.unwrap(func)).parameters)


def probe() -> str | None:
    """None when the installed granian has the classes and methods `serve` uses; else what moved.

    Nothing is built here (a server's constructor configures granian's
    loggers): `serve` checks the server it builds, before binding.
    """
    os.environ.setdefault("_RJEM_MALLOC_CONF", JEMALLOC_CONF)  # read when the library loads
    try:
        import granian
        from granian.constants import Interfaces, RuntimeModes
        from granian.net import SocketSpec
        from granian.server.mt import MTServer, WorkerThread
    except ImportError as exc:
        return f"granian cannot be imported: {exc}"
    try:
        missing = [
            what
            for what, ok in (
                ("Interfaces.WSGI", hasattr(Interfaces, "WSGI")),
                ("RuntimeModes.mt", hasattr(RuntimeModes, "mt")),
                ("SocketSpec.build", callable(getattr(SocketSpec, "build", None))),
                ("WorkerThread.terminate", callable(getattr(WorkerThread, "terminate", None))),
                ("WorkerThread.join", callable(getattr(WorkerThread, "join", None))),
                (
                    f"MTServer._spawn_worker{SPAWN_WORKER_ARGS}",
                    _arg_names(MTServer._spawn_worker) == SPAWN_WORKER_ARGS,
                ),
                (
                    f"MTServer._spawn_wsgi_worker{WSGI_WORKER_ARGS}",
                    _arg_names(MTServer._spawn_wsgi_worker) == WSGI_WORKER_ARGS,
                ),
            )
            if not ok
        ]
    except Exception as exc:  # whatever a moved internal raises: reported, not fatal
        return f"granian {getattr(granian, '__version__', '?')}: {type(exc).__name__}: {exc}"
    if missing:
        version = getattr(granian, "__version__", "?")
        return f"granian {version} lacks {', '.join(missing)} (written for {GRANIAN_VERSION})"
    if granian.__version__ != GRANIAN_VERSION:
        log.warning(
            "granian %s installed, %s pinned: its internals pass the probe",
            granian.__version__,
            GRANIAN_VERSION,
        )
    return None


def _server(host: str, port: int, threads: int = 1):
    from granian.constants import Interfaces, RuntimeModes
    from granian.server.mt import MTServer

    return MTServer(
        "",  # no import string: the app is handed to the worker as a callable
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=1,
        blocking_threads=threads,
        runtime_mode=RuntimeModes.mt,
        log_enabled=False,
    )


def serve(
    app,
    host: str,
    port: int,
    stop: threading.Event,
    threads: int,
    grace: float,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run the WSGI `app` on one granian worker thread of this process until `stop` is set.

    Call `probe()` first. Raises `Moved`, having bound nothing, when the
    server it builds is not what this module was written for.
    """
    os.environ.setdefault("_RJEM_MALLOC_CONF", JEMALLOC_CONF)  # read when the library loads
    import granian
    from granian.net import SocketSpec
    from granian.server.mt import MTServer

    try:
        server = _server(host, port, threads)
    except Exception as exc:  # a constructor whose arguments changed
        raise Moved(f"granian {granian.__version__}: {type(exc).__name__}: {exc}") from None
    missing = [a for a in ("backlog", "_shd") if not hasattr(server, a)]
    if missing:
        raise Moved(
            f"granian {granian.__version__} lacks MTServer.{', MTServer.'.join(missing)}"
            f" (written for {GRANIAN_VERSION})"
        )
    try:
        server._shd = SocketSpec(host, port, server.backlog).build()
    except RuntimeError as exc:  # the bind error, with a Rust backtrace appended
        raise OSError(f"cannot listen on {host}:{port}: {str(exc).splitlines()[0]}") from None
    worker = server._spawn_worker(idx=0, target=MTServer._spawn_wsgi_worker, callback_loader=app)
    with socket.socket(fileno=os.dup(server._shd.get_fd())) as sock:
        effective_port = sock.getsockname()[1]
        worker.inner.start()
        # The socket is only bound so far: the worker thread listens on it. `ready`
        # means connections are taken, so wait for that (or for the worker to die).
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            if not worker.inner.is_alive() or time.monotonic() > deadline or stop.wait(0.005):
                break
    if ready is not None:
        ready(effective_port)
    log.info("front end listening on http://%s:%s (granian, %d threads)", host, port, threads)
    while not stop.wait(0.1):
        if not worker.inner.is_alive():
            log.error("granian worker ended unexpectedly")
            break
    worker.terminate()
    worker.join(grace)
