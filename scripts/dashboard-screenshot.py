"""Screenshot of the dashboard under load, for docs/img/dashboard.png.

    .venv/bin/python scripts/dashboard-screenshot.py docs/img/dashboard.png

Starts the five services (bazaar/testing/cluster.py), drives `bazaar load` for
a while so the chart has something to show, and captures / in Debian's
chromium through Playwright (same flags as the browser test).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bazaar.testing.browser import ARGS, CHROMIUM
from bazaar.testing.cluster import Cluster


def main(out: str, seconds: int = 40) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp)) as cluster:
        cluster.start_all(60)
        load = subprocess.Popen(
            [sys.executable, "-m", "bazaar.cli", "load", "--url", cluster.url]
            + ["--sessions", "4", "--requests", "100000", "-p", "0.3", "--seed", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    str(Path(tmp) / "profile"),
                    executable_path=CHROMIUM,
                    args=ARGS,
                    headless=True,
                    viewport={"width": 1280, "height": 900},
                )
                page = context.new_page()
                page.goto(cluster.url + "/")
                page.wait_for_timeout(seconds * 1000)
                page.fill("#order-name", "MenhirCo")
                page.fill("#order-quantity", "5")
                page.click("#order-form button")
                page.wait_for_selector("#order-result.ok >> text=Order placed")
                page.click("#lookup-form button")
                page.wait_for_selector("#lookup-result.ok")
                page.screenshot(path=out, full_page=True)
                context.close()
        finally:
            load.terminate()
            load.wait(10)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dashboard.png")
