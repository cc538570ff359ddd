"""The operator console at /_ui: access, catalog, try it, deliveries, replay, mounting."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from dispatcher import Dispatcher, Retry, testing
from dispatcher.console import INSTALL_HINT, build_console
from dispatcher.console.auth import COOKIE, SESSION_TTL, ConsoleAuth
from dispatcher.console.chart import deliveries_chart, per_minute_grid
from dispatcher.inbox.base import NewDelivery

from .processes import ROOT

pytestmark = pytest.mark.anyio

CATALOG = ROOT / "examples" / "standalone" / "catalog.json"
TOKEN = "console-token-for-tests"
SECRET = "whsec_never_shown_0123456789"


async def refund(event: Any) -> None:
    pass


async def every_payment(event: Any) -> None:
    pass


def make(**options: Any) -> Dispatcher:
    hooks = Dispatcher.from_catalog(CATALOG, console_token=TOKEN, **options)
    hooks.on("payments:refund", refund)
    hooks.on("payments:*", every_payment)
    return hooks


@pytest.fixture
async def client() -> AsyncIterator[testing.WebhookClient]:
    async with testing.client(make()) as http:
        yield http


async def login(http: httpx.AsyncClient, prefix: str = "") -> httpx.Response:
    return await http.post(f"{prefix}/_ui/login", data={"token": TOKEN, "next": "/_ui/catalog"})


def csrf_of(page: httpx.Response | str) -> str:
    text = page if isinstance(page, str) else page.text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', text)
    assert found, "no CSRF field on the page"
    return found.group(1)


# --- access ---------------------------------------------------------------------------------


async def test_console_is_off_without_a_token() -> None:
    hooks = Dispatcher.from_catalog(CATALOG)
    async with testing.client(hooks) as http:
        for path in ("/_ui", "/_ui/login", "/_ui/catalog"):
            response = await http.get(path)
            assert response.status_code == 404
            assert "console-token" in response.json()["detail"]


async def test_without_jinja2_the_console_answers_404_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "jinja2", None)  # import jinja2 now raises ImportError
    app = build_console(make())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/_ui/catalog")
    assert response.status_code == 404
    assert response.json()["detail"] == INSTALL_HINT
    assert "pip install 'webhook-dispatcher[ui]'" in INSTALL_HINT


async def test_pages_redirect_to_login_and_keep_where_you_were_going(
    client: testing.WebhookClient,
) -> None:
    for path in ("/_ui", "/_ui/catalog", "/_ui/try", "/_ui/deliveries", "/_ui/deliveries/x"):
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/_ui/login?next=")
    response = await client.get("/_ui/deliveries?status=dead&webhook=payments")
    assert response.headers["location"] == (
        "/_ui/login?next=%2F_ui%2Fdeliveries%3Fstatus%3Ddead%26webhook%3Dpayments"
    )
    page = await client.get(response.headers["location"])
    assert page.status_code == 200
    assert 'name="token"' in page.text
    assert 'value="/_ui/deliveries?status=dead&amp;webhook=payments"' in page.text


async def test_posts_without_a_session_are_forbidden(client: testing.WebhookClient) -> None:
    for path in ("/_ui/try", "/_ui/logout", "/_ui/deliveries/abc/replay"):
        response = await client.post(path, data={"csrf": "x"})
        assert response.status_code == 403, path


async def test_login_with_the_wrong_token_is_refused(client: testing.WebhookClient) -> None:
    response = await client.post("/_ui/login", data={"token": "nope", "next": "/_ui/catalog"})
    assert response.status_code == 401
    assert "not the console token" in response.text
    assert "set-cookie" not in response.headers
    assert (await client.get("/_ui/catalog")).status_code == 303


async def test_login_sets_a_strict_httponly_cookie_that_is_not_the_token(
    client: testing.WebhookClient,
) -> None:
    response = await login(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/_ui/catalog"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/_ui" in cookie
    assert "Secure" not in cookie  # plain http here; see the https test
    assert TOKEN not in cookie
    assert (await client.get("/_ui/catalog")).status_code == 200


async def test_login_over_https_marks_the_cookie_secure() -> None:
    async with testing.client(make(), base_url="https://testserver") as http:
        response = await login(http)
    assert "Secure" in response.headers["set-cookie"]


async def test_login_goes_to_the_page_asked_for_but_never_off_the_console(
    client: testing.WebhookClient,
) -> None:
    response = await client.post(
        "/_ui/login", data={"token": TOKEN, "next": "/_ui/deliveries?status=dead"}
    )
    assert response.headers["location"] == "/_ui/deliveries?status=dead"
    for evil in ("https://evil.example/", "//evil.example/_ui/", "/_ui/../../x", "/elsewhere"):
        response = await client.post("/_ui/login", data={"token": TOKEN, "next": evil})
        assert response.headers["location"] == "/_ui/catalog", evil
    # Logged in already: the login page forwards.
    response = await client.get("/_ui/login?next=/_ui/try")
    assert response.status_code == 303 and response.headers["location"] == "/_ui/try"


async def test_forged_or_expired_sessions_are_refused() -> None:
    hooks = make()
    async with testing.client(hooks) as http:
        forged = ConsoleAuth(lambda: "another token").new_session()
        http.cookies.set(COOKIE, forged, path="/_ui")
        assert (await http.get("/_ui/catalog")).status_code == 303
        http.cookies.clear()
        old = ConsoleAuth(lambda: TOKEN, clock=lambda: time.time() - SESSION_TTL - 5)
        http.cookies.set(COOKIE, old.new_session(), path="/_ui")
        assert (await http.get("/_ui/catalog")).status_code == 303
        http.cookies.clear()
        http.cookies.set(COOKIE, "garbage", path="/_ui")
        assert (await http.get("/_ui/catalog")).status_code == 303
        assert not ConsoleAuth(lambda: TOKEN).session_ok("1.é")  # not even ASCII
        fresh = ConsoleAuth(lambda: TOKEN).new_session()
        http.cookies.set(COOKIE, fresh, path="/_ui")
        assert (await http.get("/_ui/catalog")).status_code == 200


async def test_changing_the_token_ends_sessions(client: testing.WebhookClient) -> None:
    await login(client)
    client.hooks.console_token = "rotated"
    assert (await client.get("/_ui/catalog")).status_code == 303


async def test_logout_needs_csrf_and_clears_the_cookie(client: testing.WebhookClient) -> None:
    await login(client)
    page = await client.get("/_ui/catalog")
    assert (await client.post("/_ui/logout", data={"csrf": "0" * 64})).status_code == 403
    assert (await client.get("/_ui/catalog")).status_code == 200
    response = await client.post("/_ui/logout", data={"csrf": csrf_of(page)})
    assert response.status_code == 303
    assert response.headers["location"] == "/_ui/login"
    assert 'dispatcher_console=""' in response.headers["set-cookie"]
    assert (await client.get("/_ui/catalog")).status_code == 303


async def test_home_goes_to_the_catalog(client: testing.WebhookClient) -> None:
    await login(client)
    response = await client.get("/_ui")
    assert response.status_code == 303 and response.headers["location"] == "/_ui/catalog"


async def test_static_css_is_served_by_the_package_and_pages_are_locked_down(
    client: testing.WebhookClient,
) -> None:
    css = await client.get("/_ui/static/console.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    page = await client.get("/_ui/login")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "style-src 'self'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text and "http://" not in page.text.replace("http://www.w3", "")


async def test_oversized_or_non_form_posts_are_refused(client: testing.WebhookClient) -> None:
    response = await client.post("/_ui/login", data={"token": "x" * 20_000})
    assert response.status_code == 413
    response = await client.post("/_ui/login", json={"token": TOKEN})
    assert response.status_code == 415


# --- catalog --------------------------------------------------------------------------------


async def test_catalog_shows_webhooks_events_selectors_samples_and_handlers(
    client: testing.WebhookClient,
) -> None:
    await login(client)
    page = (await client.get("/_ui/catalog")).text
    for text in ("Payments", "GitHub", "payments:refund", "A transaction was refunded",
                 "$Event{data}{object}{type}", "&#34;dispute.opened&#34;",
                 "$Header{X-GitHub-Event}", "&#34;push&#34;", "POST /payments",
                 "$Header{X-GitHub-Delivery}"):  # fmt: skip
        assert text in page, text
    # The sample, pretty-printed (two-space indent), and the handlers of each event.
    assert "\n  &#34;transaction_id&#34;: &#34;1229100110101-192920101&#34;," in page
    refund_row = _row(page, "event-payments:refund")
    assert "tests.test_console.refund" in refund_row
    assert "tests.test_console.every_payment" in refund_row and "payments:*" in refund_row
    assert "from the sample" in refund_row
    issue_row = _row(page, "event-github:issue-opened")
    assert "$Header{x-github-event}</code> = <code>&#34;issues&#34;" in issue_row
    assert "from the sample" not in issue_row  # its selector_value is explicit


async def test_catalog_makes_events_without_handlers_stand_out(
    client: testing.WebhookClient,
) -> None:
    await login(client)
    page = (await client.get("/_ui/catalog")).text
    assert "4 without handlers" in page  # the four github events
    assert 'class="event unhandled" id="event-github:push"' in page
    assert "no handler" in _row(page, "event-github:push")
    assert 'class="event" id="event-payments:refund"' in page
    assert 'id="events-without-handlers"' in page


async def test_catalog_makes_handlers_without_events_stand_out(
    client: testing.WebhookClient,
) -> None:
    await login(client)
    assert 'id="orphans"' not in (await client.get("/_ui/catalog")).text
    # check() refuses these at start-up; a catalog change at run time can still orphan one.
    client.hooks.webhooks.events.delete("payments:refund")
    client.hooks.on_unmatched("shop", refund)
    page = (await client.get("/_ui/catalog")).text
    orphans = page[page.index('id="orphans"') :]
    assert "Handlers without events" in orphans
    assert "<code>payments:refund</code>" in orphans
    assert "<code>on_unmatched shop</code>" in orphans
    assert "tests.test_console.refund" in orphans


async def test_catalog_shows_the_signature_scheme_but_never_its_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOP_WEBHOOK_SECRET", SECRET)
    hooks = make()
    hooks.webhooks.create(
        tag="shop", name="Shop", description="Shop events",
        verify={"scheme": "shopify", "secret_env": "SHOP_WEBHOOK_SECRET"},
    )  # fmt: skip
    async with testing.client(hooks) as http:
        await login(http)
        page = (await http.get("/_ui/catalog")).text
    shop = page[page.index('id="webhook-shop"') :]
    assert "scheme: shopify" in shop and "SHOP_WEBHOOK_SECRET" in shop
    assert SECRET not in page


# --- try it ---------------------------------------------------------------------------------


async def test_try_it_prefills_an_events_sample_with_its_header_values(
    client: testing.WebhookClient,
) -> None:
    await login(client)
    page = (await client.get("/_ui/try?event=github:push")).text
    assert '<option value="github" selected>' in page
    assert "x-github-event: push" in page
    assert "&#34;ref&#34;: &#34;refs/heads/main&#34;" in page


async def test_try_it_matches_a_pasted_payload_with_headers_and_runs_nothing() -> None:
    ran: list[Any] = []
    hooks = make()
    hooks.on("github:issue-opened", lambda event: ran.append(event))
    async with testing.client(hooks) as http:
        await login(http)
        csrf = csrf_of(await http.get("/_ui/try"))
        response = await http.post("/_ui/try", data={
            "csrf": csrf, "webhook": "github", "query": "",
            "headers": "Content-Type: application/json\nX-GitHub-Event: issues",
            "payload": '{"action": "opened", "issue": {"number": 1}}',
        })  # fmt: skip
    assert response.status_code == 200
    result = response.text[response.text.index('id="result"') :]
    assert '<code class="matched">github:issue-opened</code>' in result
    assert "tests.test_console.test_try_it_matches" in result  # the lambda's qualname
    assert ran == []


async def test_try_it_without_the_header_matches_nothing_and_says_what_it_found(
    client: testing.WebhookClient,
) -> None:
    await login(client)
    csrf = csrf_of(await client.get("/_ui/try"))
    response = await client.post("/_ui/try", data={
        "csrf": csrf, "webhook": "github", "headers": "", "query": "",
        "payload": '{"action": "opened"}',
    })  # fmt: skip
    result = response.text[response.text.index('id="result"') :]
    assert "No event of <code>github</code> matches" in result
    assert "200 <code>unmatched</code>" in result
    assert '$Header{x-github-event}</code> = <span class="muted">nothing' in result
    assert "$Event{action}</code> = <code>&#34;opened&#34;" in result


async def test_try_it_reads_form_bodies_and_query_strings_as_the_receiver_does() -> None:
    hooks = make()
    hooks.webhooks.create(tag="sms", name="SMS", description="Texts")
    hooks.webhooks.events.create(
        tag="sms:inbound", name="Inbound", description="A text came in",
        selector="$Query{kind},$Event{Status}", sample={"Status": "received"},
        selector_value={"$Query{kind}": "sms", "$Event{Status}": "received"},
    )  # fmt: skip
    async with testing.client(hooks) as http:
        await login(http)
        csrf = csrf_of(await http.get("/_ui/try"))
        response = await http.post("/_ui/try", data={
            "csrf": csrf, "webhook": "sms", "query": "?kind=sms",
            "headers": "content-type: application/x-www-form-urlencoded",
            "payload": "Status=received&Body=hi",
        })  # fmt: skip
    assert '<code class="matched">sms:inbound</code>' in response.text


async def test_try_it_explains_bad_input(client: testing.WebhookClient) -> None:
    await login(client)
    csrf = csrf_of(await client.get("/_ui/try"))
    base = {"csrf": csrf, "webhook": "payments", "headers": "", "query": ""}
    response = await client.post("/_ui/try", data={**base, "payload": "{not json"})
    assert response.status_code == 400 and "is not valid JSON" in response.text
    response = await client.post(
        "/_ui/try", data={**base, "headers": "no colon here", "payload": "{}"}
    )
    assert response.status_code == 400 and "header line 1 is not" in response.text
    response = await client.post("/_ui/try", data={**base, "webhook": "paymnts", "payload": "{}"})
    assert response.status_code == 400 and "no webhook" in response.text


async def test_try_it_needs_the_csrf_token(client: testing.WebhookClient) -> None:
    await login(client)
    data = {"webhook": "payments", "headers": "", "query": "", "payload": "{}"}
    assert (await client.post("/_ui/try", data=data)).status_code == 403
    assert (await client.post("/_ui/try", data={**data, "csrf": "f" * 64})).status_code == 403


# --- deliveries -----------------------------------------------------------------------------


async def test_deliveries_in_inline_mode_explain_how_to_keep_them(
    client: testing.WebhookClient,
) -> None:
    await login(client)
    page = (await client.get("/_ui/deliveries")).text
    assert 'id="inline-notice"' in page
    assert "--inbox sqlite:///inbox.db" in page
    response = await client.get("/_ui/deliveries/anything")
    assert response.status_code == 303 and response.headers["location"] == "/_ui/deliveries"


async def _seed(store: Any) -> float:
    """Four deliveries, a minute apart: done, retrying, dead, pending (newest last)."""
    now = time.time()
    for i, name in enumerate(("done", "retrying", "dead", "pending")):
        await store.add(NewDelivery(
            id=f"d-{name}", webhook="payments", event="payments:refund" if i < 3 else None,
            idempotency_key=None, body=b'{"event": "refund", "amount": 5000}',
            headers=(("content-type", "application/json"), ("authorization", "Bearer s3cr3t"),
                     ("x-signature", "sha256=abc")),
            query="token=s3cr3t&page=2", received_at=now - 180 + 60 * i,
            handlers=("payments:refund tests.refund",),
        ))  # fmt: skip
    for task in await store.claim("worker-a", 10, 30.0):
        if task.delivery_id == "d-done":
            await store.complete(task)
        elif task.delivery_id == "d-retrying":
            await store.fail(task, "TimeoutError: upstream slow", now + 600)
        elif task.delivery_id == "d-dead":
            await store.fail(task, "RuntimeError: card declined", None)
        else:
            await store.renew(task, 30.0)  # still running
    return now


@pytest.fixture
async def queued() -> AsyncIterator[testing.WebhookClient]:
    hooks = make(inbox="memory://", concurrency=0)  # no workers: the test drives the store
    async with testing.client(hooks) as http:
        await _seed(hooks.inbox.store)  # type: ignore[union-attr]
        await login(http)
        yield http


def _ids(page: str) -> list[str]:
    return re.findall(r'href="/_ui/deliveries/(d-[a-z]+)"', page)


async def test_deliveries_list_newest_first_with_status_attempts_and_errors(
    queued: testing.WebhookClient,
) -> None:
    page = (await queued.get("/_ui/deliveries")).text
    assert _ids(page) == ["d-pending", "d-dead", "d-retrying", "d-done"]
    assert "RuntimeError: card declined" in page and "TimeoutError: upstream slow" in page
    assert '<span class="status retrying">retrying</span>' in page
    assert '<span class="status dead">dead</span>' in page
    assert "unmatched" in _row(page, "", 'href="/_ui/deliveries/d-pending"')
    # Replay buttons on dead deliveries only (a retrying one is still in flight).
    assert page.count('class="replay"') == 1
    assert 'action="/_ui/deliveries/d-dead/replay"' in page


async def test_deliveries_filter_by_status_webhook_and_event(
    queued: testing.WebhookClient,
) -> None:
    async def ids(query: str) -> list[str]:
        return _ids((await queued.get(f"/_ui/deliveries?{query}")).text)

    assert await ids("status=failed") == ["d-dead", "d-retrying"]
    assert await ids("status=dead") == ["d-dead"]
    assert await ids("status=done") == ["d-done"]
    assert await ids("status=pending") == ["d-pending", "d-retrying"]
    assert await ids("event=payments:refund") == ["d-dead", "d-retrying", "d-done"]
    assert await ids("webhook=github") == []
    assert await ids("webhook=payments&status=failed&event=payments:refund") == [
        "d-dead",
        "d-retrying",
    ]
    assert await ids("status=bogus&limit=zz") == ["d-pending", "d-dead", "d-retrying", "d-done"]
    page = (await queued.get("/_ui/deliveries?status=failed")).text
    assert '<option value="failed" selected>' in page


async def test_deliveries_page_draws_the_last_hour_per_minute_as_svg(
    queued: testing.WebhookClient,
) -> None:
    page = (await queued.get("/_ui/deliveries")).text
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert 'class="chart"' in svg and "Deliveries per minute by status" in svg
    assert svg.count('<rect class="bar') == 4  # one delivery in each of four minutes
    for status in ("done", "pending", "dead"):
        assert f'class="bar {status}"' in svg
    assert "1 dead" in svg  # the hover title of the dead one's minute
    assert "done 1" in page and "pending 2" in page and "dead 1" in page  # the legend


async def test_delivery_detail_shows_attempts_errors_timings_and_hides_credentials(
    queued: testing.WebhookClient,
) -> None:
    response = await queued.get("/_ui/deliveries/d-dead")
    assert response.status_code == 200
    page = response.text
    assert '<span class="status dead" id="delivery-status">dead</span>' in page
    assert '<code>tests.refund</code> <span class="via">via <code>payments:refund</code>' in page
    assert '<code class="nowrap">worker-a</code>' in page
    assert '<pre class="error">RuntimeError: card declined</pre>' in page
    assert re.search(r'<td class="when">\d+\.\d ms</td>', page)  # how long the attempt took
    assert "&#34;amount&#34;: 5000" in page  # the body, pretty-printed
    assert "s3cr3t" not in page  # Authorization header and token= query value
    assert "[redacted]" in page and "sha256=abc" in page and "<code>2</code>" in page
    assert 'action="/_ui/deliveries/d-dead/replay"' in page


async def test_delivery_detail_of_a_retrying_delivery_offers_no_replay(
    queued: testing.WebhookClient,
) -> None:
    page = (await queued.get("/_ui/deliveries/d-retrying")).text
    assert '<span class="status retrying" id="delivery-status">retrying</span>' in page
    assert 'class="replay"' not in page
    assert "TimeoutError: upstream slow" in page


async def test_unknown_delivery_is_404(queued: testing.WebhookClient) -> None:
    response = await queued.get("/_ui/deliveries/nope")
    assert response.status_code == 404 and "No delivery &#39;nope&#39;" in response.text
    csrf = csrf_of(await queued.get("/_ui/deliveries"))
    response = await queued.post("/_ui/deliveries/nope/replay", data={"csrf": csrf})
    assert response.status_code == 404


async def test_replay_needs_the_csrf_token(queued: testing.WebhookClient) -> None:
    response = await queued.post("/_ui/deliveries/d-dead/replay", data={})
    assert response.status_code == 403
    response = await queued.post("/_ui/deliveries/d-dead/replay", data={"csrf": "a" * 64})
    assert response.status_code == 403
    store = queued.hooks.inbox.store  # type: ignore[union-attr]
    assert (await store.get("d-dead"))["status"] == "dead"


async def test_replay_puts_a_dead_delivery_back_in_the_queue(
    queued: testing.WebhookClient,
) -> None:
    csrf = csrf_of(await queued.get("/_ui/deliveries/d-dead"))
    response = await queued.post("/_ui/deliveries/d-dead/replay", data={"csrf": csrf})
    assert response.status_code == 303
    assert response.headers["location"] == "/_ui/deliveries/d-dead?replayed=1"
    page = (await queued.get(response.headers["location"])).text
    assert "Replayed: its handlers run again." in page
    store = queued.hooks.inbox.store  # type: ignore[union-attr]
    found = await store.get("d-dead")
    assert found["status"] == "pending" and found["tasks"][0]["series"] == 1
    # In flight now: a second replay does nothing, and says so.
    response = await queued.post("/_ui/deliveries/d-dead/replay", data={"csrf": csrf})
    assert response.headers["location"].endswith("?replayed=0")
    assert "Nothing to replay" in (await queued.get(response.headers["location"])).text


async def test_replayed_delivery_runs_again_and_succeeds() -> None:
    """With real workers: a handler fails once (dead, no retries), is fixed, is replayed."""
    broken = True

    async def flaky(event: Any) -> None:
        if broken:
            raise RuntimeError("the ledger is down")

    hooks = Dispatcher.from_catalog(CATALOG, console_token=TOKEN, inbox="memory://")
    hooks.on("payments:refund", flaky, retry=Retry(max_attempts=1))
    async with testing.client(hooks) as http:
        assert (await http.send_event("payments:refund")).status_code == 202
        await http.drain()
        await login(http)
        page = (await http.get("/_ui/deliveries?status=failed")).text
        [delivery_id] = re.findall(r'href="/_ui/deliveries/([0-9a-f]+)"', page)
        assert "RuntimeError: the ledger is down" in page
        broken = False
        csrf = csrf_of(page)
        await http.post(f"/_ui/deliveries/{delivery_id}/replay", data={"csrf": csrf})
        await http.drain()
        page = (await http.get(f"/_ui/deliveries/{delivery_id}")).text
    assert '<span class="status done" id="delivery-status">done</span>' in page
    assert page.count('class="attempt failed"') == 1 and page.count('class="attempt"') == 1
    assert page.count('<pre class="error">') == 1  # in the attempt; the done task shows none


# --- mounted under a prefix -----------------------------------------------------------------


async def test_mounted_under_a_prefix_every_link_keeps_the_prefix() -> None:
    hooks = make(inbox="memory://", concurrency=0)
    parent = Starlette(routes=[Mount("/webhooks", app=hooks)], lifespan=hooks.lifespan)
    async with testing.client(hooks, parent, prefix="/webhooks") as http:
        await _seed(hooks.inbox.store)  # type: ignore[union-attr]
        response = await http.get("/webhooks/_ui/catalog")
        assert response.status_code == 303
        assert response.headers["location"] == "/webhooks/_ui/login?next=%2F_ui%2Fcatalog"
        login_page = (await http.get(response.headers["location"])).text
        assert 'action="/webhooks/_ui/login"' in login_page
        assert 'href="/webhooks/_ui/static/console.css"' in login_page
        response = await login(http, "/webhooks")
        assert response.headers["location"] == "/webhooks/_ui/catalog"
        assert "Path=/webhooks/_ui" in response.headers["set-cookie"]
        page = (await http.get("/webhooks/_ui/catalog")).text
        for link in ('href="/webhooks/_ui/try"', 'href="/webhooks/_ui/deliveries"',
                     'action="/webhooks/_ui/logout"', "POST /webhooks/payments",
                     'href="/webhooks/_ui/try?event=payments%3Arefund"'):  # fmt: skip
            assert link in page, link
        assert 'href="/_ui' not in page and 'action="/_ui' not in page
        page = (await http.get("/webhooks/_ui/deliveries")).text
        assert 'href="/webhooks/_ui/deliveries/d-dead"' in page
        assert 'action="/webhooks/_ui/deliveries/d-dead/replay"' in page
        assert (await http.get("/webhooks/_ui/static/console.css")).status_code == 200
        response = await http.post(
            "/webhooks/_ui/deliveries/d-dead/replay", data={"csrf": csrf_of(page)}
        )
        assert response.headers["location"] == "/webhooks/_ui/deliveries/d-dead?replayed=1"


# --- the chart on its own -------------------------------------------------------------------


def test_chart_keeps_the_last_sixty_minutes_and_stacks_statuses() -> None:
    now = 1_700_000_000.0
    minute = int(now // 60) * 60
    rows = [
        (minute, "done", 3),
        (minute, "dead", 1),
        (minute - 59 * 60, "pending", 2),
        (minute - 60 * 60, "done", 9),  # 61 minutes ago: off the chart
        (minute, "leased", 5),  # not a delivery status: ignored
    ]
    minutes, counts = per_minute_grid(rows, now)
    assert len(minutes) == 60 and minutes[-1] == minute and minutes[0] == minute - 59 * 60
    assert counts["done"][-1] == 3 and counts["dead"][-1] == 1 and counts["pending"][0] == 2
    assert sum(counts["done"]) == 3
    svg = str(deliveries_chart(rows, now))
    assert svg.count("<rect") == 3
    assert ">4</text>" in svg  # the scale's top is the busiest minute
    assert "3 done, 1 dead" in svg


def test_chart_of_an_empty_hour_has_no_bars() -> None:
    svg = str(deliveries_chart([], 1_700_000_000.0))
    assert svg.startswith("<svg") and "<rect" not in svg


def _row(page: str, element_id: str, marker: str | None = None) -> str:
    """The table row holding ``id="element_id"`` (or ``marker``)."""
    at = page.index(marker or f'id="{element_id}"')
    return page[page.rindex("<tr", 0, at) : page.index("</tr>", at)]
