"""Dispatcher: the facade that ties the catalog, the handlers, the pipeline and the receiver.

A Dispatcher is itself an ASGI application: run it under uvicorn, or mount it
into a Starlette/FastAPI app (``app.mount("/webhooks", hooks)``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from .catalog import Catalog, WebhookEvent, WebhooksAPI
from .catalogfile import check_catalog_data, read_catalog_file, write_catalog_file
from .errors import DispatcherError, HandlerRegistrationError, ValidationError
from .headers import Headers
from .idempotency import IdempotencyGuard
from .metrics import Metrics, create_metrics
from .pipeline import DispatchResult, Pipeline
from .queued import QueuedMode
from .receiver import Receive, Receiver, Scope, Send, send_json
from .retry import Retry
from .routing import Router
from .samples import TestingKit

logger = logging.getLogger("dispatcher")

_EMPTY: Mapping[str, str] = {}
MiB = 1024 * 1024


class Dispatcher(Receiver):
    """An incoming-webhook dispatcher: a catalog of webhooks and events, and their handlers.

    Options:
      unmatched: "accept" answers 200 ``unmatched`` to a payload that matches no
        event (so the provider neither retries nor disables the endpoint);
        "reject" answers 422 and runs no handler.
      max_body_size: bodies over this many bytes get 413 (default 25 MiB).
      idempotency_ttl: how long a delivery key counts as seen (default 24 h).
      inbox: a URL (``sqlite:///inbox.db``, ``postgresql://user@host/db``) or an
        InboxStore: queued mode. Each delivery is stored before it is answered
        (202), and workers run its handlers with retries. None: inline mode.
      retry: the default ``Retry`` policy of queued handlers (``on(tag, retry=...)``
        sets one per handler).
      lease: seconds a worker holds a task; renewed every third of it while the
        handler runs, reclaimed by another worker once it lapses.
      concurrency: handlers each in-process worker runs at once (0: this process
        only receives; run ``dispatcher worker`` elsewhere).
      retention: age after which done deliveries are pruned (default 7 days).
      graceful_timeout: seconds shutdown waits for running handlers.
      console_token: turns on the operator console at ``/_ui``; every page asks for it.
    """

    def __init__(
        self,
        *,
        unmatched: str = "accept",
        max_body_size: int = 25 * MiB,
        idempotency_ttl: float = 24 * 3600.0,
        inbox: str | Any = None,
        retry: Retry | None = None,
        lease: float = 30.0,
        concurrency: int = 4,
        retention: float = 7 * 86400.0,
        graceful_timeout: float = 30.0,
        console_token: str | None = None,
    ) -> None:
        self.catalog = Catalog()
        self.webhooks = WebhooksAPI(self.catalog)
        self.router = Router()
        self.idempotency = IdempotencyGuard(ttl=idempotency_ttl)
        self.metrics: Metrics = create_metrics(self)
        self.console_token = console_token
        self._console: Any = None
        self.inbox: QueuedMode | None = None  # queued mode: set by the inbox option
        self.pipeline = Pipeline(self)
        self.testing = TestingKit(self)
        self.started = False
        self._start_lock = threading.Lock()
        self.retry = Retry()
        self.lease = 30.0
        self.concurrency = 4
        self.retention = 7 * 86400.0
        self.graceful_timeout = graceful_timeout
        self.configure(
            unmatched=unmatched, max_body_size=max_body_size, retry=retry, inbox=inbox,
            lease=lease, concurrency=concurrency, retention=retention,
        )  # fmt: skip

    def configure(
        self,
        *,
        unmatched: str | None = None,
        max_body_size: int | None = None,
        inbox: str | Any = None,
        retry: Retry | None = None,
        lease: float | None = None,
        concurrency: int | None = None,
        retention: float | None = None,
        graceful_timeout: float | None = None,
        console_token: str | None = None,
    ) -> None:
        """Change options after construction (``dispatcher serve`` flags use this)."""
        if self.started:
            raise DispatcherError("configure() before the dispatcher starts, not while it runs")
        if retry is not None:
            if not isinstance(retry, Retry):
                raise ValidationError(
                    "retry", "must be a dispatcher.Retry(max_attempts=, base=, max_delay=)"
                )
            self.retry = retry
        if graceful_timeout is not None:
            self.graceful_timeout = graceful_timeout
        if console_token is not None:
            self.console_token = console_token
        if lease is not None:
            if not lease > 0:
                raise ValidationError("lease", f"must be a positive number of seconds, got {lease}")
            self.lease = lease
        if concurrency is not None:
            if concurrency < 0:
                raise ValidationError("concurrency", f"must be 0 or more, got {concurrency}")
            self.concurrency = concurrency
        if retention is not None:
            if not retention > 0:
                raise ValidationError(
                    "retention", f"must be a positive number of seconds, got {retention}"
                )
            self.retention = retention
        if inbox is not None:
            self.inbox = QueuedMode(self, inbox)
        if unmatched is not None:
            if unmatched not in ("accept", "reject"):
                raise ValidationError(
                    "unmatched", f"must be 'accept' or 'reject', got {unmatched!r}"
                )
            self.unmatched = unmatched
        if max_body_size is not None:
            if not isinstance(max_body_size, int) or max_body_size <= 0:
                raise ValidationError("max_body_size", "must be a positive number of bytes")
            self.max_body_size = max_body_size

    # --- catalog ------------------------------------------------------------------------------

    @classmethod
    def from_catalog(cls, path: str | Path, **options: Any) -> Dispatcher:
        """A new dispatcher whose catalog is the file at ``path``."""
        hooks = cls(**options)
        hooks.load_catalog(path)
        return hooks

    def load_catalog(self, path: str | Path) -> None:
        """Add the webhooks and events of a catalog file (all or nothing)."""
        data = read_catalog_file(path)
        webhooks, events = check_catalog_data(self.catalog, data, str(path))
        self.catalog.add_all(webhooks, events)

    def save_catalog(self, path: str | Path) -> None:
        write_catalog_file(self.catalog, path)

    def match(
        self,
        payload: Any,
        webhook: str,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> WebhookEvent | None:
        """The event ``payload`` (with these headers and query) is, or None. No I/O."""
        index = self.catalog.indexes.get(webhook)
        if index is None:
            self.catalog.webhook(webhook)  # raises NotFoundError with a suggestion
        if headers and not isinstance(headers, Headers):
            headers = _lower(headers)
        return index.match(payload, headers or _EMPTY, query or _EMPTY)  # type: ignore[union-attr]

    # --- handlers -----------------------------------------------------------------------------

    def on(self, tag: str, func: Any = None, *, retry: Any = None) -> Any:
        """Register a handler for an event tag, ``webhook:*`` or ``*`` (decorator or plain call)."""
        return self.router.on(tag, func, retry=retry)

    def on_unmatched(self, webhook: Any = None, func: Any = None, *, retry: Any = None) -> Any:
        """Register a handler for payloads of ``webhook`` (or any) that match no event."""
        return self.router.on_unmatched(webhook, func, retry=retry)

    def on_error(self, func: Any) -> Any:
        """Register ``func(event, exception)``, called for every handler failure."""
        return self.router.on_error(func)

    def include(self, router: Router) -> None:
        """Add the handlers of a ``dispatcher.Router`` (e.g. one defined in its own module)."""
        self.router.include(router)

    def check(self) -> None:
        """Raise HandlerRegistrationError if a handler names a tag the catalog does not have."""
        problems = self.router.problems(self.catalog)
        if problems:
            raise HandlerRegistrationError(
                f"{len(problems)} handler registration(s) do not match the catalog:\n  "
                + "\n  ".join(problems)
            )

    # --- delivering ---------------------------------------------------------------------------

    async def dispatch(
        self,
        webhook: str,
        body: bytes | str | Any,
        headers: Mapping[str, str] | None = None,
        query: str | Mapping[str, str] | None = None,
    ) -> DispatchResult:
        """Run the whole pipeline without HTTP. ``body`` is bytes, text, or a JSON-able value."""
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = orjson.dumps(body)
        if isinstance(query, Mapping):
            from urllib.parse import urlencode

            query = urlencode(query)
        return await self.pipeline.deliver(webhook, body, Headers(headers or {}), query or "")

    # --- lifecycle ----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Check the handlers against the catalog; start what queued mode needs."""
        self.check()
        if self.inbox is not None:
            await self.inbox.start()
        self.started = True

    async def shutdown(self) -> None:
        if self.inbox is not None:
            await self.inbox.stop(self.graceful_timeout)
        self.started = False

    async def ensure_started(self) -> str | None:
        """Start on the first request when no lifespan ran (mounted without wiring it).

        Returns None when ready, or why not.
        """
        with self._start_lock:
            if self.started:
                return None
            self.started = True  # claim it; undone below if startup fails
        try:
            await self.startup()
        except Exception as error:
            self.started = False
            logger.error("cannot start: %s", error)
            return str(error)
        logger.warning(
            "dispatcher started on its first request: wire its lifespan into the parent app "
            "(Starlette/FastAPI: lifespan=hooks.lifespan) so that problems stop the start-up"
        )
        return None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """For a parent app: ``Starlette(lifespan=hooks.lifespan)`` / ``FastAPI(lifespan=...)``."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    # --- ASGI ---------------------------------------------------------------------------------

    async def internal(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """The receiver's own routes: ``/_health`` (and, with their extras, metrics and console)."""
        if path == "/_metrics":
            await self.metrics.endpoint(scope, receive, send)
            return
        if path == "/_ui" or path.startswith("/_ui/"):
            await self.console(scope, receive, send)
            return
        if path.rstrip("/") == "/_health":
            if scope["method"] not in ("GET", "HEAD"):
                await send_json(send, 405, {"error": "method_not_allowed"}, {"allow": "GET, HEAD"})
                return
            await send_json(send, 200, await self.health())
            return
        await send_json(send, 404, {"error": "not_found", "detail": f"no route {path!r}"})

    async def console(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/_ui``: the operator console, when a console token is set."""
        if not self.console_token:
            detail = (
                "the console is off; set Dispatcher(console_token=...) or serve --console-token"
            )
            await send_json(send, 404, {"error": "not_found", "detail": detail})
            return
        if self._console is None:
            from .console import build_console

            self._console = build_console(self)
        await self._console(scope, receive, send)

    async def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "mode": "queued" if self.inbox is not None else "inline",
            "webhooks": len(self.catalog.webhooks),
            "events": len(self.catalog.events),
        }


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}
