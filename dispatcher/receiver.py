"""The ASGI application: ``POST /{webhook-tag}``, the receiver's own ``/_`` routes, lifespan.

The webhook route is the hot path, so it speaks ASGI directly: no Request or
Response objects, one pass over the headers, the body read with the size
limit enforced from Content-Length and again while streaming. Everything else
(``/_health``, ``/_metrics``, ``/_ui``) may use Starlette freely.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from .headers import Headers
from .pipeline import DispatchResult, rejected

if TYPE_CHECKING:
    from .app import Dispatcher

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("dispatcher")
INFO = logging.INFO
JSON_HEADER = (b"content-type", b"application/json")


def route_path(scope: Scope) -> str:
    """The path below the mount point (Starlette keeps the full path and sets root_path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


class Receiver:
    """The ASGI behaviour of a Dispatcher, which inherits it: ``Dispatcher`` *is* the app.

    A mixin rather than a separate object so that ``await hooks(scope, ...)`` runs
    the webhook route with no call level in between.
    """

    async def __call__(self: Dispatcher, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[misc]
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.run_lifespan(receive, send)
            elif scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        if not self.started:
            failed = await self.ensure_started()
            if failed is not None:
                await send_json(send, 503, {"error": "not_ready", "detail": failed})
                return
        path = route_path(scope) if scope.get("root_path") else scope["path"]
        if path.startswith("/_"):
            await self.internal(path, scope, receive, send)
            return
        start = time.perf_counter()
        tag = path[1:-1] if path.endswith("/") else path[1:]
        # The webhook route, inline (each call level costs a measurable share):
        # path and method (404, 405), size (413), then the pipeline.
        webhook = self.catalog.webhooks.get(tag)
        if webhook is None:
            result = self.pipeline.unknown_webhook(tag)
        elif scope["method"] != "POST":
            result = rejected(
                405, "method_not_allowed", f"webhooks are delivered with POST, not {scope['method']}",
                webhook=tag, headers={"allow": "POST"},
            )  # fmt: skip
        else:
            limit = self.max_body_size
            try:
                message = await receive()
                body = message.get("body", b"")
                if message.get("more_body", False):  # streamed: read on, within the limit
                    body = await read_rest(receive, body, limit, scope["headers"])
                elif len(body) > limit:
                    body = None
            except ClientDisconnected:
                result = rejected(
                    400, "incomplete_body", "the client went away before the body ended"
                )
            else:
                if body is None:
                    result = self.pipeline.too_large()
                else:
                    query = scope.get("query_string", b"")
                    result = await self.pipeline.accept(
                        webhook,
                        body,
                        Headers.from_asgi(scope["headers"]),
                        query.decode("latin-1") if query else "",
                    )
        if result.response is not None:
            await result.response(scope, receive, send)
        else:  # send_json, inline: this is every delivery's answer
            content = answer_body(result)
            raw = [JSON_HEADER, (b"content-length", str(len(content)).encode())]
            if result.headers:
                raw.extend(
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in result.headers.items()
                )
            await send(
                {"type": "http.response.start", "status": result.http_status, "headers": raw}
            )
            await send({"type": "http.response.body", "body": content})
        took = time.perf_counter() - start
        self.metrics.delivery(result.webhook or tag, result.event, result.status, took)
        if logger.isEnabledFor(INFO):
            log_delivery(result, tag, took)

    async def run_lifespan(self: Dispatcher, receive: Receive, send: Send) -> None:  # type: ignore[misc]
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    logger.error("startup failed: %s", error)
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as error:
                    logger.exception("shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


# Success answers differ only by their id: each (status, event or webhook) gets a template
# once. An event tag names its webhook, and a webhook tag has no ':', so they never clash.
_ANSWERS: dict[str, dict[str | None, bytes]] = {}
_MAX_ANSWERS = 10_000


def answer_body(result: DispatchResult) -> bytes:
    """The JSON answer of a result; success answers come from a template (ids are hex)."""
    if result.error is not None:
        return orjson.dumps(result.body())
    try:
        template = _ANSWERS[result.status][result.event or result.webhook]
    except KeyError:
        template = _answer_template(result)
    return template % result.id.encode()  # type: ignore[union-attr]


def _answer_template(result: DispatchResult) -> bytes:
    if sum(map(len, _ANSWERS.values())) >= _MAX_ANSWERS:  # catalogs churned a lot: start over
        _ANSWERS.clear()
    shape = orjson.dumps(
        {"id": "", "webhook": result.webhook, "event": result.event, "status": result.status}
    )
    template = shape.replace(b'"id":""', b'"id":"%s"', 1)
    _ANSWERS.setdefault(result.status, {})[result.event or result.webhook] = template
    return template


def log_delivery(result: DispatchResult, tag: str, took: float) -> None:
    """One line per request: webhook, event, status, duration, id (and the same as fields)."""
    outcome = result.error or result.status
    logger.info(
        "%s %s %s %d %.1fms %s",
        result.webhook or tag, result.event or "-", outcome, result.http_status, took * 1000,
        result.id or "-",
        extra={
            "delivery_id": result.id, "webhook": result.webhook or tag, "event": result.event,
            "status": outcome, "http_status": result.http_status,
            "duration_ms": round(took * 1000, 3), "attempt": 1,
        },
    )  # fmt: skip


class ClientDisconnected(Exception):
    """The client hung up mid-body: nothing of it is dispatched."""


async def read_rest(
    receive: Receive, first: bytes, limit: int, headers: list[tuple[bytes, bytes]]
) -> bytes | None:
    """The rest of a streamed body after its ``first`` chunk, or None as soon as the whole
    passes ``limit``, declared (Content-Length) or counted: what follows is never read."""
    if len(first) > limit:
        return None
    for name, value in headers:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                return None
            break
    chunks = [first]
    size = len(first)
    message: Message = {"more_body": True}
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def send_json(
    send: Send, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    content = orjson.dumps(body)
    raw = [JSON_HEADER, (b"content-length", str(len(content)).encode())]
    if headers:
        raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})
