"""The dashboard at / in a real browser: Debian's chromium driven by Playwright.

Loads the page from a real front end in front of the five services, sees the
market, places an order with the keyboard, sees its number, looks it up, sees
an API error as a message, kills the leader and sees the cluster panel change.
Screenshots go to test-artifacts/ (or $BAZAAR_ARTIFACTS).

Chromium is started with flags that keep it off the network (no component
updates, no background requests) and a new, empty profile. Skips with the
reason where chromium or playwright is missing (`playwright install` cannot
download a browser here; .ci/run installs Debian's chromium).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bazaar.testing.browser import ARGS, CHROMIUM
from bazaar.testing.cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)"
)
TIMEOUT_MS = 15_000


def artifacts_dir() -> Path:
    path = Path(os.environ.get("BAZAAR_ARTIFACTS", ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser_page(tmp_path):
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            context.close()


def test_dashboard_in_chromium(cluster: Cluster, browser_page):
    page = browser_page
    out = artifacts_dir()
    requests_elsewhere: list[str] = []
    page.on(
        "request",
        lambda r: None if r.url.startswith(cluster.url) else requests_elsewhere.append(r.url),
    )
    page.goto(cluster.url + "/")
    expect = sync_api.expect

    # The market, live.
    row = page.locator('#market tr[data-stock="GameStart"]')
    expect(row).to_be_visible()
    expect(row.locator("td").nth(1)).to_have_text("100")
    expect(page.locator("#status")).to_have_text("ok")
    leader_text = page.locator("#cluster-leader")
    expect(leader_text).to_have_text(re.compile(r"replica \d"))

    # Every form control has a label a screen reader can read.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, button')]
              .filter(el => !(el.labels && el.labels.length) && !el.textContent.trim())
              .map(el => el.id || el.name)"""
    )
    assert unlabelled == []

    # An order by keyboard only: focus the stock field, type, tab, Enter.
    page.focus("#order-name")
    page.keyboard.type("GameStart")
    page.keyboard.press("Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("3")
    page.keyboard.press("Enter")
    result = page.locator("#order-result")
    expect(result).to_have_text(re.compile(r"Order placed: number \d+"))
    number = int(re.search(r"number (\d+)", result.inner_text()).group(1))
    expect(row.locator("td").nth(1)).to_have_text("97")  # the market follows within a second

    # Look it up (the form was filled with the new number).
    expect(page.locator("#lookup-number")).to_have_value(str(number))
    page.click("#lookup-form button")
    expect(page.locator("#lookup-result")).to_have_text(f"Order {number}: buy 3 GameStart.")

    # API errors appear as messages.
    page.fill("#order-name", "NoSuchCo")
    page.click("#order-form button")
    expect(result).to_have_text(re.compile(r"Order failed: .*\(HTTP 404\)"))
    expect(result).to_have_class(re.compile("error"))
    page.fill("#lookup-number", "999999")
    page.click("#lookup-form button")
    expect(page.locator("#lookup-result")).to_have_text(re.compile(r"Lookup failed: .*HTTP 404"))
    page.screenshot(path=str(out / "dashboard.png"), full_page=True)

    # The leader dies: the cluster panel shows the new one within a few seconds.
    leader = int(leader_text.inner_text().split()[-1])
    cluster.kill(f"order{leader}")
    expect(leader_text).not_to_have_text(f"replica {leader}", timeout=10_000)
    expect(leader_text).to_have_text(re.compile(r"replica \d"), timeout=10_000)
    expect(page.locator(f"#replica-{leader} td").first).to_have_text("down", timeout=10_000)
    expect(page.locator("#status")).to_have_text("degraded", timeout=10_000)
    page.screenshot(path=str(out / "dashboard-failover.png"), full_page=True)

    # Readable on a phone: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    page.screenshot(path=str(out / "dashboard-phone.png"), full_page=True)

    assert requests_elsewhere == []  # no CDN, nothing from another host


def test_a_follower_the_leader_cannot_reach_is_shown_as_not_replicating(
    cluster: Cluster, browser_page
):
    """/health's `replicating: false` (a link cut between the leader and a follower,
    tests/system/test_partitions.py) as the page shows it. The cluster's own
    /api/dashboard answer, with one follower marked so on its way to the page."""
    page = browser_page
    expect = sync_api.expect
    leader = cluster.wait_healthy()["data"]["order"]["leader"]
    cut = next(r for r in (1, 2, 3) if r != leader)

    def not_replicating(route):
        body = route.fetch().json()
        view = body["data"]["cluster"]  # /health's body, as the page reads it
        view["order"]["replicas"][str(cut)]["replicating"] = False
        view["status"] = "degraded"
        route.fulfill(json=body)

    page.route("**/api/dashboard", not_replicating)
    page.goto(cluster.url + "/")
    expect(page.locator("#status")).to_have_text("degraded")
    state = page.locator(f"#replica-{cut} td").first
    expect(state).to_have_text("up, not replicating")
    expect(state).to_have_class(re.compile("down"))
    expect(page.locator(f"#replica-{leader} td").first).to_have_text("up")
