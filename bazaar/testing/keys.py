"""One set of CurveZMQ cluster keys per run, for every service a test or benchmark starts.

Security is on in every test (SPEC section 2): `session_keys_dir()` makes the
keys once in a temporary directory (removed at exit), points BAZAAR_KEYS_DIR
at it (so services, the CLI and subprocesses find it) and clears
BAZAAR_INSECURE; only tests of insecure mode set it again.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

from bazaar import security


@cache
def session_keys_dir() -> Path:
    """The run's key directory, made on first use."""
    path = Path(tempfile.mkdtemp(prefix="bazaar-test-keys-"))
    security.init_keys(path)
    atexit.register(shutil.rmtree, path, True)
    os.environ["BAZAAR_KEYS_DIR"] = str(path)
    os.environ.pop("BAZAAR_INSECURE", None)
    return path


@cache
def keys_for(role: str) -> security.Keys:
    """The run's key pair of `role` (catalog, order1-3, frontend, client)."""
    return security.load_keys(session_keys_dir(), role)


def rpc_client(endpoint: str, role: str, server: str, **kw):
    """An rpc.Client speaking CurveZMQ as `role` to the holder of `server`'s key."""
    from bazaar import rpc

    return rpc.Client(endpoint, keys=keys_for(role), server_role=server, **kw)
