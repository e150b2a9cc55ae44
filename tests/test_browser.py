"""The pages in a real browser: Playwright driving Debian's Chromium against a live server.

A resident refused a train ticket appeals; a reviewer overturns; the resident sees the outcome
and the clerk's next check is allowed. Screenshots of every page go to
``test-artifacts/screenshots/``. Skips when /usr/bin/chromium is absent, unless
CIVISCORE_REQUIRE_BROWSER=1 (CI sets it), where that is a failure.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from civiscore.api.app import create_app
from civiscore.service import SYSTEM, Service
from civiscore.settings import Settings
from civiscore.workspace import Workspace
from tests.api_utils import KEYS, P1, P2, Clock, days_ago
from tests.utils import write_csv

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"

pytestmark = pytest.mark.browser


def _require_browser() -> None:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} not installed (apt-get install chromium)"
        if os.environ.get("CIVISCORE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Site:
    def __init__(self, url: str, service: Service, keys: dict[str, str]):
        self.url, self.service, self.keys = url, service, keys


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _require_browser()
    home = tmp_path_factory.mktemp("web") / "home"
    ws, _ = Workspace.init(home)
    feeds = tmp_path_factory.mktemp("feeds")
    debt = {
        "record_id": "C1",
        "subject_id": P1,
        "kind": "court.judgment_default",
        "occurred_at": days_ago(40),
        "reference": "(2025)Jing0105Zhi77",
        "quantity": 20000,
    }
    ws.ingest("courts", write_csv(feeds / "courts.csv", [debt]))
    volunteer = [
        {
            "record_id": f"V{i}",
            "subject_id": P2,
            "kind": "civic.volunteer_hours",
            "occurred_at": days_ago(10 + i),
            "quantity": 20,
        }
        for i in range(3)
    ]
    bad = [
        {
            "record_id": "V9",
            "subject_id": "110105194912310021",
            "kind": "civic.volunteer_hours",
            "occurred_at": days_ago(3),
            "quantity": 5,
        }
    ]
    ws.ingest("civil_affairs", write_csv(feeds / "civil.csv", volunteer + bad))
    service = Service(ws, Settings(database_url=f"sqlite:///{home / 'ops.db'}"), clock=Clock())
    service.ws.score(service.clock(), service.clock())
    keys = {}
    for name, spec in KEYS.items():
        keys[name] = service.create_key_unchecked(actor=SYSTEM, name=name, **dict(spec))[0]
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    try:
        yield Site(f"http://127.0.0.1:{port}", service, keys)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def _page(browser: Any, **kw: Any) -> Any:
    context = browser.new_context(**kw)
    context.set_default_timeout(10_000)
    return context.new_page()


def _sign_in(page: Any, site: Site, who: str) -> None:
    page.goto(site.url + "/")
    page.fill("#key", site.keys[who])
    with page.expect_navigation():
        page.keyboard.press("Enter")  # the form works from the keyboard


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _desk_check(page: Any, subject: str) -> str:
    page.fill("#subject_id", subject)
    page.select_option("#service_name", "high_speed_rail")
    page.click("button:has-text('Check')")
    page.wait_for_selector(".result")
    return str(page.inner_text("main"))


def test_refusal_appeal_overturn_outcome_in_the_browser(browser: Any, site: Site) -> None:
    clerk = _page(browser)
    _sign_in(clerk, site, "rail")
    assert clerk.url.endswith("/desk")
    text = _desk_check(clerk, P1)
    assert "DENIED" in text and "Notice of refusal: Dishonest judgment debtor" in text
    assert "(2025)Jing0105Zhi77" in text and "Fa Shi [2015] No. 17" in text
    assert "Appeal by" in text and "free copy" in text
    assert "score" not in text.lower().replace("civiscore", "") and "band" not in text.lower()
    _shot(clerk, "desk-denied")

    resident = _page(browser)
    _sign_in(resident, site, "p1")
    assert resident.url.endswith("/me")
    me = resident.inner_text("main")
    assert "Dishonest judgment debtor" in me and "high_speed_rail" in me
    assert "rail" in resident.inner_text("section[aria-labelledby=who-h]")
    assert "denied" in resident.inner_text("section[aria-labelledby=who-h]")
    assert resident.locator("svg.chart title", has_text="Band scale").count() == 1
    _shot(resident, "resident-refused")
    resident.select_option("#target", index=1)
    assert resident.input_value("#record_id") == "C1"
    resident.fill("#statement", "I paid the judgment debt in full; the receipt is attached.")
    resident.click("button:has-text('File appeal')")
    resident.wait_for_url("**/me/appeals/*")
    assert "open" in resident.inner_text("h1")
    _shot(resident, "resident-appeal-filed")

    reviewer = _page(browser)
    _sign_in(reviewer, site, "reviewer")
    assert reviewer.url.endswith("/review")
    _shot(reviewer, "reviewer-queue")
    reviewer.click("a:has-text('Appeal')")
    body = reviewer.inner_text("main")
    assert "I paid the judgment debt in full" in body and "court.judgment_default" in body
    _shot(reviewer, "reviewer-evidence")
    reviewer.check("input[value=overturn]")
    reviewer.fill("#reason", "Receipt verified with the enforcing court.")
    reviewer.click("button:has-text('Decide')")
    reviewer.wait_for_url("**/review")
    assert "overturned" in reviewer.inner_text("main")

    resident.goto(site.url + "/me/appeals/1")
    outcome = resident.inner_text("main")
    assert "overturned" in outcome and "Receipt verified with the enforcing court." in outcome
    _shot(resident, "resident-outcome")
    resident.goto(site.url + "/me")
    assert "You are on no blacklist." in resident.inner_text("main")

    clerk.goto(site.url + "/desk")
    assert "ALLOWED" in _desk_check(clerk, P1)
    _shot(clerk, "desk-allowed")


def test_operator_sees_the_band_histogram_and_a_bad_feed(browser: Any, site: Site) -> None:
    page = _page(browser, accept_downloads=True)
    _sign_in(page, site, "admin")
    assert page.url.endswith("/operator")
    assert page.locator("svg.chart title", has_text="Subjects per band").count() == 1
    assert (page.locator("svg.chart desc").first.text_content() or "").startswith("AAA:")
    feed = page.inner_text("#feeds tr:has-text('civil_affairs')")
    assert "1" in feed.split("\t")[5] and "civil.csv.rejects.csv" in feed
    with page.expect_download() as download:
        page.click("a:has-text('civil.csv.rejects.csv')")
    rejects = Path(download.value.path()).read_text()
    assert "check digit" in rejects and "110105194912310021" not in rejects
    assert "Safeguard report" in page.inner_text("main")
    _shot(page, "operator")


def test_a_resident_cannot_open_another_residents_pages(browser: Any, site: Site) -> None:
    page = _page(browser)
    _sign_in(page, site, "p2")
    response = page.goto(site.url + "/me/appeals/1")
    assert response.status == 404 and "You have no appeal 1" in page.inner_text("main")
    response = page.goto(site.url + "/review")
    assert response.status == 403
    response = page.goto(site.url + "/operator")
    assert response.status == 403
    page.goto(site.url + "/me")
    assert "Dishonest" not in page.inner_text("main")
    _shot(page, "resident-other")


def test_pages_need_a_key_and_fit_a_phone(browser: Any, site: Site) -> None:
    page = _page(browser, viewport={"width": 375, "height": 800})
    page.goto(site.url + "/me")
    assert page.url.startswith(site.url + "/?next=/me")
    page.fill("#key", "wrong")
    page.click("button:has-text('Sign in')")
    assert "unknown or revoked key" in page.inner_text("main")
    page.fill("#key", site.keys["p2"])
    page.click("button:has-text('Sign in')")
    page.wait_for_url("**/me")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide on a 375px phone"
    _shot(page, "resident-phone")
