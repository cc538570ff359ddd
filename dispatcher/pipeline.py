"""One delivery: verify → parse → dedup → match → run handlers, or enqueue.

No HTTP here: ``Dispatcher.dispatch()`` and tests call ``Pipeline.deliver``
with bytes and headers and get a ``DispatchResult`` that says what happened and
which HTTP answer it deserves. ``deliver`` is two halves in a row: ``admit``
(everything up to the Event) and ``execute`` (handlers, or the inbox). The ASGI
receiver calls the halves itself, so that it can run the commonest delivery
without a coroutine level or result objects.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import QueryParams
from starlette.responses import Response

from .bodies import BodyError, body_kind, json_problem, parse_body
from .errors import closest
from .event import Event
from .extractors import MISSING, compile_selector
from .headers import JSON_CONTENT_TYPE, Headers
from .selectors import parse_selector

if TYPE_CHECKING:
    from .app import Dispatcher
    from .catalog import Webhook
    from .routing import Handler

logger = logging.getLogger("dispatcher")

#: What ``Pipeline.admit`` hands to ``execute``: the Event, its handlers, its idempotency
#: key. A plain tuple, as every delivery makes one.
Admitted = tuple[Event, tuple["Handler", ...], "str | None"]

EMPTY_QUERY = QueryParams("")


@dataclass(slots=True)
class HandlerOutcome:
    """How one handler did: ``error`` is None when it succeeded."""

    handler: str
    error: BaseException | None = None
    duration: float = 0.0
    response: Response | None = field(default=None, repr=False)  # what the handler returned

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class DispatchResult:
    """What became of a delivery, and the HTTP answer it deserves.

    ``status``: processed, unmatched, duplicate, queued, failed (a handler raised)
    or rejected (the request itself was refused; ``error`` says why).
    """

    status: str
    http_status: int
    id: str | None = None
    webhook: str | None = None
    event: str | None = None
    error: str | None = None
    detail: str | None = None
    outcomes: tuple[HandlerOutcome, ...] = ()
    response: Response | None = field(default=None, repr=False)
    headers: dict[str, str] | None = None  # extra answer headers (Allow)

    @property
    def ok(self) -> bool:
        return self.http_status < 400

    def body(self) -> dict[str, Any]:
        """The JSON body of the HTTP answer (never exception text or secrets)."""
        if self.error is not None:
            body: dict[str, Any] = {"error": self.error}
            if self.detail:
                body["detail"] = self.detail
            if self.id:
                body["id"] = self.id
            return body
        return {"id": self.id, "webhook": self.webhook, "event": self.event, "status": self.status}


def rejected(http_status: int, error: str, detail: str, **extra: Any) -> DispatchResult:
    return DispatchResult("rejected", http_status, error=error, detail=detail, **extra)


def _id_source(digits: int = 2) -> Callable[[], str]:
    """Delivery ids: a random per-process prefix and a counter (32 hex digits).

    Unique across processes and restarts like a uuid4, sortable within a
    process, and a fraction of uuid4's cost. Made 16**digits at a time: the ids of
    a batch share all but their last ``digits`` digits, so one ``hex()`` writes the
    shared head and each id is the head plus a tail from a table, one string
    concatenation (``hex()`` of each whole 128-bit count cost ~500 instructions
    more per id). Handed out by C iterators (``chain.__next__`` over lists): one id
    costs a list step on the request's path.
    """
    # The counter starts at a random 64-bit prefix (top bit set, so always 32 digits)
    # shifted over 64 zero bits, and goes a batch at a time, so a batch's first count
    # ends in `digits` zeros: its hex() less those is the head of every id of the batch.
    start = (int.from_bytes(os.urandom(8)) | 1 << 63) << 64
    tails = [format(n, f"0{digits}x") for n in range(16**digits)]

    def ids(first: int) -> list[str]:
        return list(map(hex(first)[2:-digits].__add__, tails))

    return itertools.chain.from_iterable(map(ids, itertools.count(start, len(tails)))).__next__


def _fresh_ids_after_fork() -> None:
    global new_id
    new_id = _id_source()  # a forked child must not repeat its parent's ids


new_id = _id_source()
os.register_at_fork(after_in_child=_fresh_ids_after_fork)


class Pipeline:
    """Runs deliveries for a Dispatcher (its catalog, router, options and stores)."""

    def __init__(self, hooks: Dispatcher) -> None:
        self.hooks = hooks
        self._key_getters: dict[str, tuple[str | None, Any]] = {}

    def unknown_webhook(self, tag: str) -> DispatchResult:
        hint = closest(tag, self.hooks.catalog.webhooks)
        detail = f"no webhook {tag!r}" + (f"; did you mean {hint!r}?" if hint else "")
        return rejected(404, "unknown_webhook", detail)

    def too_large(self) -> DispatchResult:
        limit = self.hooks.max_body_size
        return rejected(413, "payload_too_large", f"the body is over the {limit:,}-byte limit")

    async def deliver(
        self,
        webhook_tag: str,
        body: bytes,
        headers: Headers,
        query_string: str = "",
        *,
        received_at: datetime | None = None,
    ) -> DispatchResult:
        webhook = self.hooks.catalog.webhooks.get(webhook_tag)
        if webhook is None:
            return self.unknown_webhook(webhook_tag)
        if len(body) > self.hooks.max_body_size:
            return self.too_large()
        admitted = self.admit(webhook, body, headers, query_string, received_at)
        if admitted.__class__ is DispatchResult:
            return admitted  # type: ignore[return-value]
        return await self.execute(*admitted)  # type: ignore[misc]

    def admit(
        self,
        webhook: Webhook,
        body: bytes,
        headers: Headers,
        query_string: str,
        received_at: datetime | None = None,
    ) -> DispatchResult | Admitted:
        """Everything before the handlers: verify, parse, key, match, the Event.

        Gives the refusal as a DispatchResult, or the Event, its handlers and its
        idempotency key for ``execute``. Apart from ``execute`` so that the receiver
        can run the commonest delivery itself (see ``Receiver.__call__``).
        """
        hooks = self.hooks
        if webhook.verify is not None:
            refused = self._verify(webhook, headers, body)
            if refused is not None:
                return refused
        # The common declaration, found by one C-level scan of the raw header pairs (a
        # request declaring it twice with another type is read as JSON too); anything
        # else, or no Content-Type at all, by a lookup of its value.
        if JSON_CONTENT_TYPE in headers._asgi:
            content_type = b"application/json"
        else:
            content_type = headers.value(b"content-type")
        try:
            if content_type is None or content_type == b"application/json":
                payload = orjson.loads(body)  # the common case, without the general path's calls
            else:
                payload = parse_body(body_kind(content_type.decode("latin-1")), body)
        except (BodyError, orjson.JSONDecodeError) as error:
            problem = error if isinstance(error, BodyError) else json_problem(body, error)
            return rejected(problem.status, problem.code, problem.detail, webhook=webhook.tag)

        query = QueryParams(query_string) if query_string else EMPTY_QUERY
        key = None
        if webhook.idempotency_key is not None or webhook.verify is not None:
            key = self._idempotency_key(webhook, payload, headers, query)
        event = hooks.catalog.indexes[webhook.tag].match(payload, headers, query)
        if event is not None:
            tag, name = event.tag, event.name
        elif hooks.unmatched == "reject":
            return rejected(
                422,
                "unmatched",
                f"the payload matches no event of webhook {webhook.tag!r}",
                webhook=webhook.tag,
            )
        else:
            tag = name = None
        delivery = Event(  # positional: keyword arguments cost more on this path
            new_id(), webhook.tag, tag, name, payload, headers, query, body,
            received_at or time.time(),
        )  # fmt: skip
        router = hooks.router  # resolve()'s cache, read here: a call less per delivery
        handlers = router.resolved.get(tag or webhook.tag)
        if handlers is None:
            handlers = router.resolve(webhook.tag, tag)
        return delivery, handlers, key

    async def execute(
        self, delivery: Event, handlers: tuple[Handler, ...], key: str | None
    ) -> DispatchResult:
        """Run an admitted delivery's handlers (inline mode), or store it (queued mode)."""
        hooks = self.hooks
        if hooks.inbox is not None:
            stored = await hooks.inbox.enqueue(delivery, handlers, key)
            if stored is None:  # queued
                return DispatchResult("queued", 202, delivery.id, delivery.webhook, delivery.tag)
            return stored
        if key is None:
            return await self.run(delivery, handlers)
        guard = hooks.idempotency
        if not await guard.acquire(delivery.webhook, key):
            return DispatchResult("duplicate", 200, delivery.id, delivery.webhook, delivery.tag)
        succeeded = False
        try:
            result = await self.run(delivery, handlers)
            succeeded = result.ok
            return result
        finally:
            guard.release(delivery.webhook, key, succeeded)

    def _verify(self, webhook: Webhook, headers: Headers, body: bytes) -> DispatchResult | None:
        from .signatures import SignatureError

        try:
            webhook.verify.verify(headers, body, time.time())
        except SignatureError as error:
            logger.warning("%s: signature refused: %s (%s)", webhook.tag, error.reason, error)
            self.hooks.metrics.signature_failed(webhook.tag, error.reason)
            return rejected(401, error.reason, str(error), webhook=webhook.tag)
        return None

    def _idempotency_key(
        self, webhook: Webhook, payload: Any, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> str | None:
        selector = webhook.effective_idempotency_key
        if selector is None:
            return None
        cached = self._key_getters.get(webhook.tag)
        if cached is None or cached[0] != selector:
            cached = (selector, compile_selector(parse_selector(selector, field="idempotency_key")))
            self._key_getters[webhook.tag] = cached
        value = cached[1](payload, headers, query)
        if value is MISSING:
            return None
        return value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()

    # --- running handlers ------------------------------------------------------------------------

    async def run(self, event: Event, handlers: tuple[Handler, ...]) -> DispatchResult:
        """Run every handler concurrently (inline mode); the delivery fails if any fails."""
        if len(handlers) == 1:
            return self._result(event, (await self._run_one(handlers[0], event),))
        if not handlers:
            return self._result(event, ())
        return self._result(
            event, tuple(await asyncio.gather(*(self._run_one(h, event) for h in handlers)))
        )

    def handler_returned(
        self, handler: Handler, event: Event, returned: Any, start: float
    ) -> DispatchResult:
        """The result of a delivery whose only handler, started at ``start``, returned."""
        return self._result(event, (self._succeeded(handler, event, returned, start),))

    async def handler_raised(
        self, handler: Handler, event: Event, error: Exception, start: float
    ) -> DispatchResult:
        """The result of a delivery whose only handler, started at ``start``, raised."""
        return self._result(event, (await self._failed(handler, event, error, start),))

    def _result(self, event: Event, outcomes: tuple[HandlerOutcome, ...]) -> DispatchResult:
        """Processed (or unmatched) if every handler succeeded; the first response returned
        in resolution order answers. Failed if any raised."""
        response = None
        for outcome in outcomes:  # a loop, not any(genexpr): this runs for every delivery
            if outcome.error is not None:
                return DispatchResult(
                    "failed", 500, event.id, event.webhook, event.tag,
                    error="handler_failed", detail="a handler raised; the provider should retry",
                    outcomes=outcomes,
                )  # fmt: skip
            if response is None:
                response = outcome.response
        status = "processed" if event.tag is not None else "unmatched"
        # positional: every delivery makes one, and keyword arguments cost more
        return DispatchResult(
            status, 200, event.id, event.webhook, event.tag, None, None, outcomes, response
        )

    async def _run_one(self, handler: Handler, event: Event) -> HandlerOutcome:
        start = time.perf_counter()
        try:
            # Handler.__call__, inlined: one coroutine level less on every delivery.
            if handler.is_async:
                returned = await handler.func(event)
            else:  # plain functions run in a worker thread, off the event loop
                returned = await asyncio.to_thread(handler.func, event)
        except Exception as error:
            return await self._failed(handler, event, error, start)
        return self._succeeded(handler, event, returned, start)

    def _succeeded(
        self, handler: Handler, event: Event, returned: Any, start: float
    ) -> HandlerOutcome:
        took = time.perf_counter() - start
        self.hooks.metrics.handler_ran(event.tag, took, False)
        if returned is None or not isinstance(returned, Response):
            return HandlerOutcome(handler.name, None, took)
        return HandlerOutcome(handler.name, None, took, returned)

    async def _failed(
        self, handler: Handler, event: Event, error: Exception, start: float
    ) -> HandlerOutcome:
        took = time.perf_counter() - start
        self.hooks.metrics.handler_ran(event.tag, took, True)
        logger.error(
            "%s %s: handler %s failed: %s: %s",
            event.webhook, event.tag or "(unmatched)", handler.name, type(error).__name__, error,
            exc_info=error,
        )  # fmt: skip
        await self.report_error(event, error)
        return HandlerOutcome(handler.name, error, took)

    async def report_error(self, event: Event, error: BaseException) -> None:
        """Call every on_error handler; their own failures are logged, never raised."""
        for func in self.hooks.router.error_handlers:
            try:
                result = func(event, error)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("on_error handler %r failed", func)
