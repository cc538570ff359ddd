"""Trust at the receiver: signatures, replay protection, idempotency."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher import Dispatcher, Event, ValidationError, testing
from dispatcher.idempotency import IdempotencyGuard
from dispatcher.signatures import GitHub, Hmac, Shopify, Slack, StandardWebhooks, Stripe

pytestmark = pytest.mark.anyio

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SCHEMES = {
    "standard": StandardWebhooks(WHSEC),
    "stripe": Stripe("whsec_stripe_test"),
    "github": GitHub("It's a Secret to Everybody"),
    "shopify": Shopify("shopify-secret"),
    "slack": Slack("8f742231b10e8888abcd99yyyzzz85a5"),
    "partner": Hmac(
        "partner-secret", header="X-Partner-Signature", encoding="base64", prefix="sha256="
    ),
}


def make(**webhook: Any) -> tuple[Dispatcher, list[Event]]:
    hooks = Dispatcher()
    hooks.webhooks.create(tag="w", name="W", description="d", **webhook)
    hooks.webhooks.events.create(
        name="e", tag="w:e", description="d", selector="$Event{type}",
        sample={"type": "e", "id": "evt_1"},
    )  # fmt: skip
    seen: list[Event] = []
    hooks.on("w:e", seen.append)
    return hooks, seen


@pytest.mark.parametrize("name", sorted(SCHEMES))
async def test_signed_requests_pass_and_unsigned_or_tampered_ones_get_401(name: str) -> None:
    hooks, seen = make(verify=SCHEMES[name])
    body = b'{"type": "e", "id": "evt_1"}'
    headers = {"content-type": "application/json", **SCHEMES[name].sign(body)}
    async with testing.client(hooks) as client:
        assert (await client.post("/w", content=body, headers=headers)).status_code == 200
        response = await client.post(
            "/w", content=body, headers={"content-type": "application/json"}
        )
        assert (response.status_code, response.json()["error"]) == (401, "missing_signature")
        tampered = body.replace(b"evt_1", b"evt_2")
        response = await client.post("/w", content=tampered, headers=headers)
        assert (response.status_code, response.json()["error"]) == (401, "invalid_signature")
    assert len(seen) == 1


@pytest.mark.parametrize("name", ["standard", "stripe", "slack"])
async def test_stale_and_future_timestamps_get_401(name: str) -> None:
    import time

    hooks, seen = make(verify=SCHEMES[name])
    body = b'{"type": "e"}'
    for skew in (-301, 301):
        headers = SCHEMES[name].sign(body, timestamp=time.time() + skew)
        result = await hooks.dispatch("w", body, headers=headers)
        assert (result.http_status, result.error) == (401, "stale_timestamp")
    assert seen == []


async def test_the_log_says_why_but_never_the_secret(caplog: Any) -> None:
    hooks, _ = make(verify=GitHub("super-secret-value"))
    body = b'{"type": "e"}'
    good = GitHub("super-secret-value").sign(body)["X-Hub-Signature-256"]
    caplog.set_level(logging.INFO, logger="dispatcher")
    async with testing.client(hooks) as client:
        await client.post("/w", content=body, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert "invalid_signature" in caplog.text
    assert "super-secret-value" not in caplog.text and good[7:] not in caplog.text


async def test_another_webhooks_secret_never_reaches_this_webhooks_handler() -> None:
    hooks = Dispatcher()
    ran: dict[str, int] = {"a": 0, "b": 0}
    for tag, secret in (("a", "secret-a"), ("b", "secret-b")):
        hooks.webhooks.create(tag=tag, name=tag, description="d", verify=GitHub(secret))
        hooks.webhooks.events.create(
            name="e", tag=f"{tag}:e", description="d", selector="$Event{type}", sample={"type": "e"}
        )
        hooks.on(f"{tag}:e", lambda event, tag=tag: ran.__setitem__(tag, ran[tag] + 1))
    body = b'{"type": "e"}'
    signed_for_a = GitHub("secret-a").sign(body)
    assert (await hooks.dispatch("b", body, headers=signed_for_a)).http_status == 401
    assert (await hooks.dispatch("a", body, headers=signed_for_a)).http_status == 200
    assert ran == {"a": 1, "b": 0}


async def test_catalog_files_name_secrets_by_environment_variable(
    tmp_path: Path, monkeypatch: Any
) -> None:
    catalog = {
        "webhooks": [
            {
                "tag": "stripe", "name": "Stripe", "description": "d",
                "verify": {"scheme": "stripe", "secret_env": "STRIPE_WEBHOOK_SECRET"},
                "events": [{"tag": "paid", "name": "Paid", "description": "d",
                            "selector": "$Event{type}", "sample": {"type": "charge.succeeded", "id": "evt_1"}}],
            }
        ]
    }  # fmt: skip
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    with pytest.raises(ValidationError, match="STRIPE_WEBHOOK_SECRET"):
        Dispatcher.from_catalog(path)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_from_env")
    hooks = Dispatcher.from_catalog(path)
    request = hooks.testing.sample_request("stripe:paid")
    result = await hooks.dispatch("stripe", request.body, request.headers)
    assert result.http_status == 200 and result.event == "stripe:paid"
    hooks.save_catalog(tmp_path / "again.json")
    saved = json.loads((tmp_path / "again.json").read_text())
    assert saved["webhooks"][0]["verify"] == {
        "scheme": "stripe",
        "secret_env": "STRIPE_WEBHOOK_SECRET",
    }
    assert "whsec_from_env" not in (tmp_path / "again.json").read_text()


def test_a_literal_secret_cannot_be_saved_to_a_catalog_file(tmp_path: Path) -> None:
    hooks, _ = make(verify=Stripe("whsec_literal"))
    with pytest.raises(ValidationError, match="from_env"):
        hooks.save_catalog(tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()


# --- idempotency ---------------------------------------------------------------------------------


async def test_a_seen_key_is_a_duplicate_and_dispatches_nothing() -> None:
    hooks, seen = make(idempotency_key="$Event{id}")
    first = await hooks.dispatch("w", {"type": "e", "id": "evt_1"})
    again = await hooks.dispatch("w", {"type": "e", "id": "evt_1"})
    other = await hooks.dispatch("w", {"type": "e", "id": "evt_2"})
    assert (first.status, again.status, other.status) == ("processed", "duplicate", "processed")
    assert again.http_status == 200 and again.body()["status"] == "duplicate"
    assert len(seen) == 2


async def test_fifty_concurrent_copies_dispatch_exactly_once() -> None:
    hooks, _ = make(idempotency_key="$Header{X-Delivery}")
    runs: list[str] = []

    @hooks.on("w:e")
    async def slow(event: Event) -> None:
        runs.append(event.id)
        await asyncio.sleep(0.05)

    async with testing.client(hooks) as client:
        responses = await asyncio.gather(
            *(
                client.post("/w", json={"type": "e"}, headers={"X-Delivery": "d-1"})
                for _ in range(50)
            )
        )
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses == ["duplicate"] * 49 + ["processed"]
    assert len(runs) == 1


async def test_a_copy_waits_for_a_failed_first_then_runs_and_failures_are_not_seen() -> None:
    hooks, _ = make(idempotency_key="$Event{id}")
    attempts: list[int] = []
    errors: list[str] = []

    @hooks.on("w:e")
    async def flaky(event: Event) -> None:
        attempts.append(len(attempts))
        await asyncio.sleep(0.05)
        if len(attempts) == 1:
            raise RuntimeError("first fails")

    hooks.on_error(lambda event, error: errors.append(str(error)))
    first, second = await asyncio.gather(
        hooks.dispatch("w", {"type": "e", "id": "x"}), hooks.dispatch("w", {"type": "e", "id": "x"})
    )
    assert (first.status, second.status) == ("failed", "processed")
    assert len(attempts) == 2
    assert errors == ["first fails"]
    third = await hooks.dispatch("w", {"type": "e", "id": "x"})
    assert third.status == "duplicate"


async def test_a_failed_delivery_runs_again_on_the_providers_retry() -> None:
    hooks, _ = make(idempotency_key="$Event{id}")
    errors: list[Event] = []
    hooks.on("w:e", lambda e: 1 / 0)
    hooks.on_error(lambda event, error: errors.append(event))
    for _ in range(3):
        assert (await hooks.dispatch("w", {"type": "e", "id": "y"})).status == "failed"
    assert len(errors) == 3


@pytest.mark.parametrize(
    ("scheme", "header"), [("standard", "webhook-id"), ("github", "X-GitHub-Delivery")]
)
async def test_schemes_with_a_delivery_id_use_it_by_default(scheme: str, header: str) -> None:
    hooks, seen = make(verify=SCHEMES[scheme])
    body = b'{"type": "e"}'
    headers = SCHEMES[scheme].sign(body)
    assert (await hooks.dispatch("w", body, headers)).status == "processed"
    assert (await hooks.dispatch("w", body, headers)).status == "duplicate"
    fresh = SCHEMES[scheme].sign(body)
    assert fresh[header] != headers[header]
    assert (await hooks.dispatch("w", body, fresh)).status == "processed"
    assert len(seen) == 2


def test_the_guard_is_bounded_and_forgets_after_the_window() -> None:
    now = [0.0]
    guard = IdempotencyGuard(ttl=10.0, max_keys=3, clock=lambda: now[0])

    async def run(key: str) -> bool:
        if not await guard.acquire("w", key):
            return False
        guard.release("w", key, succeeded=True)
        return True

    for key in "abcd":
        assert asyncio.run(run(key))  # a new event loop each time: the guard must not care
    assert len(guard) == 3
    assert asyncio.run(run("a"))  # "a" was evicted, oldest first
    assert not asyncio.run(run("d"))
    now[0] = 11.0
    assert asyncio.run(run("d"))  # past the window


# --- what a forger can and cannot do -------------------------------------------------------------

MUTATION = st.one_of(
    st.tuples(st.just("none"), st.just(0)),
    st.tuples(st.just("flip"), st.integers(0, 10_000)),
    st.tuples(st.just("insert"), st.integers(0, 10_000)),
    st.tuples(st.just("delete"), st.integers(0, 10_000)),
    st.tuples(st.just("header"), st.integers(0, 10_000)),
    st.tuples(st.just("drop"), st.integers(0, 10_000)),
    # Just outside the 300 s tolerance, with a margin: Stripe and Slack sign whole seconds,
    # so ±301 left under a second between the truncated timestamp and a slow first call.
    st.tuples(st.just("time"), st.sampled_from([-10_000, -310, 310, 10_000])),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(["standard", "stripe", "github", "slack"]),
    text=st.text(min_size=1, max_size=40),
    mutation=MUTATION,
)
def test_only_the_exact_signed_bytes_within_tolerance_are_dispatched(
    name: str, text: str, mutation: tuple[str, int]
) -> None:
    import time

    scheme = SCHEMES[name]
    hooks, seen = make(verify=scheme)
    body = json.dumps({"type": "e", "note": text}).encode()
    kind, at = mutation
    headers = scheme.sign(body, timestamp=time.time() + (at if kind == "time" else 0))
    signed_names = sorted(headers)
    if kind == "flip":
        i = at % len(body)
        body = body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :]
    elif kind == "insert":
        i = at % (len(body) + 1)
        body = body[:i] + b" " + body[i:]
    elif kind == "delete":
        i = at % len(body)
        body = body[:i] + body[i + 1 :]
    elif kind in ("header", "drop"):
        target = signed_names[at % len(signed_names)]
        if target.lower() in ("webhook-id", "x-github-delivery"):
            target = next(n for n in signed_names if "sig" in n.lower())
        if kind == "drop":
            del headers[target]
        else:
            value = headers[target]
            j = at % len(value)
            headers[target] = value[:j] + ("0" if value[j] != "0" else "1") + value[j + 1 :]
    result = asyncio.run(hooks.dispatch("w", body, headers))
    if kind == "none" or (kind == "time" and name == "github"):  # GitHub signs no timestamp
        assert result.http_status == 200, result
        assert len(seen) == 1
    else:
        assert result.http_status == 401, (kind, result)
        assert seen == []
