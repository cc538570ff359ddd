"""Queued mode: store every accepted delivery before acknowledging it, run handlers from the inbox.

The receiver's side is ``enqueue``: one transaction stores the delivery and one
task per handler, then the answer is 202 (503 if the store failed: nothing is
acknowledged that is not stored). The workers' side is ``run_task``: rebuild
the Event from the stored delivery and run one handler; the Worker retries
with backoff and dead-letters. ``on_error`` handlers hear of a task only when
it is dead, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from starlette.datastructures import QueryParams

from .bodies import body_kind, parse_body
from .errors import DispatcherError, UnstorableError, ValidationError
from .event import Event
from .headers import Headers
from .inbox import InboxStore, open_inbox
from .inbox.base import ClaimedTask, NewDelivery
from .pipeline import EMPTY_QUERY, DispatchResult, rejected
from .retry import Retry
from .worker import Worker

if TYPE_CHECKING:
    from .app import Dispatcher
    from .routing import Handler

logger = logging.getLogger("dispatcher")

PRUNE_EVERY = 3600.0  # seconds between retention sweeps of done deliveries
#: Events of deliveries this process stored, kept for its own workers' first runs.
FRESH_EVENTS = 4096


class QueuedMode:
    """The inbox of a Dispatcher: its store and, unless ``concurrency`` is 0, its workers."""

    def __init__(self, hooks: Dispatcher, inbox: str | InboxStore) -> None:
        self.hooks = hooks  # its lease, concurrency, retention and retry apply
        if isinstance(inbox, str):
            self.store = open_inbox(inbox)
        elif isinstance(inbox, InboxStore):
            self.store = inbox
        else:
            raise ValidationError(
                "inbox", "must be a URL such as sqlite:///inbox.db, or a dispatcher.inbox store"
            )
        self.worker: Worker | None = None
        # delivery id -> [the Event the pipeline built, its tasks not yet started here].
        # A first run in this process takes the Event from here instead of parsing the
        # stored body again; other processes' deliveries, retries and replays are rebuilt
        # from the store. Oldest first, so the bound drops those least likely to come. An
        # OrderedDict: dropping a plain dict's first key scans past every key deleted
        # before it, which cost ~2 us per delivery under load.
        self._fresh: OrderedDict[str, list[Any]] = OrderedDict()
        self._pruner: asyncio.Task[None] | None = None
        self._opened = False

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        if not self._opened:
            await self.store.open()
            self._opened = True

    async def start(self) -> None:
        """Open the store and, for an in-process receiver, start the workers and the pruner."""
        await self.open()
        if self.hooks.concurrency > 0:
            await self.start_workers(self.hooks.concurrency)

    async def start_workers(self, concurrency: int) -> None:
        self.worker = Worker(
            self.store,
            self.run_task,
            retry_for=self.retry_for,
            concurrency=concurrency,
            lease=self.hooks.lease,
            on_dead=self.on_dead,
        )
        await self.worker.start()
        self._pruner = asyncio.create_task(self._prune_forever(), name="dispatcher-inbox-pruner")

    async def stop(self, timeout: float = 30.0) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None
        if self.worker is not None:
            await self.worker.stop(timeout)
            self.worker = None
        self._fresh.clear()
        if self._opened:
            await self.store.close()
            self._opened = False

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until no task is pending or running (tests: ``client.drain()``)."""
        deadline = time.monotonic() + timeout
        while not await self.store.idle():
            if time.monotonic() > deadline:
                stats = await self.store.stats()
                raise TimeoutError(f"the inbox is still busy after {timeout} s: {stats}")
            await asyncio.sleep(0.01)

    async def _prune_forever(self) -> None:
        while True:
            try:
                pruned = await self.store.prune(self.hooks.retention)
                if pruned:
                    logger.info("inbox: pruned %d done deliveries older than the retention", pruned)
            except Exception:
                logger.exception("inbox: pruning failed")
            await asyncio.sleep(PRUNE_EVERY)

    # --- the receiver's side ---------------------------------------------------------------------

    async def enqueue(
        self, event: Event, handlers: tuple[Handler, ...], key: str | None
    ) -> DispatchResult | None:
        """Store ``event`` and its handlers' tasks. None when it was stored and queued, the
        commonest outcome: the receiver answers that 202 from a template (``queued``), as
        it does a handled delivery's 200, without a DispatchResult and its body's calls."""
        delivery = NewDelivery(  # positional: keyword arguments cost more on this path
            event.id, event.webhook, event.tag, key, event.body, event.headers.raw,
            "" if event.query is EMPTY_QUERY else str(event.query),  # no __len__ call
            event.received_timestamp,
            tuple([handler.key for handler in handlers]),
        )  # fmt: skip
        # This process's workers take the tasks they have room for in the transaction that
        # stores them, and start them as soon as it committed (InboxStore.add_and_claim).
        worker = self.worker
        reserved = worker.reserve(len(handlers)) if worker is not None and handlers else 0
        claimed: list[ClaimedTask] = []
        if reserved and worker is not None:
            name, lease = worker.name, worker.lease
        else:  # add_and_claim with a limit of 0 is add, without add's own coroutine level
            name, lease = "", 0.0
        try:
            outcome, claimed = await self.store.add_and_claim(delivery, name, lease, reserved)
        except UnstorableError as error:  # its data, not the store: a retry cannot help
            logger.warning("inbox: refused delivery %s: %s", event.id, error)
            return rejected(
                422, "unstorable_delivery",
                "the delivery holds data the inbox cannot store (a NUL character in its "
                "idempotency key, say); nothing was accepted, and sending it again will not help",
                webhook=event.webhook,
            )  # fmt: skip
        except Exception as error:
            logger.error("inbox: could not store delivery %s: %r", event.id, error)
            return rejected(
                503, "inbox_unavailable",
                "the delivery could not be stored; nothing was accepted, retry later",
                webhook=event.webhook,
            )  # fmt: skip
        finally:
            if reserved and not claimed:  # failed, duplicate or cancelled: free the slots
                assert worker is not None
                worker.adopt((), reserved)
        if outcome == "duplicate":
            return DispatchResult("duplicate", 200, event.id, event.webhook, event.tag)
        if worker is not None and delivery.handlers:
            fresh = self._fresh
            fresh[event.id] = [event, len(set(delivery.handlers))]
            if len(fresh) > FRESH_EVENTS:
                fresh.popitem(last=False)
            if claimed:
                worker.adopt(claimed, reserved)
        return None

    # --- the workers' side -----------------------------------------------------------------------

    def handler_for(self, task: ClaimedTask) -> Handler:
        handler = self.hooks.router.by_key(task.handler)
        if handler is None:
            raise DispatcherError(
                f"no handler {task.handler!r} is registered in this process; was it renamed "
                "or removed? Register it again, or purge the task"
            )
        return handler

    def retry_for(self, task: ClaimedTask) -> Retry:
        handler = self.hooks.router.by_key(task.handler)
        if handler is not None and handler.retry is not None:
            return handler.retry
        return self.hooks.retry

    def event_of(self, task: ClaimedTask) -> Event:
        """The Event a handler sees: for a first run of a delivery this process stored,
        the pipeline's own; otherwise rebuilt from the stored delivery."""
        if task.attempt == 1 and task.series == 0:
            fresh = self._fresh.get(task.delivery_id)
            if fresh is not None:
                fresh[1] -= 1
                if fresh[1] <= 0:
                    del self._fresh[task.delivery_id]
                event: Event = fresh[0]
                return event
        return self.rebuilt_event(task)

    def rebuilt_event(self, task: ClaimedTask) -> Event:
        """The Event of a task, from the stored delivery."""
        headers = Headers.from_raw(task.headers)
        known = self.hooks.catalog.events.get(task.event) if task.event else None
        return Event(
            id=task.delivery_id,
            webhook=task.webhook,
            tag=task.event,
            name=known.name if known is not None else None,
            payload=parse_body(body_kind(headers.get("content-type")), task.body),
            headers=headers,
            query=query_of(task),
            body=task.body,
            received_at=task.received_at,
            attempt=task.attempt,
            replay=task.series,
        )

    async def run_task(self, task: ClaimedTask) -> None:
        handler = self.handler_for(task)
        event = self.event_of(task)
        start = time.perf_counter()
        failed = True
        try:
            await handler(event)
            failed = False
        finally:
            took = time.perf_counter() - start
            self.hooks.metrics.handler_ran(task.event, took, failed)
            if logger.isEnabledFor(logging.INFO):
                log_task(task, handler, failed, took)

    async def on_dead(self, task: ClaimedTask, error: BaseException) -> None:
        try:
            event = self.rebuilt_event(task)
        except Exception:  # the body no longer parses: report with what we have
            event = Event(
                task.delivery_id, task.webhook, task.event, None, None,
                Headers.from_raw(task.headers), query_of(task), task.body, task.received_at,
                task.attempt, task.series,
            )  # fmt: skip
        logger.error(
            "%s %s: task %s is dead after %d attempt(s): %s",
            task.webhook, task.event or "-", task.handler, task.attempt, error,
        )  # fmt: skip
        await self.hooks.pipeline.report_error(event, error)


def query_of(task: ClaimedTask) -> QueryParams:
    """The task's query parameters: most webhooks have none, and parsing "" cost ~10 us
    of a task's run in a drain (cProfile), so those share one empty QueryParams."""
    return QueryParams(task.query) if task.query else EMPTY_QUERY


def log_task(task: ClaimedTask, handler: Handler, failed: bool, took: float) -> None:
    """One line per task run: webhook, event, outcome, attempt, duration, delivery, handler."""
    outcome = "failed" if failed else "done"
    logger.info(
        "%s %s %s attempt %d %.1fms %s %s",
        task.webhook, task.event or "-", outcome, task.attempt, took * 1000, task.delivery_id,
        handler.name,
        extra={
            "delivery_id": task.delivery_id, "webhook": task.webhook, "event": task.event,
            "status": outcome, "duration_ms": round(took * 1000, 3), "attempt": task.attempt,
        },
    )  # fmt: skip
