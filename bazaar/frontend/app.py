"""The Flask application: routes of SPEC section 1, request validation, JSON errors.

`create_app(config, catalog=..., orders=..., cache=...)` is the factory. Tests
hand it fakes (anything with the same methods); production passes nothing and
gets real RPC clients, an `OrderRouter` and a `LookupCache` fed by the catalog's
PUB socket, whose threads `close_app(app)` stops.

Rules of this module:
- Every response body is JSON: `{"data": ...}` or `{"error": {"code", "message"}}`,
  including 404/405/413 and unexpected exceptions; never HTML, never a traceback.
- RPC errors become HTTP statuses through `BazaarError.http_status` only.
- Input is validated (`bazaar.frontend.validation`) before any RPC.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.http import HTTP_STATUS_CODES

from bazaar import metrics, security
from bazaar.config import Config
from bazaar.errors import BazaarError
from bazaar.frontend.cache import InvalidationFeed, LookupCache
from bazaar.frontend.leader import OrderRouter
from bazaar.frontend.monitor import ClusterMonitor
from bazaar.frontend.observe import HttpMeter, RecentSamples
from bazaar.frontend.validation import (
    MAX_BODY_BYTES,
    order_key,
    parse_order_body,
    parse_order_number,
    read_body,
)
from bazaar.rpc import Client

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 3.0
STOCK_FIELDS = ("name", "price", "quantity", "volume", "max_volume")
# Answers after which the catalog certainly did not change.
NO_TRADE_CODES = frozenset(
    {"NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "ALREADY_EXISTS"}
)

_JSON = "application/json"


def _body(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(payload, separators=(",", ":")).encode()
    return Response(data, status=status, mimetype=_JSON, headers=headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _body({"error": {"code": status, "message": message}}, status, headers)


# ---- the app ------------------------------------------------------------
def create_app(
    config: Config | None = None,
    *,
    catalog: Any = None,
    orders: Any = None,
    cache: LookupCache | None = None,
    measure: bool = True,
) -> Flask:
    """Build the front end. Missing collaborators are made from `config` and started.

    `measure=False` leaves out the HTTP metrics and the dashboard's samples
    (bench/http.py measures what they cost).
    """
    config = config or Config()
    keys = None
    if catalog is None or orders is None or cache is None:  # it talks to the cluster
        keys = security.for_service(config.keys_path, config.insecure, "frontend")
    # The dashboard's files: bazaar/frontend/static, served under /static/.
    app = Flask("bazaar.frontend")
    # One byte of slack: werkzeug truncates a chunked body at this limit instead
    # of refusing it, so `read_body` reads one byte more than it accepts.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    owned: list[Any] = []
    if catalog is None:
        catalog = Client(config.catalog, timeout=LOOKUP_TIMEOUT, keys=keys, server_role="catalog")
        owned.append(catalog)
    if cache is None:
        cache = LookupCache(config.cache_size)
        if cache.capacity:
            owned.append(InvalidationFeed(config.catalog_pub, cache, keys=keys).start())
    if orders is None:
        orders = OrderRouter(config.order_replicas, keys=keys).start()
        owned.append(orders)
    monitor = ClusterMonitor(catalog, orders, cache).start()
    owned.append(monitor)
    samples = RecentSamples() if measure else None
    meter = HttpMeter(samples) if measure else None
    parts = FrontendParts(catalog, orders, cache, monitor, samples, meter)
    app.extensions["bazaar"] = {
        "catalog": catalog,
        "orders": orders,
        "cache": cache,
        "monitor": monitor,
        "samples": samples,
        "owned": owned,
        "parts": parts,
    }
    metrics.activate()  # the front end always serves /metrics
    metrics.watch("frontend", parts)
    _register_errors(app)
    _register_routes(app, catalog, orders, cache)
    _register_dashboard(app, parts)
    wsgi = serve_cached_lookups(serve_orders(app.wsgi_app, orders, cache), cache)
    app.wsgi_app = meter.wrap(wsgi) if meter is not None else wsgi  # type: ignore[method-assign]
    return app


class FrontendParts:
    """What the dashboard and the metrics collector read (held weakly by bazaar.metrics)."""

    def __init__(self, catalog, orders, cache, monitor, samples, meter):
        self.catalog, self.orders, self.cache = catalog, orders, cache
        self.monitor, self.samples, self.meter = monitor, samples, meter

    def drain(self) -> None:
        """Bring the HTTP metrics and samples up to date (before a scrape or a read)."""
        if self.meter is not None:
            self.meter.drain()


def serve_cached_lookups(wsgi_app, cache: LookupCache):
    """WSGI middleware: answer `GET /stocks/<name>` cache hits before Flask runs.

    The hot path of the system (a cached lookup) then costs a dict lookup
    instead of Flask's request machinery (~150 us). Only plain ASCII paths take
    it; anything else, and every miss, goes through the Flask route, which
    fills the cache with the very body served here.
    """

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if (
            path.startswith("/stocks/")
            and environ.get("REQUEST_METHOD") == "GET"
            and path.isascii()
            and "/" not in path[8:]
            and len(path) > 8
        ):
            body = cache.get(path[8:])
            if body is not None:
                start_response(
                    "200 OK", [("Content-Type", _JSON), ("Content-Length", str(len(body)))]
                )
                return [body]
            environ["bazaar.cache_checked"] = True  # a miss is counted once
        return wsgi_app(environ, start_response)

    return app


def serve_orders(wsgi_app, orders, cache: LookupCache):
    """WSGI middleware: `POST /orders` with a Content-Length body, before Flask runs.

    The same steps as the Flask route `place_order` (the same validation
    functions, the same JSON answers and statuses) without Flask's request
    and response machinery (~0.15 ms per order in process). Only the plain
    case takes it: a body of a declared length within MAX_BODY_BYTES. Chunked
    bodies, oversized ones (413), HEAD and everything else go through Flask.
    """

    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/orders" or environ.get("REQUEST_METHOD") != "POST":
            return wsgi_app(environ, start_response)
        length = environ.get("CONTENT_LENGTH") or ""
        if (
            not (length.isascii() and length.isdigit())
            or int(length) > MAX_BODY_BYTES
            or "HTTP_TRANSFER_ENCODING" in environ
        ):
            return wsgi_app(environ, start_response)
        status, payload = 200, None
        try:
            key = order_key(environ.get("HTTP_IDEMPOTENCY_KEY"))
            raw = read_body(_Limited(environ["wsgi.input"], int(length)))
            fields = parse_order_body(environ.get("CONTENT_TYPE") or "", raw)
            payload = {"data": _order(orders, cache, key, fields)}
        except BazaarError as err:
            status, message = public_error(err)
            payload = {"error": {"code": status, "message": message}}
        except Exception:  # as the Flask error handler: logged, a JSON 500
            rid = request_id()
            log.exception("request %s: unexpected error on POST /orders", rid)
            status = 500
            payload = {"error": {"code": 500, "message": f"internal error (request id {rid})"}}
        data = json.dumps(payload, separators=(",", ":")).encode()
        headers = [("Content-Type", _JSON), ("Content-Length", str(len(data)))]
        start_response(f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN').upper()}", headers)
        return [data]

    return app


class _Limited:
    """A body stream that ends after Content-Length bytes, as werkzeug's does."""

    def __init__(self, stream, length: int):
        self.stream, self.left = stream, length

    def read(self, size: int) -> bytes:
        if self.left <= 0:
            return b""
        data = self.stream.read(min(size, self.left))
        self.left -= len(data)
        return data


def _order(orders, cache: LookupCache, key: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Place one validated order: the answer's data, or the BazaarError to map."""
    try:
        result = orders.order(key, fields["name"], fields["type"], fields["quantity"])
    except BazaarError as err:
        if err.code not in NO_TRADE_CODES:  # the outcome is unknown: it may have traded
            cache.invalidate(fields["name"])
        raise
    # Our own invalidation closes the window before the catalog's arrives.
    cache.invalidate(fields["name"])
    return {"transaction_number": result["transaction_number"]}


def close_app(app: Flask) -> None:
    """Stop the threads and sockets `create_app` started."""
    ext = app.extensions["bazaar"]
    for thing in ext["owned"]:
        (getattr(thing, "stop", None) or thing.close)()


# What a user reads for a failure that is not theirs to fix. The RPC message
# behind it may name hosts, files or exceptions, so it goes to the log only,
# under a request id the user can quote.
PUBLIC_MESSAGES = {
    503: "the service is temporarily unavailable; please retry",
    504: "the service did not answer in time; please retry",
}
# Internal-only codes: the front end's own role was refused, a misconfiguration.
INTERNAL_ONLY = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})


def request_id() -> str:
    return os.urandom(6).hex()


def public_error(err: BazaarError) -> tuple[int, str]:
    """(HTTP status, message for the user) of an error; server-side ones are logged."""
    status = 500 if err.code in INTERNAL_ONLY else err.http_status
    if status < 500:
        return status, err.message
    rid = request_id()
    log.warning("request %s failed: %s: %s", rid, err.code, err.message)
    return status, f"{PUBLIC_MESSAGES.get(status, 'internal error')} (request id {rid})"


def _register_errors(app: Flask) -> None:
    @app.errorhandler(BazaarError)
    def bazaar_error(err: BazaarError):
        return error_response(*public_error(err))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        path = request.path[:200]
        headers = None
        if status == 404:
            message = f"no such route: {path}"
        elif status == 405:
            message = f"method {request.method[:20]} is not allowed on {path}"
            if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
                headers = {"Allow": ", ".join(exc.valid_methods)}
        elif status == 413:
            message = f"request body larger than {MAX_BODY_BYTES} bytes"
        else:
            message = exc.description or exc.name
        return error_response(status, message, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        rid = request_id()
        log.error(
            "request %s: unexpected error on %s %s",
            rid,
            request.method,
            request.path[:200],
            exc_info=exc,
        )
        return error_response(500, f"internal error (request id {rid})")


def _register_routes(app: Flask, catalog, orders, cache: LookupCache) -> None:
    @app.get("/stocks/<name>")
    def lookup(name: str):
        body = None if request.environ.get("bazaar.cache_checked") else cache.get(name)
        if body is None:
            token = cache.begin()
            stock = catalog.call("lookup", name=name, timeout=LOOKUP_TIMEOUT, idempotent=True)
            data = {k: stock.get(k) for k in STOCK_FIELDS}
            body = json.dumps({"data": data}, separators=(",", ":")).encode()
            cache.fill(name, body, token)
        return Response(body, mimetype=_JSON)

    @app.post("/orders")
    def place_order():
        key = order_key(request.headers.get("Idempotency-Key"))
        fields = parse_order_body(request.content_type or "", read_body(request.stream))
        return _body({"data": _order(orders, cache, key, fields)})

    @app.get("/orders/<number>")
    def get_order(number: str):
        record = orders.get_order(parse_order_number(number))
        data = {k: record.get(k) for k in ("number", "name", "type", "quantity")}
        return _body({"data": data})


def _register_dashboard(app: Flask, parts: FrontendParts) -> None:
    """`/health`, `/metrics`, the dashboard at `/` and its data: no RPC per request."""

    @app.get("/health")
    def health():
        data, status = parts.monitor.health()
        return _body({"data": data}, status)

    @app.get("/metrics")
    def metrics_exposition():
        body, content_type = metrics.exposition()
        return Response(body, mimetype=None, content_type=content_type)

    @app.get("/")
    def dashboard():
        resp = app.send_static_file("index.html")
        # Everything from this origin only: the page works offline, no CDN.
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
        )
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    @app.get("/api/dashboard")
    def dashboard_data():
        parts.drain()
        data, status = parts.monitor.health()
        data["status_code"] = status
        data["elections"] = getattr(parts.orders, "elections", 0)
        return _body(
            {
                "data": {
                    "cluster": data,
                    "market": parts.monitor.market(),
                    "samples": parts.samples.series() if parts.samples is not None else [],
                    "age_seconds": round(min(parts.monitor.age, 3600.0), 3),
                }
            }
        )
