"""One HTTP request with a JSON body, answered as (status, parsed body); never raises on 4xx/5xx."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def http_json(base_url: str, method: str, path: str, body=None, headers=None, timeout=10.0):
    """(status, parsed JSON body) of `method base_url+path`; a body that is not JSON is bytes."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw


def healthy(status: int, body) -> dict | None:
    """A /health answer's body when it says `ok`, else None (for `wait_until` conditions).

    Takes the answer, not a URL: a harness may reach the front end its own way
    (tests/system/netns.py asks from inside a network namespace).
    """
    return body if status == 200 and body["data"]["status"] == "ok" else None
