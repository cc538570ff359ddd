"""Handler registration, resolution, the Event handlers receive, dispatch() without HTTP."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import UTC
from typing import Any

import pytest

from dispatcher import (
    Dispatcher,
    DispatchResult,
    Event,
    HandlerRegistrationError,
    Router,
    ValidationError,
    pipeline,
)

pytestmark = pytest.mark.anyio


def catalog() -> Dispatcher:
    hooks = Dispatcher()
    hooks.webhooks.create(tag="payments", name="Payments", description="d")
    hooks.webhooks.create(tag="github", name="GitHub", description="d")
    for slug in ("paid", "refund"):
        hooks.webhooks.events.create(
            name=slug, tag=f"payments:{slug}", description="d", selector="$Event{event}",
            sample={"event": slug},
        )  # fmt: skip
    hooks.webhooks.events.create(
        name="push", tag="github:push", description="d", selector="$Header{X-GitHub-Event}",
        sample={}, selector_value="push",
    )  # fmt: skip
    return hooks


async def test_specific_wildcard_and_star_run_in_resolution_order() -> None:
    hooks = catalog()
    ran: list[str] = []

    @hooks.on("*")
    async def star(event: Event) -> None:
        ran.append("*")

    @hooks.on("payments:*")
    async def wildcard(event: Event) -> None:
        ran.append("payments:*")

    @hooks.on("payments:paid")
    async def specific(event: Event) -> None:
        ran.append("payments:paid")

    assert [h.pattern for h in hooks.router.resolve("payments", "payments:paid")] == [
        "payments:paid",
        "payments:*",
        "*",
    ]
    result = await hooks.dispatch("payments", {"event": "paid"})
    assert result.status == "processed" and result.http_status == 200
    assert sorted(ran) == ["*", "payments:*", "payments:paid"]
    assert [o.handler.rsplit(".", 1)[-1] for o in result.outcomes] == [
        "specific",
        "wildcard",
        "star",
    ]
    ran.clear()
    await hooks.dispatch("github", {}, headers={"X-GitHub-Event": "push"})
    assert ran == ["*"]


async def test_decorators_return_the_function_and_plain_calls_register() -> None:
    hooks = catalog()

    async def handler(event: Event) -> None:
        pass

    assert hooks.on("payments:paid")(handler) is handler
    assert hooks.on("payments:refund", handler) is handler
    assert hooks.on_unmatched()(handler) is handler
    assert hooks.on_unmatched("payments")(handler) is handler
    assert hooks.on_error(handler) is handler
    assert [h.func for h in hooks.router.resolve("payments", "payments:refund")] == [handler]


async def test_event_fields() -> None:
    hooks = catalog()
    seen: list[Event] = []
    hooks.on("payments:paid", seen.append)
    body = b'{"event": "paid", "amount": 5}'
    result = await hooks.dispatch(
        "payments", body, headers={"Content-Type": "application/json", "X-Trace": "t1"}, query="a=1"
    )
    (event,) = seen
    assert event.id == result.id and len(event.id) == 32
    assert (event.webhook, event.tag, event.name) == ("payments", "payments:paid", "paid")
    assert event.payload == {"event": "paid", "amount": 5}
    assert event.body == body
    assert event.headers["x-trace"] == event.headers["X-TRACE"] == "t1"
    with pytest.raises(TypeError):
        event.headers["x-trace"] = "changed"  # type: ignore[index]
    assert event.query["a"] == "1"
    assert event.received_at.tzinfo is UTC
    assert event.attempt == 1


def test_delivery_ids_are_32_hex_digits_rising_across_batches() -> None:
    new_id = pipeline._id_source(digits=1)  # batches of 16
    ids = [new_id() for _ in range(40)]  # across two batch boundaries
    assert all(len(i) == 32 and int(i, 16) >= 1 << 127 for i in ids)
    assert [int(i, 16) - int(ids[0], 16) for i in ids] == list(range(40))
    assert ids[0].endswith("0") and ids == sorted(ids)
    assert pipeline._id_source()()[:16] != new_id()[:16]  # each source its own random prefix


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_forked_process_makes_other_ids_than_its_parent() -> None:
    pipeline.new_id()  # a batch made before the fork
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        os.write(write, pipeline.new_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    theirs = os.read(read, 64).decode()
    os.close(read)
    assert len(theirs) == 32 and theirs[:16] != pipeline.new_id()[:16]


async def test_plain_functions_run_in_a_worker_thread() -> None:
    hooks = catalog()
    threads: list[threading.Thread] = []
    hooks.on("payments:paid", lambda event: threads.append(threading.current_thread()))
    await hooks.dispatch("payments", {"event": "paid"})
    assert threads and threads[0] is not threading.main_thread()


async def test_handlers_of_one_event_run_concurrently() -> None:
    hooks = catalog()
    first_started = asyncio.Event()
    second_started = asyncio.Event()

    @hooks.on("payments:paid")
    async def first(event: Event) -> None:
        first_started.set()
        await asyncio.wait_for(second_started.wait(), 2)

    @hooks.on("payments:*")
    async def second(event: Event) -> None:
        second_started.set()
        await asyncio.wait_for(first_started.wait(), 2)

    result = await hooks.dispatch("payments", {"event": "paid"})
    assert result.status == "processed"


async def test_a_failure_fails_the_delivery_and_every_failure_reaches_on_error() -> None:
    hooks = catalog()
    errors: list[tuple[str | None, str]] = []
    ran: list[str] = []

    @hooks.on("payments:paid")
    async def broken(event: Event) -> None:
        raise RuntimeError("boom")

    @hooks.on("payments:*")
    def also_broken(event: Event) -> None:
        raise KeyError("sync boom")

    @hooks.on("*")
    async def fine(event: Event) -> None:
        ran.append("fine")

    @hooks.on_error
    async def report(event: Event, error: Exception) -> None:
        errors.append((event.tag, type(error).__name__))

    result = await hooks.dispatch("payments", {"event": "paid"})
    assert (result.status, result.http_status, result.error) == ("failed", 500, "handler_failed")
    assert ran == ["fine"]
    assert sorted(errors) == [("payments:paid", "KeyError"), ("payments:paid", "RuntimeError")]
    assert [o.ok for o in result.outcomes] == [False, False, True]
    assert "boom" not in str(result.body())


async def test_a_failing_on_error_handler_is_logged_not_raised(caplog: Any) -> None:
    hooks = catalog()
    hooks.on("payments:paid", lambda event: 1 / 0)
    hooks.on_error(lambda event, error: [][1])
    result = await hooks.dispatch("payments", {"event": "paid"})
    assert result.http_status == 500
    assert "on_error handler" in caplog.text


async def test_unmatched_handlers_for_one_webhook_or_all() -> None:
    hooks = catalog()
    seen: list[tuple[str, str]] = []
    hooks.on_unmatched("payments", lambda e: seen.append(("payments", e.webhook)))
    hooks.on_unmatched(lambda e: seen.append(("any", e.webhook)))
    hooks.on("*", lambda e: seen.append(("star", e.webhook)))
    result = await hooks.dispatch("payments", {"event": "unknown"})
    assert (result.status, result.event, result.http_status) == ("unmatched", None, 200)
    assert sorted(seen) == [("any", "payments"), ("payments", "payments")]
    seen.clear()
    await hooks.dispatch("github", {})
    assert seen == [("any", "github")]


async def test_reject_mode_runs_nothing_for_unmatched() -> None:
    hooks = catalog()
    hooks.configure(unmatched="reject")
    ran: list[Event] = []
    hooks.on_unmatched(ran.append)
    result = await hooks.dispatch("payments", {"event": "unknown"})
    assert (result.http_status, result.error) == (422, "unmatched")
    assert ran == []


async def test_check_reports_unknown_tags_with_suggestions_and_catalog_may_come_later() -> None:
    hooks = Dispatcher()
    hooks.on("payments:paid", print)
    hooks.on("payments:*", print)
    hooks.on_unmatched("payments", print)
    with pytest.raises(HandlerRegistrationError) as raised:
        hooks.check()
    assert "3 handler registration(s)" in str(raised.value)
    hooks.webhooks.create(tag="payments", name="P", description="d")
    hooks.webhooks.events.create(
        name="p", tag="payments:paid", description="d", selector="$Event{e}", sample={"e": 1}
    )
    hooks.check()  # filled after the decorators ran: fine now
    hooks.on("payments:piad", print)
    with pytest.raises(HandlerRegistrationError, match="did you mean 'payments:paid'"):
        hooks.check()


@pytest.mark.parametrize("pattern", ["payments", "payments:", ":paid", "pay*:x", "payments:p*", ""])
def test_bad_patterns_are_refused_at_registration(pattern: str) -> None:
    with pytest.raises(ValidationError):
        Dispatcher().on(pattern, print)


def test_bare_webhook_pattern_suggests_the_wildcard() -> None:
    with pytest.raises(ValidationError, match=r"did you mean 'payments:\*'"):
        Dispatcher().on("payments", print)


async def test_routers_from_other_modules_are_included() -> None:
    router = Router()
    seen: list[str] = []

    @router.on("payments:paid")
    async def handler(event: Event) -> None:
        seen.append(event.tag or "")

    @router.on_error
    async def report(event: Event, error: Exception) -> None:
        pass

    hooks = catalog()
    hooks.include(router)
    await hooks.dispatch("payments", {"event": "paid"})
    assert seen == ["payments:paid"]
    assert hooks.router.error_handlers == [report]


async def test_the_same_function_twice_for_one_pattern_runs_once() -> None:
    hooks = catalog()
    seen: list[str] = []
    handler = seen.append
    hooks.on("payments:paid", handler)
    hooks.on("payments:paid", handler)
    await hooks.dispatch("payments", {"event": "paid"})
    assert len(seen) == 1


async def test_dispatch_result_of_an_unknown_webhook_and_a_bad_body() -> None:
    hooks = catalog()
    result = await hooks.dispatch("paymnts", {"event": "paid"})
    assert isinstance(result, DispatchResult)
    assert (result.http_status, result.error) == (404, "unknown_webhook")
    assert "did you mean 'payments'" in (result.detail or "")
    result = await hooks.dispatch("payments", b"{oops")
    assert (result.http_status, result.error) == (400, "invalid_json")


async def test_a_lone_async_handler_failing_reaches_on_error_and_metrics() -> None:
    # One async handler runs on the pipeline's shortest path: it must fail like any other.
    hooks = catalog()
    errors: list[tuple[str, str]] = []

    @hooks.on("payments:paid")
    async def broken(event: Event) -> None:
        raise RuntimeError("boom")

    hooks.on_error(lambda event, error: errors.append((event.id, str(error))))
    result = await hooks.dispatch("payments", {"event": "paid"})
    assert (result.status, result.http_status) == ("failed", 500)
    assert errors == [(result.id, "boom")]
    (outcome,) = result.outcomes
    assert not outcome.ok and isinstance(outcome.error, RuntimeError)
    assert outcome.handler.endswith("broken") and outcome.duration >= 0
    assert hooks.metrics.failures == {"payments:paid": 1}
