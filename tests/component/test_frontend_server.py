"""The front end's HTTP server: granian through its probed internals, else waitress.

Real servers on real sockets. granian's internals (bazaar.frontend.granian_worker)
are checked at start; when they moved, `serve` says so in the log and serves
with waitress. The tests force that path by making the probe fail, both by
stubbing it and by changing the internal it checks.
"""

from __future__ import annotations

import http.client
import logging
import re
import threading
import tomllib
from pathlib import Path

import granian
import pytest
from granian.server.mt import MTServer

from bazaar.frontend import granian_worker, server

ROOT = Path(__file__).resolve().parents[2]


def hello(environ, start_response):
    body = f"hello {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Running:
    """`server.serve(hello, ...)` on a thread, on a port the kernel picked and the server keeps."""

    def __init__(self):
        self.stop = threading.Event()
        self.port: int | None = None
        self.bound = threading.Event()
        self.thread = threading.Thread(
            target=server.serve,
            args=(hello, "127.0.0.1", 0, self.stop, self._ready),
            daemon=True,
        )

    def _ready(self, port: int) -> None:
        self.port = port
        self.bound.set()

    def __enter__(self):
        self.thread.start()
        assert self.bound.wait(30), "the server never listened"
        return self

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "serve did not return after stop"


def test_the_pinned_granian_passes_the_probe():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"granian=={granian_worker.GRANIAN_VERSION}" in pins  # pinned exactly, and the same
    assert granian.__version__ == granian_worker.GRANIAN_VERSION
    assert granian_worker.probe() is None


def test_the_probe_names_an_internal_that_moved(monkeypatch):
    def spawn_worker(self, idx, target, callback_loader, socket_loader):  # noqa: ARG001 (a newer shape)
        raise AssertionError("never called by the probe")

    monkeypatch.setattr(MTServer, "_spawn_worker", spawn_worker)
    moved = granian_worker.probe()
    assert moved is not None and "_spawn_worker" in moved and granian.__version__ in moved


def test_the_probe_builds_no_server(monkeypatch):
    def build(*_args, **_kwargs):
        raise AssertionError("the probe built a server")

    monkeypatch.setattr(granian_worker, "_server", build)
    assert granian_worker.probe() is None


def test_granian_serves_when_the_probe_passes(caplog):
    caplog.set_level(logging.INFO, logger="bazaar")
    with Running() as running:
        status, headers, body = running.get("/granian")
    assert (status, body) == (200, b"hello /granian")
    assert headers.get("server") == "granian"
    assert re.search(r"listening on http://127\.0\.0\.1:\d+ \(granian", caplog.text)
    assert "waitress" not in caplog.text


class Shapeless:
    """An MTServer from a granian whose server object lost the attributes `serve` uses."""

    def __init__(self, *_args, **_kwargs):
        pass


def broken_constructor(*_args, **_kwargs):
    raise TypeError("unexpected keyword argument 'blocking_threads'")


@pytest.mark.parametrize(
    ("how", "named"),
    [
        ("probe stubbed", "granian 9.9 lacks everything"),
        ("method moved", "_spawn_wsgi_worker"),
        ("constructor changed", "TypeError: unexpected keyword argument 'blocking_threads'"),
        ("attributes moved", "lacks MTServer.backlog, MTServer._shd"),
    ],
)
def test_waitress_serves_when_granian_moved(monkeypatch, caplog, how, named):
    caplog.set_level(logging.INFO, logger="bazaar")
    if how == "probe stubbed":
        monkeypatch.setattr(granian_worker, "probe", lambda: "granian 9.9 lacks everything")
    elif how == "method moved":
        monkeypatch.delattr(MTServer, "_spawn_wsgi_worker")
    elif how == "constructor changed":
        monkeypatch.setattr(granian_worker, "_server", broken_constructor)
    else:
        monkeypatch.setattr(granian_worker, "_server", Shapeless)
    with Running() as running:
        status, headers, body = running.get("/fallback")
        assert (status, body) == (200, b"hello /fallback")
        assert headers.get("server") == "bazaar"  # waitress's ident; granian says "granian"
    assert "granian cannot be embedded" in caplog.text and named in caplog.text
    assert "serving with waitress instead" in caplog.text
    assert re.search(r"listening on http://127\.0\.0\.1:\d+ \(waitress", caplog.text)
