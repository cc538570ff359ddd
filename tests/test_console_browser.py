"""The console in a real browser: Chromium (Debian's) driven by Playwright against `dispatcher serve`.

Log in, read the catalog, match a pasted payload, find a failed delivery, replay it
and watch it succeed. Screenshots of each page go to a temporary directory, or to
$DISPATCHER_SCREENSHOTS when set (``DISPATCHER_SCREENSHOTS=docs/screenshots`` refreshes
the ones the docs show).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .processes import ROOT, free_port, start, wait_healthy

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
CATALOG = ROOT / "examples" / "standalone" / "catalog.json"
TOKEN = "browser-test-console-token"

HANDLERS = """
import os
from pathlib import Path

from dispatcher import Retry, Router

router = Router()


@router.on("payments:refund", retry=Retry(max_attempts=1))
async def credit_ledger(event):
    if Path(os.environ["CONSOLE_TEST_BROKEN"]).exists():
        raise RuntimeError("the ledger is down")


@router.on("payments:*")
async def audit_log(event):
    pass
"""


def _need(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(f"{reason} (the browser tests run under CI=true)")


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium, and Playwright to drive it (checked before any server starts)."""
    _need(CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need(False, "playwright (Python) is not installed")
    return CHROMIUM


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`dispatcher serve` in queued mode with the console on, and a handler that fails on cue."""
    (tmp_path / "console_handlers.py").write_text(HANDLERS)
    broken = tmp_path / "broken"
    broken.touch()
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start(
        "serve", str(CATALOG), "--handlers", "console_handlers", "--port", str(port),
        "--inbox", f"sqlite:///{tmp_path / 'inbox.db'}", "--console-token-env", "CONSOLE_TOKEN",
        env={"PYTHONPATH": f"{ROOT}:{tmp_path}", "CONSOLE_TOKEN": TOKEN,
             "CONSOLE_TEST_BROKEN": str(broken)},
        log=log,
    )  # fmt: skip
    try:
        wait_healthy(port, proc)
        yield {"url": f"http://127.0.0.1:{port}", "broken": broken, "log": log}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = os.environ.get("DISPATCHER_SCREENSHOTS")
    folder = Path(target) if target else tmp_path / "screenshots"
    if not folder.is_absolute():
        folder = ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_log_in_read_the_catalog_try_a_payload_and_replay_a_failed_delivery(
    chromium: Path, server: dict[str, Any], shots: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = server["url"]
    # Deliveries before anyone looks: two that succeed, one whose ledger handler dies.
    for n in range(2):
        body = {"event": "new-transaction", "transaction_id": f"t-{n}", "amount": 5000}
        assert httpx.post(f"{url}/payments", json=body).status_code == 202
    refund = {"event": "refund", "transaction_id": "t-0", "amount": 5000, "currency": "USD"}
    assert httpx.post(f"{url}/payments", json=refund).status_code == 202

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(15_000)

            # Log in: the console sends us to its login page first.
            page.goto(f"{url}/_ui/catalog")
            expect(page).to_have_url(f"{url}/_ui/login?next=%2F_ui%2Fcatalog")
            page.fill("#token", "not the token")
            page.click("button:has-text('Log in')")
            expect(page.locator(".flash.error")).to_contain_text("not the console token")
            page.fill("#token", TOKEN)
            page.screenshot(path=shots / "login.png")
            page.click("button:has-text('Log in')")

            # The catalog: events, selectors and who handles them; unhandled ones stand out.
            expect(page).to_have_url(f"{url}/_ui/catalog")
            refund_row = page.locator("tr[id='event-payments:refund']")
            expect(refund_row).to_contain_text("console_handlers.credit_ledger")
            expect(refund_row).to_contain_text("console_handlers.audit_log")
            expect(page.locator("tr[id='event-github:push']")).to_contain_text("no handler")
            page.screenshot(path=shots / "catalog.png", full_page=True)

            # Try it: paste a payload, see the event and the handlers that would run.
            page.click("nav >> text=Try it")
            page.select_option("#webhook", "payments")
            page.fill("#headers", "Content-Type: application/json")
            page.fill("#payload", '{\n  "event": "refund",\n  "transaction_id": "t-9"\n}')
            page.click("button:has-text('Match')")
            result = page.locator("#result")
            expect(result.locator("code.matched")).to_have_text("payments:refund")
            expect(result.locator(".would-run")).to_contain_text("credit_ledger")
            expect(result.locator(".would-run")).to_contain_text("audit_log")
            page.screenshot(path=shots / "try-it.png", full_page=True)

            # Deliveries: the refund is dead (no retries for that handler).
            page.click("nav >> text=Deliveries")
            dead = page.locator("tr.delivery.status-dead")
            _reload_until(page, lambda: dead.count() == 1)
            expect(dead).to_contain_text("RuntimeError: the ledger is down")
            expect(page.locator("svg.chart rect.bar.dead")).to_have_count(1)
            page.screenshot(path=shots / "deliveries.png", full_page=True)

            # Its page: the failed attempt and its error. Fix the handler, replay.
            dead.locator("a").first.click()
            expect(page.locator("#delivery-status")).to_have_text("dead")
            expect(page.locator("tr.attempt.failed")).to_contain_text("the ledger is down")
            server["broken"].unlink()
            page.click("button.replay")
            expect(page.locator(".flash.ok")).to_contain_text("Replayed")
            status = page.locator("#delivery-status")
            _reload_until(page, lambda: status.inner_text() == "done")
            expect(page.locator("tr.attempt.failed")).to_have_count(1)
            expect(page.locator("tr.attempt:not(.failed)")).to_have_count(2)  # audit, then ledger
            page.screenshot(path=shots / "delivery.png", full_page=True)
        finally:
            browser.close()
    for name in ("login", "catalog", "try-it", "deliveries", "delivery"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name


def _reload_until(page: Any, condition: Any, timeout: float = 15.0) -> None:
    """Workers run in the background: reload the page until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached after {timeout} s on {page.url}")
        time.sleep(0.2)
        page.reload()
