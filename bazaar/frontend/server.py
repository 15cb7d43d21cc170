"""Serve the front end with a production WSGI server; stop cleanly on the stop event.

`run(config, stop)` is the role entry point (`bazaar frontend`). The server
choice lives in `serve()` alone, so a benchmark can swap waitress for another
server by changing one function. Flask's development server is never used.

Shutdown: when `stop` is set, the listening socket and every connection are
closed from inside waitress's own I/O loop (a trigger thunk, so no cross-thread
socket access), worker threads get a short grace period, and `run` returns
well under a second later.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from bazaar.config import Config
from bazaar.frontend.app import close_app, create_app

log = logging.getLogger(__name__)

THREADS = 8
# Bodies above the app's own limit still get the app's JSON 413; only bodies
# above this much larger bound are refused by waitress itself (plain text).
MAX_REQUEST_BODY = 1 << 20
SHUTDOWN_GRACE = 0.3


def serve(
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
        serve(app, "0.0.0.0", config.http_port, stop, ready)
    finally:
        close_app(app)
        log.info("front end stopped")
