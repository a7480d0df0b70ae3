"""The web console in a real browser (Debian's Chromium, driven by Playwright), against real RabbitMQ and
PostgreSQL with the agent and the receiver running: logins, the Resync State Data page against
`resync status --json`, a partial resync sent from the page, the agent log's filters, tool rights, CSRF, logout,
and the state's pages requesting a resync the district carries out. A screenshot of each main page is saved in
``$TEST_ARTIFACTS`` (default ``test-artifacts/``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _unavailable
from tests.site import YEAR, Site

pytestmark = [pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", "test-artifacts"))
PASSWORD = "correct horse battery"


def add_user(site: Site, name: str, role: str, *side: str) -> None:
    out = subprocess.run([sys.executable, "-m", "resync", "users", "add", name, "--role", role, "--password-stdin",
                          *side], env=site.env, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        _unavailable("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def login(page: Any, base: str, name: str, side: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.select_option("select[name=side]", side)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/{side}")


def until(what: str, check: Any, limit: float = 300) -> Any:
    deadline = time.monotonic() + limit  # a hang guard, not a timing assertion
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


def test_console_in_a_browser(site: Site, browser: Any) -> None:
    site.cli("seed", "--students", "40", "--year", str(YEAR))
    site.start("receiver", "run")
    site.start("agent", "run")
    assert site.wait(site.send("--all"))["status"] == "completed"
    add_user(site, "ada", "admin")
    add_user(site, "vic", "view")
    add_user(site, "sam", "admin", "--state")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    site.start("web", "--port", str(port), "--side", "both")
    until("the console to listen", lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0)

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.on("dialog", lambda d: d.accept())  # the "may slow the system" confirmation
    page.goto(f"{base}/district/history")
    assert page.url == f"{base}/login"  # nothing without a session

    # the Resync State Data page shows what `resync status --json` says
    login(page, base, "ada", "district")
    expected = site.json("status")
    rows = page.locator("table.status tbody tr")
    assert rows.count() == len(expected)
    for i, want in enumerate(expected):
        row = rows.nth(i)
        assert row.get_attribute("data-object") == want["object"]
        assert row.get_attribute("data-status") == (want["status"] or "")
        if want["last_resync"]:
            assert row.locator("td.results").inner_text() == f"Processed: {want['processed']} Errors: {want['errors']}"
    assert page.locator("#deps").is_checked()  # Check Dependencies is on by default
    shot(page, "resync-state-data")

    # a partial resync of Calendar with Check Dependencies, watched to completion on its page
    page.check("input.pick[value=Calendar]")
    page.click("#send")
    page.wait_for_url(f"{base}/district/batches/*")
    page.wait_for_function("document.getElementById('batch-status').textContent === 'completed'", timeout=300_000)
    sent = page.locator("#progress tbody tr").evaluate_all("rows => rows.map(r => r.dataset.object)")
    assert sent == ["District", "School", "Calendar"]  # its parents first
    shot(page, "batch-progress")

    # the agent log filtered by object and errors
    page.goto(f"{base}/district/log")
    failing = next(r["object"] for r in expected if r["errors"])  # the seed has state-excluded records
    page.select_option("select[name=object]", failing)
    page.check("input[name=errors]")
    page.click("#log-filters button")
    logged = page.locator("#log tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    errors = [r for r in logged if len(r) == 7]
    assert errors and all(r[1] == failing and r[3] == "error" for r in errors), logged[:3]
    shot(page, "agent-log")
    page.goto(f"{base}/district/history")
    assert page.locator("table tbody tr").count() == 2
    shot(page, "batch-history")

    # the Verification Summary, run from its page: nothing differs after the resyncs
    page.goto(f"{base}/district/verify")
    page.click("text=Run verification")
    page.wait_for_url(f"{base}/district/verify?run=*")

    def verified() -> bool:
        if page.locator("#verify-status").inner_text() == "completed":
            return True
        page.reload()
        return False
    until("the verification to complete", verified)
    assert "No differences" in page.content()
    for path in ("/district/queue", "/district/live", "/district/errors", "/district/alerts"):
        assert page.request.get(base + path).status == 200, path
    # wrong input is said on a page, not a crash
    assert page.request.get(f"{base}/district/log?object=NoSuchObject").status == 400
    assert page.request.get(f"{base}/district/log?before=abc").status == 200
    assert page.request.get(f"{base}/district/batches/NOPE").status == 404

    assert page.request.get(f"{base}/district/log?before=%C2%B2").status == 200  # a digit int() refuses: ignored
    assert page.request.get(f"{base}/district/batches/a%00b").status == 400  # PostgreSQL refuses a NUL
    # the top checkbox ticks every box too: the server sends a full resync, not a refusal
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    full = page.request.post(f"{base}/district/resync", form={"csrf": token, "full": "1", "object": "Day",
                                                              "year": "current", "check_dependencies": "1"})
    assert full.ok and "/district/batches/" in full.url

    # a form posted without its CSRF token is refused
    assert page.request.post(f"{base}/district/resync", form={"object": "School"}).status == 403

    # logout: nothing but the login page is reachable, even with a copy of the old cookie
    kept = page.context.cookies()
    page.click("header .logout button")
    page.wait_for_url(f"{base}/login")
    copy = browser.new_context()
    copy.add_cookies(kept)
    assert copy.request.get(f"{base}/district", max_redirects=0).status == 303
    copy.close()
    for path in ("/district", "/district/log", "/state", "/district/api/batches/x"):
        page.goto(base + path)
        assert page.url == f"{base}/login", path

    # a wrong password is said, and nothing opens
    page.fill("input[name=name]", "ada")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert "wrong name or password" in page.content() and page.url == f"{base}/login"

    # a viewer may look but not send
    login(page, base, "vic", "district")
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    answer = page.request.post(f"{base}/district/resync", form={"csrf": token, "object": "School", "year": "current"})
    assert answer.status == 403 and "needs the run right" in answer.text()
    assert page.locator("#send").count() == 0
    page.click("header .logout button")

    # the state: every district at a glance, then a request the district carries out
    login(page, base, "sam", "state")
    assert page.locator("#districts tbody tr[data-district=district-1]").count() == 1
    shot(page, "state-districts")
    page.goto(f"{base}/state/districts/district-1")
    page.check("input.pick[value=School]")
    page.click("#request")
    page.wait_for_url(f"{base}/state/districts/district-1")

    def done() -> bool:
        page.reload()
        return page.locator("#requests tbody td.req-status").first.inner_text() == "completed"
    until("the district to carry out the state's request", done)
    shot(page, "state-district")
    page.goto(f"{base}/state/alerts")
    assert "State Resync Requested" in page.content()
