"""A complete example of testing your own handlers with dispatcher's test kit.

Copy this file next to your code and point it at your Dispatcher. Run it with
`pytest examples/test_with_dispatcher.py` (the project's own suite runs it too).

- `hooks.testing.sample_request(tag, **overrides)` builds the request for an
  event from the catalog's sample, signed the way the webhook verifies.
- `dispatcher.testing.client(hooks)` is an httpx client bound to the app that
  also runs its lifespan (start-up checks; the inbox workers in queued mode).
- The pytest plugin adds a `webhook_client` fixture: it tests the Dispatcher
  your `webhook_dispatcher` fixture returns (or your `webhook_dispatcher` ini option).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher import Dispatcher, Event, testing
from dispatcher.signatures import StandardWebhooks

pytestmark = pytest.mark.anyio
CATALOG = Path(__file__).parent / "catalog.json"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test secret; real ones live in env vars


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def received() -> list[Event]:
    return []


@pytest.fixture
def webhook_dispatcher(received: list[Event]) -> Dispatcher:
    """Your app would import its own Dispatcher here; this one is built from the example catalog."""
    hooks = Dispatcher.from_catalog(CATALOG)
    hooks.webhooks.update("payments", verify=StandardWebhooks(SECRET))

    @hooks.on("payments:new-transaction")
    async def record(event: Event) -> None:
        received.append(event)

    return hooks


async def test_a_signed_sample_reaches_its_handler(webhook_client, received) -> None:  # type: ignore[no-untyped-def]
    response = await webhook_client.send_event("payments:new-transaction", amount=1200)
    assert response.status_code == 200
    assert response.json()["event"] == "payments:new-transaction"
    assert received[0].payload["amount"] == 1200


async def test_an_unsigned_request_is_refused(webhook_client, received) -> None:  # type: ignore[no-untyped-def]
    response = await webhook_client.post("/payments", json={"event": "new-transaction"})
    assert response.status_code == 401
    assert response.json()["error"] == "missing_signature"
    assert received == []


async def test_sample_requests_can_be_sent_by_hand(webhook_dispatcher: Dispatcher) -> None:
    request = webhook_dispatcher.testing.sample_request("payments:refund", amount=10)
    assert "webhook-signature" in request.headers
    async with testing.client(webhook_dispatcher) as client:
        response = await client.post(request.path, content=request.body, headers=request.headers)
    assert response.json()["event"] == "payments:refund"
