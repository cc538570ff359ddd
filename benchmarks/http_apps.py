"""The four apps bench_http.py compares, each the same routing of one JSON field.

uvicorn benchmarks.http_apps:raw          # (a) the floor: raw ASGI, no routing library
uvicorn benchmarks.http_apps:hooks        # (b) dispatcher, inline mode, no-op async handler
uvicorn benchmarks.http_apps:fastapi_app  # (c) the same routing as a FastAPI endpoint
uvicorn benchmarks.http_apps:starlette_app  # (d) the same routing as a Starlette route

and two controls for b/a (``bench_http.py --controls``): ``busy`` (the raw app plus a
busy-wait of BENCH_SPIN_US microseconds) and ``essential`` (only the work no receiver
can skip).
"""

from __future__ import annotations

import os
import time

import orjson
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from dispatcher import Dispatcher, pipeline
from dispatcher.event import Event
from dispatcher.headers import Headers

EVENTS = [f"event-{i}" for i in range(20)]
BODY = orjson.dumps(
    {
        "event": EVENTS[10],
        "transaction_id": "1229100110101-192920101",
        "event_id": "119100101020201-1919010101",
        "customer_email": "janedoe@company.com",
        "amount": 5000,
        "currency": "USD",
        "metadata": {"source": "mobile-app", "campaign": "black-friday", "device": "ios-17.2"},
        "created_at": "2026-11-27T12:00:00Z",
        "description": "Order #48213 for 3 items, shipped to the customer's default address",
    }
)


async def noop(event: object) -> None:
    return None


# (a) raw ASGI: read the body, parse it, read one field, answer.
async def raw(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
    kind = orjson.loads(body)["event"]
    content = orjson.dumps({"status": "processed", "event": kind})
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


# (b) the dispatcher: a 20-event catalog, one no-op async handler per event.
def bench_dispatcher(**options: object) -> Dispatcher:
    built = Dispatcher(**options)  # type: ignore[arg-type]
    built.webhooks.create(tag="payments", name="Payments", description="benchmark")
    for name in EVENTS:
        built.webhooks.events.create(
            name=name, tag=f"payments:{name}", description="benchmark", selector="$Event{event}",
            sample={"event": name},
        )  # fmt: skip
        built.on(f"payments:{name}", noop)
    return built


hooks = bench_dispatcher()


# (c)/(d) hand-written routing: parse, then if/elif on the field.
async def route(kind: str) -> None:
    if kind == EVENTS[0] or kind == EVENTS[1] or kind in EVENTS:
        await noop(kind)


fastapi_app = FastAPI()


@fastapi_app.post("/payments")
async def fastapi_endpoint(request: Request) -> Response:
    kind = orjson.loads(await request.body())["event"]
    await route(kind)
    return Response(
        orjson.dumps({"status": "processed", "event": kind}), media_type="application/json"
    )


async def starlette_endpoint(request):  # type: ignore[no-untyped-def]
    kind = orjson.loads(await request.body())["event"]
    await route(kind)
    return Response(
        orjson.dumps({"status": "processed", "event": kind}), media_type="application/json"
    )


starlette_app = Starlette(routes=[Route("/payments", starlette_endpoint, methods=["POST"])])


# Controls for b/a: how close to the raw app a receiver doing the same work can get.

SPIN = float(os.environ.get("BENCH_SPIN_US", "0")) / 1e6


async def busy(scope, receive, send):  # type: ignore[no-untyped-def]
    """The raw app after a busy-wait of BENCH_SPIN_US: CPU work alone, no memory touched."""
    if scope["type"] == "http":
        deadline = time.perf_counter() + SPIN
        while time.perf_counter() < deadline:
            pass
    await raw(scope, receive, send)


ESSENTIAL_ANSWER = (
    b'{"id":"%s","webhook":"payments","event":"payments:event-10","status":"processed"}'
)


async def essential(scope, receive, send):  # type: ignore[no-untyped-def]
    """The dispatcher's own parts, only those no receiver can skip: wrap the headers,
    parse, match, make the Event and its id, run the handler, answer from a template.

    Everything else the receiver does is left out: path, method, size, content-type and
    signature checks, idempotency, timing, metrics, the log check, result objects. Not a
    receiver (it answers every POST as the bench's event): a ceiling for b/a.
    """
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            await hooks(scope, receive, send)
        return
    webhook = hooks.catalog.webhooks[scope["path"][1:]]
    message = await receive()
    body = message.get("body", b"")
    headers = Headers.from_asgi(scope["headers"])
    payload = orjson.loads(body)
    query = pipeline.EMPTY_QUERY
    event = hooks.catalog.indexes[webhook.tag].match(payload, headers, query)
    delivery = Event(  # pipeline.new_id, looked up as the pipeline does: a fork rebinds it
        pipeline.new_id(), webhook.tag, event.tag, event.name, payload, headers, query, body,
        time.time(),
    )  # fmt: skip
    for handler in hooks.router.resolve(webhook.tag, event.tag):
        await handler.func(delivery)
    content = ESSENTIAL_ANSWER % delivery.id.encode()
    # Sent as raw() sends, written out again: a shared helper's call level would lower
    # this ceiling and flatter the argument it supports.
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
