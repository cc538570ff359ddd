"""The ASGI receiver's response contract, through httpx.ASGITransport."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from dispatcher import Dispatcher, Event, testing

pytestmark = pytest.mark.anyio


def make(**options: Any) -> Dispatcher:
    hooks = Dispatcher(**options)
    hooks.webhooks.create(tag="payments", name="Payments", description="d")
    hooks.webhooks.events.create(
        name="paid", tag="payments:paid", description="d", selector="$Event{event}",
        sample={"event": "paid"},
    )  # fmt: skip
    hooks.webhooks.events.create(
        name="first", tag="payments:first", description="d", selector="$Event{[0]}",
        sample={"x": 1}, selector_value="first",
    )  # fmt: skip
    return hooks


async def post(hooks: Any, path: str = "/payments", **kwargs: Any) -> httpx.Response:
    async with testing.client(hooks) as client:
        return await client.post(path, **kwargs)


async def test_processed() -> None:
    hooks = make()
    seen: list[Event] = []
    hooks.on("payments:paid", seen.append)
    response = await post(hooks, json={"event": "paid"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {
        "id": seen[0].id,
        "webhook": "payments",
        "event": "payments:paid",
        "status": "processed",
    }


async def test_unmatched_accepts_or_rejects() -> None:
    response = await post(make(), json={"event": "other"})
    assert (response.status_code, response.json()["status"]) == (200, "unmatched")
    assert response.json()["event"] is None
    response = await post(make(unmatched="reject"), json={"event": "other"})
    assert (response.status_code, response.json()["error"]) == (422, "unmatched")


async def test_handler_failure_is_500_without_exception_text() -> None:
    hooks = make()

    @hooks.on("payments:paid")
    async def broken(event: Event) -> None:
        raise RuntimeError("secret internals")

    response = await post(hooks, json={"event": "paid"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "handler_failed" and len(body["id"]) == 32
    assert "secret internals" not in response.text and "Traceback" not in response.text


@pytest.mark.parametrize(
    ("content", "error", "detail"),
    [
        (b"", "empty_body", "empty"),
        (b"   \n", "empty_body", "empty"),
        (b"{oops", "invalid_json", "not valid JSON"),
        (b'{"a": "\xff"}', "invalid_json", "UTF-8"),
        (b"[" * 2000 + b"]" * 2000, "invalid_json", "depth limit"),
    ],
)
async def test_bad_bodies_are_400(content: bytes, error: str, detail: str) -> None:
    response = await post(make(), content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert detail in response.json()["detail"]


async def test_unknown_webhook_and_paths_are_404() -> None:
    hooks = make()
    response = await post(hooks, "/paymnts", json={})
    assert response.status_code == 404
    assert response.json() == {
        "error": "unknown_webhook",
        "detail": "no webhook 'paymnts'; did you mean 'payments'?",
    }
    assert (await post(hooks, "/payments/extra", json={})).status_code == 404
    assert (await post(hooks, "/_nothing", json={})).status_code == 404
    assert (await post(hooks, "/", json={})).status_code == 404


async def test_wrong_method_is_405_with_allow() -> None:
    async with testing.client(make()) as client:
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            response = await client.request(method, "/payments")
            assert response.status_code == 405
            assert response.headers["allow"] == "POST"
            assert response.json()["error"] == "method_not_allowed"


async def test_oversized_body_from_content_length_is_413() -> None:
    hooks = make(max_body_size=100)
    response = await post(hooks, content=b'{"event": "paid", "pad": "' + b"x" * 200 + b'"}')
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert (await post(hooks, json={"event": "paid"})).status_code == 200


async def test_oversized_streamed_body_is_refused_before_the_rest_is_read() -> None:
    hooks = make(max_body_size=1000)
    chunks = [b'{"pad": "' + b"x" * 400] * 10
    read: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        read.append(1)
        return {"type": "http.request", "body": chunks[len(read) - 1], "more_body": len(read) < 10}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/payments", "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json")],  # no Content-Length: chunked
    }  # fmt: skip
    await hooks.startup()
    await hooks(scope, receive, send)
    assert sent[0]["status"] == 413
    assert len(read) == 3  # 400, 800, 1200 bytes: stopped at the first chunk over the limit


async def test_streamed_body_declared_over_the_limit_is_refused_after_one_chunk() -> None:
    hooks = make(max_body_size=1000)
    read: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        read.append(1)
        return {"type": "http.request", "body": b'{"pad": "', "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/payments", "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"5000")],
    }  # fmt: skip
    await hooks.startup()
    await hooks(scope, receive, send)
    assert sent[0]["status"] == 413
    assert len(read) == 1  # the Content-Length said enough: nothing more was read


async def test_unsupported_content_type_is_415_and_missing_is_json() -> None:
    hooks = make()
    response = await post(
        hooks, content=b'{"event": "paid"}', headers={"content-type": "text/plain"}
    )
    assert (response.status_code, response.json()["error"]) == (415, "unsupported_media_type")
    response = await post(hooks, content=b'{"event": "paid"}', headers={"content-type": ""})
    assert response.status_code == 200
    response = await post(
        hooks,
        content=b'{"event": "paid"}',
        headers={"content-type": "application/cloudevents+json"},
    )
    assert response.json()["event"] == "payments:paid"


async def test_json_is_recognised_however_it_is_declared() -> None:
    hooks = make()
    for declared in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
        response = await post(
            hooks, content=b'{"event": "paid"}', headers={"content-type": declared}
        )
        assert response.json()["event"] == "payments:paid", declared
    # Declared twice, once as JSON: read as JSON (the receiver looks for the JSON pair
    # first), where joining the two values would have made it a 415.
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"event": "paid"}', "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"text/plain"), (b"content-type", b"application/json")]
    scope = {"type": "http", "method": "POST", "path": "/payments", "root_path": "",
             "query_string": b"", "headers": headers}  # fmt: skip
    await hooks.startup()
    await hooks(scope, receive, send)
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["event"] == "payments:paid"


async def test_checks_run_in_order() -> None:
    hooks = make(max_body_size=10)
    big = b"x" * 50
    async with testing.client(hooks) as client:
        assert (await client.post("/nope", content=big)).status_code == 404
        assert (await client.put("/payments", content=big)).status_code == 405
        response = await client.post(
            "/payments", content=big, headers={"content-type": "text/plain"}
        )
        assert response.status_code == 413
    hooks = make()
    response = await post(hooks, content=b"{bad", headers={"content-type": "text/plain"})
    assert response.status_code == 415


async def test_form_bodies() -> None:
    hooks = make()
    seen: list[Any] = []
    hooks.on("payments:*", lambda e: seen.append(e.payload))
    hooks.on_unmatched(lambda e: seen.append(e.payload))
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = await post(hooks, content=b"payload=%7B%22event%22%3A%22paid%22%7D", headers=form)
    assert response.json()["event"] == "payments:paid"
    response = await post(hooks, content=b"From=%2B15551234&Body=hi&To=a&To=b", headers=form)
    assert response.json()["status"] == "unmatched"
    assert seen == [{"event": "paid"}, {"From": "+15551234", "Body": "hi", "To": ["a", "b"]}]
    response = await post(hooks, content=b"payload=%7Bnot", headers=form)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_json")


async def test_arrays_and_scalars_are_payloads() -> None:
    hooks = make()
    response = await post(hooks, json=["first", 2])
    assert response.json()["event"] == "payments:first"
    response = await post(hooks, content=b"42", headers={"content-type": "application/json"})
    assert response.json()["status"] == "unmatched"


async def test_a_handler_may_set_the_response_first_in_order_wins() -> None:
    hooks = make()

    @hooks.on("*")
    async def later(event: Event) -> Any:
        return PlainTextResponse("later")

    @hooks.on("payments:paid")
    async def challenge(event: Event) -> Any:
        return JSONResponse({"challenge": event.payload.get("challenge")})

    response = await post(hooks, json={"event": "paid", "challenge": "abc"})
    assert response.json() == {"challenge": "abc"}
    result = await hooks.dispatch("payments", {"event": "paid", "challenge": "abc"})
    assert [type(outcome.response) for outcome in result.outcomes] == [
        JSONResponse,
        PlainTextResponse,
    ]
    assert result.response is result.outcomes[0].response


async def test_a_failed_handler_makes_it_500_even_if_another_set_a_response() -> None:
    hooks = make()
    hooks.on("payments:paid", lambda e: PlainTextResponse("ok"))
    hooks.on("*", lambda e: 1 / 0)
    response = await post(hooks, json={"event": "paid"})
    assert response.status_code == 500


async def test_a_trailing_slash_names_the_same_webhook() -> None:
    hooks = make()
    response = await post(hooks, "/payments/", json={"event": "paid"})
    assert (response.status_code, response.json()["webhook"]) == (200, "payments")
    assert (
        (await post(hooks, "/paymnts/", json={}))
        .json()["detail"]
        .startswith("no webhook 'paymnts'")
    )


async def _raises(event: Event) -> None:
    raise RuntimeError("boom")


async def _returns_a_response(event: Event) -> Any:
    return PlainTextResponse("custom", status_code=201)


async def _returns_a_value(event: Event) -> Any:
    return {"ignored": True}


async def _returns_none(event: Event) -> None:
    return None


# Every kind of delivery, those the receiver runs itself (one async handler) and those it
# hands to the pipeline: the HTTP answer must be the one dispatch() describes.
ANSWER_KINDS = {
    "one async handler": (("payments:paid", _returns_none),),
    "returns a Response": (("payments:paid", _returns_a_response),),
    "returns another value": (("payments:paid", _returns_a_value),),
    "raises": (("payments:paid", _raises),),
    "a plain function": (("payments:paid", lambda event: None),),
    "two handlers": (("payments:paid", _returns_none), ("*", _returns_none)),
    "no handler": (("payments:first", _returns_none),),
    "unmatched": ((None, _returns_none),),
}


@pytest.mark.parametrize("kind", ANSWER_KINDS)
@pytest.mark.parametrize("idempotent", [False, True])
async def test_the_receiver_answers_as_dispatch_describes(kind: str, idempotent: bool) -> None:
    hooks = make()
    if idempotent:
        hooks.webhooks.update("payments", idempotency_key="$Event{n}")
    runs: list[str] = []
    errors: list[BaseException] = []
    hooks.on_error(lambda event, error: errors.append(error))
    for tag, func in ANSWER_KINDS[kind]:

        async def counted(event: Event, func: Any = func) -> Any:
            runs.append(event.id)
            returned = func(event)
            return await returned if hasattr(returned, "__await__") else returned

        handler = func if kind == "a plain function" else counted
        (hooks.on_unmatched("payments", handler) if tag is None else hooks.on(tag, handler))
    body = b'{"event": "other", "n": 1}' if kind == "unmatched" else b'{"event": "paid", "n": 1}'
    response = await post(hooks, content=body)
    result = await hooks.dispatch("payments", body.replace(b'"n": 1', b'"n": 2'))
    if result.response is not None:
        assert (response.status_code, response.text) == (result.response.status_code, "custom")
    else:
        assert response.status_code == result.http_status
        answer, expected = response.json(), result.body()
        assert answer.pop("id") and expected.pop("id")
        assert answer == expected
    assert len(errors) == (2 if kind == "raises" else 0)
    handlers = len(ANSWER_KINDS[kind]) if kind not in ("no handler", "a plain function") else 0
    assert len(runs) == 2 * handlers


async def test_health() -> None:
    async with testing.client(make()) as client:
        response = await client.get("/_health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "mode": "inline", "webhooks": 1, "events": 2}
        assert (await client.post("/_health")).status_code == 405


async def test_one_log_line_per_request_without_the_body(caplog: Any) -> None:
    hooks = make()
    caplog.set_level(logging.INFO, logger="dispatcher")
    response = await post(hooks, json={"event": "paid", "card": "4242424242424242"})
    lines = [r for r in caplog.records if r.name == "dispatcher"]
    assert len(lines) == 1
    message = lines[0].getMessage()
    assert "payments payments:paid processed 200" in message and response.json()["id"] in message
    assert "4242" not in caplog.text


async def test_startup_refuses_unknown_handler_tags() -> None:
    hooks = make()
    hooks.on("payments:piad", print)
    with pytest.raises(Exception, match="did you mean 'payments:paid'"):
        async with testing.client(hooks):
            pass


async def test_without_lifespan_the_first_request_starts_it_or_says_why() -> None:
    hooks = make()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=hooks), base_url="http://t"
    ) as c:
        assert (await c.post("/payments", json={"event": "paid"})).status_code == 200
    broken = make()
    broken.on("payments:nope", print)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=broken), base_url="http://t"
    ) as c:
        response = await c.post("/payments", json={"event": "paid"})
        assert (response.status_code, response.json()["error"]) == (503, "not_ready")
        assert "payments:nope" in response.json()["detail"]


# --- mounting ------------------------------------------------------------------------------------


async def test_mounted_in_starlette_at_a_prefix_with_lifespan_wired() -> None:
    hooks = make()
    seen: list[str] = []
    hooks.on("payments:paid", lambda e: seen.append(e.tag))

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    app = Starlette(
        routes=[Route("/", home), Mount("/webhooks", app=hooks)], lifespan=hooks.lifespan
    )
    async with testing.client(hooks, app, prefix="/webhooks") as client:
        assert hooks.started  # the parent's lifespan started the dispatcher
        response = await client.post("/webhooks/payments", json={"event": "paid"})
        assert response.json()["event"] == "payments:paid"
        assert (await client.get("/webhooks/_health")).json()["status"] == "ok"
        assert (await client.get("/")).text == "home"
        assert (await client.send_event("payments:paid")).status_code == 200
        assert (await client.post("/webhooks/nope", json={})).status_code == 404
    assert seen == ["payments:paid", "payments:paid"]
    assert not hooks.started


async def test_mounted_in_fastapi_at_a_nested_prefix() -> None:
    hooks = make()
    app = FastAPI(lifespan=hooks.lifespan)
    app.mount("/api/hooks", hooks)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    async with testing.client(hooks, app) as client:
        response = await client.post("/api/hooks/payments", json={"event": "paid"})
        assert response.json()["status"] == "processed"
        assert (await client.get("/api/hooks/payments")).status_code == 405
        assert (await client.get("/ping")).json() == {"pong": "yes"}


def test_content_length_headers_are_kept_only_for_short_answers() -> None:
    from dispatcher import receiver

    assert receiver._length_header(97) == (b"content-length", b"97")
    assert receiver._LENGTHS[97] == (b"content-length", b"97")
    assert receiver._length_header(5000) == (b"content-length", b"5000")
    assert 5000 not in receiver._LENGTHS
