"""The inbox contract: the records stores exchange with callers, and the abstract store.

Every store (memory, SQLite, PostgreSQL) keeps the same semantics, so a test written
against one runs against all of them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import operator
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from dispatcher.errors import ValidationError
from dispatcher.inbox.states import (  # noqa: F401 - part of this module's interface
    DELIVERY_STATUSES,
    LAPSED_ERROR,
    TASK_STATUSES,
    TERMINAL_STATUSES,
    check_schema_version,
    delivery_status,
    replay_targets,
    unique_handlers,
)

Clock = Callable[[], float]
T = TypeVar("T")


@dataclass(slots=True)  # not frozen: every request makes one, and frozen fields cost more
class NewDelivery:
    id: str
    webhook: str
    event: str | None
    idempotency_key: str | None
    body: bytes
    headers: tuple[tuple[str, str], ...]
    query: str
    received_at: float
    handlers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    task_id: int | str
    delivery_id: str
    handler: str
    attempt: int
    series: int
    lease_token: str
    webhook: str
    event: str | None
    body: bytes
    headers: tuple[tuple[str, str], ...]
    query: str
    received_at: float


class InboxStore(abc.ABC):
    """Durable storage for deliveries and their handler tasks.

    ``clock`` is public so the worker computes retry times on the same clock the store
    compares them with (tests inject a fake one).
    """

    clock: Clock

    # -- lifecycle ---------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema (idempotent) and get ready for use."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def migrate(self) -> None:
        await self.open()

    async def __aenter__(self) -> InboxStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the delivery path -------------------------------------------------------------

    @abc.abstractmethod
    async def add(self, delivery: NewDelivery) -> str:
        """Store ``delivery`` with one pending task per handler: "stored" or "duplicate"."""

    async def add_and_claim(
        self, delivery: NewDelivery, worker: str, lease: float, limit: int
    ) -> tuple[str, list[ClaimedTask]]:
        """``add``, with up to ``limit`` of the new tasks claimed for ``worker`` at once.

        A worker in the receiving process that has free slots takes a fresh delivery's
        tasks in the transaction that stores it, instead of in a claim of its own later:
        no wake-up, no claim round trip, no second read of the delivery. "Claimed" means
        what ``claim`` means: attempt 1 is recorded as started and the lease lapses
        unless renewed, so a crash before the outcome is recorded loses nothing. The
        tasks not claimed here (over ``limit``) are left pending for any worker.

        This default claims nothing, so a store without it still works: the worker's
        next claim finds the tasks.
        """
        return await self.add(delivery), []

    @abc.abstractmethod
    async def claim(self, worker: str, limit: int, lease: float) -> list[ClaimedTask]: ...

    @abc.abstractmethod
    async def renew(self, task: ClaimedTask, lease: float) -> bool: ...

    @abc.abstractmethod
    async def complete(self, task: ClaimedTask) -> bool: ...

    @abc.abstractmethod
    async def fail(self, task: ClaimedTask, error: str, retry_at: float | None) -> bool: ...

    @abc.abstractmethod
    async def wait(self, timeout: float) -> None:
        """Return when new work may be claimable, or after ``timeout`` seconds."""

    @abc.abstractmethod
    async def next_due(self) -> float | None:
        """The earliest time a claim could return something (None: no open task)."""

    @abc.abstractmethod
    async def pending_count(self) -> int:
        """Tasks not yet terminal (pending or leased)."""

    async def idle(self) -> bool:
        return await self.pending_count() == 0

    # -- operator reads and actions ----------------------------------------------------

    @abc.abstractmethod
    async def stats(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def list(
        self,
        status: str | None = None,
        webhook: str | None = None,
        event: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def get(self, delivery_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def replay(
        self,
        ids: Sequence[str] | None = None,
        *,
        status: str | None = None,
        webhook: str | None = None,
    ) -> int: ...

    @abc.abstractmethod
    async def purge(self, status: str, older_than: float) -> int: ...

    async def prune(self, done_older_than: float = 7 * 86400) -> int:
        return await self.purge("done", done_older_than)

    @abc.abstractmethod
    async def per_minute(self, since: float) -> list[tuple[int, str, int]]: ...


# -- helpers shared by the stores ---------------------------------------------------------


def dump_headers(headers: Sequence[tuple[str, str]]) -> str:
    """Headers as the SQL stores keep them: a JSON array of [name, value] pairs, in order
    (repeats included)."""
    return orjson.dumps(headers).decode()


def load_headers(stored: str) -> tuple[tuple[str, str], ...]:
    """Headers kept by ``dump_headers``, as (name, value) pairs again."""
    return tuple(map(tuple, orjson.loads(stored)))


def fresh_task(
    delivery: NewDelivery, task_id: int | str, handler: str, lease_token: str
) -> ClaimedTask:
    """The first attempt of a task claimed as its delivery is stored (``add_and_claim``)."""
    return ClaimedTask(
        task_id, delivery.id, handler, 1, 0, lease_token, delivery.webhook, delivery.event,
        delivery.body, delivery.headers, delivery.query, delivery.received_at,
    )  # fmt: skip


def still_awaited(items: list[T], futures: list[asyncio.Future[Any]]) -> tuple[list[T], list[Any]]:
    """``items`` and their callers' ``futures`` (in the same order), less those whose
    caller gave up (cancelled) before they were written: a delivery whose request was
    cancelled was never acknowledged, so it is not stored. The lists themselves when no
    caller gave up, the common case (one C-level pass to see it)."""
    if not any(map(_done, futures)):
        return items, futures
    kept = [i for i, future in enumerate(futures) if not future.done()]
    return [items[i] for i in kept], [futures[i] for i in kept]


_done = operator.methodcaller("done")


def check_list_args(status: str | None, limit: int) -> None:
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationError("status", _unknown_status(status))
    if limit < 1:
        raise ValidationError("limit", f"must be at least 1, got {limit}")


def _unknown_status(status: str) -> str:
    return f"unknown delivery status {status!r}; use one of {', '.join(DELIVERY_STATUSES)}"


def check_replay_args(ids: Sequence[str] | None, status: str | None, webhook: str | None) -> None:
    if ids is None and status is None and webhook is None:
        raise ValidationError(
            "replay",
            "name delivery ids, or select by status and/or webhook (refusing to replay all)",
        )
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationError("status", _unknown_status(status))


def check_purge_args(status: str, older_than: float) -> None:
    if status not in TERMINAL_STATUSES:
        raise ValidationError(
            "status",
            f"purge deletes finished deliveries only: use 'done' or 'dead', not {status!r}",
        )
    if older_than < 0:
        raise ValidationError("older_than", f"must be >= 0 seconds, got {older_than}")


def empty_stats() -> dict[str, Any]:
    return {
        "deliveries": dict.fromkeys(DELIVERY_STATUSES, 0),
        "tasks": dict.fromkeys(TASK_STATUSES, 0),
        "oldest_pending_age": None,
    }


class Wakeup:
    """A wake-up signal usable from any thread and any event loop.

    No asyncio object is created until ``wait()`` runs, and each waiter's future lives on
    its own loop: tests start a fresh loop per test while one store object outlives them.
    A notify with nobody waiting is remembered, so work added just before a worker goes
    to sleep is not left waiting for the next poll.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._missed = False

    def notify(self) -> None:
        if self._missed and not self._waiters:
            return  # remembered already, and any new waiter sees that: nothing to do
        with self._lock:
            waiters = list(self._waiters)
            self._waiters.clear()
            if not waiters:
                self._missed = True
        for loop, future in waiters:
            # RuntimeError: that loop is closed, so nobody waits there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)

    async def wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._lock:
            if self._missed:
                self._missed = False
                return
            self._waiters.add(entry)
        try:
            await asyncio.wait([future], timeout=max(0.0, timeout))
        finally:
            with self._lock:
                self._waiters.discard(entry)
            future.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_for_work(store: InboxStore, wakeup: Wakeup, timeout: float) -> None:
    """Sleep on ``wakeup``, but no longer than until the store's next task falls due."""
    due = await store.next_due()
    if due is not None:
        timeout = min(timeout, due - store.clock())
    await wakeup.wait(timeout)
