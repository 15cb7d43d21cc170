"""Run one service role in this process: config, logging, signals, /metrics, one-line errors.

`start(role, ...)` is what `bazaar catalog`, `bazaar order` and `bazaar
frontend` do, whichever parser read their flags (the lean one in
`bazaar.cli` or click's in `bazaar.commands`). It never imports click: a
service process pays only for what it serves (docs/performance.md,
"Footprint").

Each role module exposes `run(config, stop)`, which serves until the `stop`
event is set; this module turns SIGTERM/SIGINT into that event. What stops a
role from starting (a bad BAZAAR_* value, missing keys, a port in use) is a
`RoleError` with one line for the operator, never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

from bazaar import config as configmod
from bazaar import security
from bazaar.errors import BazaarError
from bazaar.stopping import StopEvent, stop_on_signals

ROLES = {
    "catalog": "bazaar.catalog.service",
    "order": "bazaar.order.service",
    "frontend": "bazaar.frontend.server",
}


class RoleError(Exception):
    """A role cannot start or went down on a known cause; the message is one line."""


def start(
    role: str,
    *,
    data_dir: str | None = None,
    order_id: int | None = None,
    http_port: int | None = None,
) -> None:
    """Serve `role` (a key of ROLES) with BAZAAR_* and these overrides until SIGTERM or SIGINT."""
    try:
        cfg = configmod.from_env().with_(
            data_dir=configmod.Path(data_dir) if data_dir else None,
            order_id=order_id,
            http_port=http_port,
        )
    except configmod.ConfigError as exc:
        raise RoleError(str(exc)) from None
    name = role
    if role == "order":
        if cfg.order_id is None:
            raise RoleError("order: give --id N or set BAZAAR_ORDER_ID")
        if cfg.order_id not in cfg.order_replicas:
            raise RoleError(
                f"order: id {cfg.order_id} is not in BAZAAR_ORDER_REPLICAS "
                f"({', '.join(map(str, cfg.order_replicas))})"
            )
        name = f"order{cfg.order_id}"
    setup_logging(cfg.log_level, name)
    serve(role, cfg)


def setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cannot_listen(err: Exception) -> bool:
    """A bind failure of a ZeroMQ socket or of the HTTP server."""
    import errno

    import zmq

    if isinstance(err, zmq.ZMQError | OSError) and err.errno in (
        errno.EADDRINUSE,
        errno.EADDRNOTAVAIL,
        errno.EACCES,
    ):
        return True
    return isinstance(err, OSError) and str(err).startswith("cannot listen on")


def serve(role: str, cfg: configmod.Config) -> None:
    """Run one role in this process until SIGTERM or SIGINT."""
    stop = StopEvent()
    stop_on_signals(stop)
    module = importlib.import_module(ROLES[role])
    from bazaar import metrics

    try:
        exposition = metrics.serve(cfg.bind_host, cfg.metrics_port)
    except OSError as exc:
        raise RoleError(f"BAZAAR_METRICS_PORT {cfg.metrics_port}: {exc}") from None
    try:
        module.run(cfg, stop)
    except BazaarError as err:
        raise RoleError(f"{err.code}: {err.message}") from None
    except (configmod.ConfigError, security.KeysError) as err:
        raise RoleError(str(err)) from None
    except Exception as err:
        if not _cannot_listen(err):
            raise
        # A port in use or an address not on this host: one line, not a traceback.
        text = str(err) if str(err).startswith("cannot listen") else f"cannot listen: {err}"
        raise RoleError(f"{role}: {text}") from None
    finally:
        if exposition is not None:
            exposition.stop()
