"""Serve the front end with a production WSGI server; stop cleanly on the stop event.

`run(config, stop)` is the role entry point (`bazaar frontend`). The server
choice lives in `serve()` alone, so a benchmark can swap servers by changing
one function. Flask's development server is never used.

The server is granian (a Rust HTTP/1 server) chosen by measurement: bench/http.py
and docs/performance.md ("HTTP") show it serving cached lookups 1.5-2.6x faster than
waitress and gunicorn gthread. Its WSGI worker runs as a thread of this process
(no forked worker, no signal handlers of its own), so the front end stays one
small process and `serve` keeps working from any thread. That takes granian
internals, all of them in `bazaar.frontend.granian_worker`: `serve` probes them
first and, if they moved (another granian than the one pinned), serves with
waitress instead and says so in the log.

Shutdown: when `stop` is set, granian's worker signal closes the listener and
every connection; `serve` returns within milliseconds. (waitress: the listening
socket and every connection are closed from inside its own I/O loop, worker
threads get a short grace period, well under a second.)
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from bazaar.config import Config
from bazaar.frontend import granian_worker
from bazaar.frontend.app import close_app, create_app

log = logging.getLogger(__name__)

THREADS = 8
# Bodies above the app's own limit still get the app's JSON 413; only bodies
# above this much larger bound are refused by the server itself.
MAX_REQUEST_BODY = 1 << 20
SHUTDOWN_GRACE = 0.3


def serve(
    app, host: str, port: int, stop: threading.Event, ready: Callable[[int], None] | None = None
) -> None:
    """Run `app` under the production server until `stop` is set."""
    moved = granian_worker.probe()
    if moved is None:
        try:
            serve_granian(app, host, port, stop, ready)
            return
        except granian_worker.Moved as exc:  # raised before anything was bound
            moved = str(exc)
    log.warning("granian cannot be embedded (%s): serving with waitress instead", moved)
    serve_waitress(app, host, port, stop, ready)


def serve_granian(
    app, host: str, port: int, stop: threading.Event, ready: Callable[[int], None] | None = None
) -> None:
    """Run `app` under granian, its WSGI worker a thread of this process, until `stop` is set."""
    granian_worker.serve(drain_body(app), host, port, stop, THREADS, SHUTDOWN_GRACE, ready)


def drain_body(app):
    """WSGI middleware for granian: read what the app left of the request body.

    For apps that call start_response before returning, as Flask does.

    granian streams the body to the app; an answer given before the body is read
    (a 413, a 404 on a POST) would leave bytes on a keep-alive connection, and the
    client would see a reset. waitress buffers bodies itself and needs none of this.
    Bodies above MAX_REQUEST_BODY are not read to the end: the answer closes the
    connection instead.
    """

    def wrapped(environ, start_response):
        if not _has_body(environ):  # GET lookups: no body, no read (a round trip into Rust)
            return app(environ, start_response)
        held: list = []

        def hold(status, headers, exc_info=None):  # noqa: ARG001 (start_response's signature)
            held.append((status, headers))

        result = app(environ, hold)
        status, headers = held[-1]
        if not _drain(environ.get("wsgi.input")):
            headers = [h for h in headers if h[0].lower() != "connection"]
            headers.append(("Connection", "close"))
        start_response(status, headers)
        return result

    return wrapped


def _has_body(environ) -> bool:
    length = environ.get("CONTENT_LENGTH") or "0"
    return length != "0" or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def _drain(stream, limit: int = MAX_REQUEST_BODY) -> bool:
    """Read `stream` to its end, at most `limit` bytes; True when the end was reached."""
    if stream is None:
        return True
    left = limit
    while left > 0:
        chunk = stream.read(min(left, 64 * 1024))
        if not chunk:
            return True
        left -= len(chunk)
    return not stream.read(1)


def serve_waitress(
    app, host: str, port: int, stop: threading.Event, ready: Callable[[int], None] | None = None
) -> None:
    """Run `app` under waitress until `stop` is set."""
    from waitress.server import create_server

    server = create_server(
        app,
        host=host,
        port=port,
        threads=THREADS,
        max_request_body_size=MAX_REQUEST_BODY,
        channel_timeout=30,
        connection_limit=1000,
        asyncore_use_poll=True,
        ident="bazaar",
        clear_untrusted_proxy_headers=True,
    )
    if ready is not None:
        ready(server.effective_port)
    loop = threading.Thread(target=server.run, name="waitress-loop", daemon=True)
    loop.start()
    log.info("front end listening on http://%s:%s (waitress, %d threads)", host, port, THREADS)
    while not stop.wait(0.1):
        if not loop.is_alive():
            log.error("waitress loop ended unexpectedly")
            break

    def close_all() -> None:  # runs on the waitress loop thread
        for channel in list(server._map.values()):
            with contextlib.suppress(Exception):  # best effort at shutdown
                channel.close()

    with contextlib.suppress(OSError):
        server.trigger.pull_trigger(close_all)
    loop.join(SHUTDOWN_GRACE)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=SHUTDOWN_GRACE)


def run(config: Config, stop: threading.Event, ready: Callable[[int], None] | None = None) -> None:
    """Role entry point: build the app, serve until `stop`, release everything."""
    app = create_app(config)
    try:
        host = "0.0.0.0" if config.bind_host == "*" else config.bind_host
        serve(app, host, config.http_port, stop, ready)
    finally:
        close_app(app)
        log.info("front end stopped")
