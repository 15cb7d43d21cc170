"""Debian's chromium, started off the network, for the dashboard test and its screenshot script.

Flags keep it from making requests of its own (no component updates, no
background networking) so the only traffic is to the front end under test.
CHROMIUM is None where it is not installed (`playwright install` cannot
download a browser here; .ci/run installs Debian's chromium).
"""

from __future__ import annotations

import os
import shutil

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)
ARGS = [
    "--headless",
    "--no-sandbox",  # root in a container: the sandbox needs user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]
