"""The ASGI application: ``POST /{webhook-tag}``, the receiver's own ``/_`` routes, lifespan.

The webhook route is the hot path, so it speaks ASGI directly: no Request or
Response objects, one pass over the headers, the body read with the size
limit enforced from Content-Length and again while streaming. Everything else
(``/_health``, ``/_metrics``, ``/_ui``) may use Starlette freely.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

import orjson

from .headers import JSON_CONTENT_TYPE, Headers
from .pipeline import DispatchResult, rejected

if TYPE_CHECKING:
    from .app import Dispatcher

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("dispatcher")
INFO = logging.INFO


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
        start = perf_counter()
        tag = path[1:]
        # The webhook route, inline (each call level costs a measurable share):
        # path and method (404, 405), size (413), then the pipeline. It leaves a
        # DispatchResult, or (the commonest delivery, below) nothing but `delivery`.
        result: DispatchResult | None = None
        queued = False  # stored for the workers: answered 202 from a template, as below
        webhook = self.catalog.webhooks.get(tag)
        if webhook is None:  # no webhook tag starts with "_", so the receiver's own routes
            if path.startswith("/_"):  # are looked for only here, off the hot path
                await self.internal(path, scope, receive, send)
                return
            if tag.endswith("/"):  # POST /payments/ is POST /payments
                tag = tag[:-1]
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
                    pipeline = self.pipeline
                    admitted = pipeline.admit(
                        webhook,
                        body,
                        Headers.from_asgi(scope["headers"]),
                        query.decode("latin-1") if query else "",
                    )
                    if admitted.__class__ is DispatchResult:
                        result = admitted  # type: ignore[assignment]
                    else:
                        delivery, handlers, key = admitted  # type: ignore[misc]
                        if self.inbox is not None:  # pipeline.execute's first step, inline
                            result = await self.inbox.enqueue(delivery, handlers, key)
                            queued = result is None
                        elif len(handlers) != 1 or key is not None or not handlers[0].is_async:
                            result = await pipeline.execute(delivery, handlers, key)
                        else:
                            # The commonest delivery: one async handler, inline. Run here,
                            # not through pipeline.execute, and answered from a template
                            # when the handler returns None: the coroutine level and the
                            # result objects this skips cost ~1 us of a ~6 us request.
                            handler = handlers[0]
                            handler_took = 0.0
                            began = perf_counter()
                            try:
                                returned = await handler.func(delivery)
                            except Exception as error:
                                result = await pipeline.handler_raised(
                                    handler, delivery, error, began
                                )
                            else:
                                if returned is None:  # counted with the delivery, below
                                    handler_took = perf_counter() - began
                                else:
                                    result = pipeline.handler_returned(
                                        handler, delivery, returned, began
                                    )
        if result is None:  # the commonest delivery, handled or queued: from a template
            event = delivery.tag
            if queued:
                status = outcome = "queued"
                http_status = 202
            else:
                status = outcome = "processed" if event is not None else "unmatched"
                http_status = 200
            delivery_id, extra = delivery.id, None
            try:  # success_body, inline
                content: bytes | None = _ANSWERS[status][event or tag] % delivery_id.encode()
            except KeyError:
                content = success_body(status, tag, event, delivery_id)
        else:
            tag = result.webhook or tag
            event, status, delivery_id = result.event, result.status, result.id
            http_status, outcome, extra = result.http_status, result.error or status, result.headers
            content = answer_body(result) if result.response is None else None
        if content is not None:  # send_json, inline: this is every delivery's answer
            length = len(content)
            raw = [JSON_CONTENT_TYPE, _LENGTHS.get(length) or _length_header(length)]
            if extra:
                raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
            await send({"type": "http.response.start", "status": http_status, "headers": raw})
            await send({"type": "http.response.body", "body": content})
        else:  # a handler's own Response
            await result.response(scope, receive, send)  # type: ignore[union-attr, misc]
        took = perf_counter() - start
        if queued:
            self.metrics.delivery(tag, event, "queued", took)
        elif result is None and event is not None:  # the commonest: one call counts it all
            self.metrics.processed(tag, event, handler_took, took)
        else:
            if result is None:  # an unmatched payload's on_unmatched handler ran
                self.metrics.handler_ran(None, handler_took, False)
            self.metrics.delivery(tag, event, status, took)
        if logger.isEnabledFor(INFO):
            log_delivery(tag, event, outcome, http_status, took, delivery_id)

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


# Content-Length headers by length, made once: str(int) is a cold path in every request.
_LENGTHS: dict[int, tuple[bytes, bytes]] = {}


def _length_header(length: int) -> tuple[bytes, bytes]:
    header = (b"content-length", str(length).encode())
    if length < 4096:  # bounded: answers are short, bodies of handlers' Responses are not
        _LENGTHS[length] = header
    return header


def answer_body(result: DispatchResult) -> bytes:
    """The JSON answer of a result; success answers come from a template (ids are hex)."""
    if result.error is not None:
        return orjson.dumps(result.body())
    return success_body(result.status, result.webhook, result.event, result.id)  # type: ignore[arg-type]


def success_body(status: str, webhook: str | None, event: str | None, delivery_id: str) -> bytes:
    """``{"id","webhook","event","status"}``, from the template of its status and event."""
    try:
        template = _ANSWERS[status][event or webhook]
    except KeyError:
        template = _answer_template(status, webhook, event)
    return template % delivery_id.encode()


def _answer_template(status: str, webhook: str | None, event: str | None) -> bytes:
    if sum(map(len, _ANSWERS.values())) >= _MAX_ANSWERS:  # catalogs churned a lot: start over
        _ANSWERS.clear()
    shape = orjson.dumps({"id": "", "webhook": webhook, "event": event, "status": status})
    template = shape.replace(b'"id":""', b'"id":"%s"', 1)
    _ANSWERS.setdefault(status, {})[event or webhook] = template  # type: ignore[index]
    return template


def log_delivery(
    webhook: str,
    event: str | None,
    outcome: str,
    http_status: int,
    took: float,
    delivery_id: str | None,
) -> None:
    """One line per request: webhook, event, outcome (status, or the error), HTTP status,
    duration, id (and the same as fields)."""
    logger.info(
        "%s %s %s %d %.1fms %s",
        webhook, event or "-", outcome, http_status, took * 1000, delivery_id or "-",
        extra={
            "delivery_id": delivery_id, "webhook": webhook, "event": event,
            "status": outcome, "http_status": http_status,
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
    raw = [JSON_CONTENT_TYPE, (b"content-length", str(len(content)).encode())]
    if headers:
        raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})
