"""The PostgreSQL inbox's batching writer: concurrent writes share one transaction.

A PostgreSQL commit waits for its WAL flush, and every statement is a round trip. Paid
once per delivery, that caps the receiver far below what it can parse; paid once per
batch, it is shared by every request that arrived meanwhile. ``GroupCommit`` queues each
caller's item, and a single flusher task hands everything queued (up to ``batch_size``)
to one ``flush`` call, which writes it in one transaction. Each caller is answered only
after ``flush`` returned, that is after the commit of its batch: acknowledged means
durable. ``AddWriter`` and ``OutcomeWriter`` are the two flushes: a batch of deliveries,
and a batch of task outcomes, each one statement (postgres_sql.py), so one round trip.

The queue and the flusher belong to the event loop the writer was created on, as the
asyncpg pool they write through does.
"""

from __future__ import annotations

import asyncio
import operator
import secrets
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import orjson

from dispatcher.errors import UnstorableError
from dispatcher.inbox.base import ClaimedTask, NewDelivery, fresh_task, still_awaited
from dispatcher.inbox.states import RERUNNABLE_OUTCOMES

if TYPE_CHECKING:
    import asyncpg

I = TypeVar("I")  # noqa: E741 - the item a caller queues
R = TypeVar("R")  # its result

#: ``flush(items)`` writes ``items`` in one transaction and returns one entry per item: its
#: result, or the exception that item alone failed with (the rest of the batch committed).
Flush = Callable[[list[I]], Awaitable[Sequence[R | Exception]]]

_STOPPED = "the inbox writer stopped before this write was committed"


class GroupCommit(Generic[I, R]):
    """Batch concurrent ``submit`` calls into one ``flush`` per transaction.

    One flush runs at a time: while it waits for its commit, new items queue up and the
    next flush takes them all. An idle writer flushes a lone item at once (no timer).
    If ``flush`` raises, nothing of its batch is durable, so every caller in the batch
    gets the exception; the next batch starts afresh. ``key`` names items that must not
    share a batch (two outcomes of one task): a repeat waits for the next batch, so it
    sees the effect of the first as if the calls had run one after the other.
    """

    def __init__(
        self,
        flush: Flush[I, R],
        *,
        batch_size: int = 256,
        key: Callable[[I], Hashable] | None = None,
        name: str = "dispatcher-inbox-writer",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        #: Batches committed so far (each is one transaction, so one WAL flush).
        self.commits = 0
        self._flush = flush
        self._batch_size = batch_size
        self._key = key
        self._name = name
        self._loop = asyncio.get_running_loop()
        # The items queued and their callers' futures, in the same order: two lists, so
        # that a batch is taken and handed to ``flush`` without a pass over its items.
        self._items: list[I] = []
        self._futures: list[asyncio.Future[R]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    def submit(self, item: I) -> asyncio.Future[R]:
        """Queue ``item``; its future has the result once the transaction holding it
        committed. The future itself, not a coroutine awaiting it: a coroutine level costs
        every delivery ~1.5k instructions on its way in and out."""
        if asyncio.get_running_loop() is not self._loop:
            # The flusher and the pool's connections live on the loop that opened the store.
            raise RuntimeError(
                "this PostgreSQL inbox was opened on another event loop; "
                "open and use a store on one loop"
            )
        if self._closed:
            raise RuntimeError("the inbox store is closed")
        future: asyncio.Future[R] = self._loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._run(), name=self._name)
        return future

    async def close(self) -> None:
        """Refuse new items and wait until everything queued has been flushed."""
        self._closed = True
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    # -- the flusher -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self._items:
                items, futures = self._take()
                if items:
                    await self._commit(items, futures)
        except BaseException:
            # Cancelled (the loop is shutting down): nobody may wait for an answer forever.
            _fail(self._futures, RuntimeError(_STOPPED))
            self._items, self._futures = [], []
            raise
        finally:
            # No await between finding the queue empty and this: an item queued from now
            # on sees no flusher and starts one.
            self._flusher = None

    def _take(self) -> tuple[list[I], list[asyncio.Future[R]]]:
        """The next batch: up to ``batch_size`` of the oldest items, with their futures,
        less those whose caller gave up (cancelled) before their turn, and less repeats of
        a key (they go back to the front of the queue, for the next batch)."""
        items, futures, size = self._items, self._futures, self._batch_size
        if len(items) <= size:  # the common case: all of it
            self._items, self._futures = [], []
        else:
            self._items, self._futures = items[size:], futures[size:]
            items, futures = items[:size], futures[:size]
        items, futures = still_awaited(items, futures)
        if self._key is not None:
            items, futures = self._one_per_key(self._key, items, futures)
        return items, futures

    def _one_per_key(
        self, key: Callable[[I], Hashable], items: list[I], futures: list[asyncio.Future[R]]
    ) -> tuple[list[I], list[asyncio.Future[R]]]:
        taken: tuple[list[I], list[asyncio.Future[R]]] = ([], [])
        later: tuple[list[I], list[asyncio.Future[R]]] = ([], [])
        keys: set[Hashable] = set()
        for item, future in zip(items, futures, strict=True):
            item_key = key(item)
            into = later if item_key in keys else taken
            keys.add(item_key)
            into[0].append(item)
            into[1].append(future)
        self._items[:0], self._futures[:0] = later
        return taken

    async def _commit(self, items: list[I], futures: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._flush(items)
        except Exception as exc:
            # The transaction did not commit: every caller of the batch hears about it,
            # including those whose own write was fine. Nothing carries over to the next.
            _fail(futures, exc)
            return
        except BaseException:
            _fail(futures, RuntimeError(_STOPPED))
            raise
        self.commits += 1
        for future, result in zip(futures, results, strict=True):
            if future.done():  # cancelled meanwhile; its write committed all the same
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def _fail(futures: list[asyncio.Future[R]], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)
            # Mark it read: a caller cancelled just now never reads it, and asyncio would
            # log "exception was never retrieved" for a failure its caller did not see.
            future.exception()


# -- the two flushes of the PostgreSQL inbox ------------------------------------------------


# Not frozen, as NewDelivery: every delivery makes one, and a frozen field costs a call.
@dataclass(slots=True)
class Add:
    delivery: NewDelivery
    handlers: tuple[str, ...]  # unique, in order
    now: float  # the store clock when add() was called: the tasks fall due then
    worker: str = ""  # add_and_claim: the worker its first ``limit`` tasks are leased to
    lease: float = 0.0
    limit: int = 0


#: What an add gets back: its outcome, the tasks claimed for its worker, and whether a
#: task was left pending for the workers.
Added = tuple[str, list[ClaimedTask], bool]


@dataclass(slots=True)
class Outcome:
    task: ClaimedTask
    status: str  # done, dead, or pending (a retry at retry_at)
    error: str | None
    retry_at: float | None
    now: float


class AddWriter:
    """Store a batch of deliveries in one transaction: "stored" or "duplicate" for each,
    with the tasks claimed for it (``Added``)."""

    def __init__(self, pool: asyncpg.Pool, sql: str, channel: str) -> None:
        import asyncpg  # here, not at import: asyncpg is an optional dependency

        self._pool = pool
        self._sql = sql  # ADD_BATCH, schema filled in
        self._channel = channel
        # What the server (or asyncpg, encoding the arguments) raises for one row's data:
        # the data errors mean the delivery can never be stored as it is.
        self._data_errors: tuple[type[Exception], ...] = (
            asyncpg.exceptions.DataError,
            asyncpg.exceptions._base.DataError,
        )
        self._row_errors = (asyncpg.exceptions.IntegrityConstraintViolationError,
                            *self._data_errors)  # fmt: skip
        self._data_error = asyncpg.exceptions._base.DataError

    async def __call__(self, batch: list[Add]) -> list[Added | Exception]:
        async with self._pool.acquire() as conn:
            try:
                return await self._insert(conn, batch)
            except self._row_errors as error:
                if len(batch) == 1:
                    if isinstance(error, self._data_errors):
                        raise _unstorable(error) from error
                    raise
            # One delivery the database refuses (a reused id, text it cannot store) must
            # not fail the others: redo them in one transaction, each in a savepoint.
            results: list[Added | Exception] = []
            async with conn.transaction():
                for add in batch:
                    try:
                        async with conn.transaction():
                            results.extend(await self._insert(conn, [add]))
                    except self._data_errors as exc:
                        results.append(_unstorable(exc))
                    except self._row_errors as exc:
                        results.append(exc)
            return results

    async def _insert(self, conn: asyncpg.Connection, batch: list[Add]) -> list[Added]:
        # Keyed deliveries go in sorted by key, so concurrent batches take the unique
        # index's locks in one order (see ADD_BATCH); sorted() is stable, so among repeats
        # of a key inside the batch the first submitted is the one stored. Without keys
        # there are no such locks, and the batch goes in as it came.
        order: Sequence[int] = range(len(batch))
        rows = batch
        if not _NO_KEY.issuperset(map(_idempotency_key, map(_delivery, batch))):
            order = sorted(order, key=[_key_order(add.delivery) for add in batch].__getitem__)
            rows = [batch[i] for i in order]
        # (delivery id, handler, due at, lease token or None, worker, lease until)
        tasks: list[tuple[str, str, float, str | None, str | None, float | None]] = []
        leases: list[list[tuple[str, str]]] = []  # per add: (handler, token) of its claims
        for add in batch:
            leases.append([])
            for n, handler in enumerate(add.handlers):
                if n < add.limit:
                    token = secrets.token_hex(16)
                    leases[-1].append((handler, token))
                    lease = (token, add.worker, add.now + add.lease)
                    tasks.append((add.delivery.id, handler, add.now, *lease))
                else:
                    tasks.append((add.delivery.id, handler, add.now, None, None, None))
        # The headers go in as the JSON array of pairs that dump_headers would make, and
        # the bodies as one bytea, each row saying how long its own is (see ADD_BATCH).
        try:
            deliveries = orjson.dumps([
                (d.id, d.webhook, d.event, d.idempotency_key, d.headers, d.query,
                 d.received_at, "pending" if add.handlers else "done", len(d.body))
                for add in rows for d in (add.delivery,)
            ]).decode()  # fmt: skip
        except orjson.JSONEncodeError as error:  # a lone surrogate: no text can hold it
            message = f"a delivery holds text PostgreSQL cannot store: {error}"
            raise self._data_error(message) from error
        bodies = b"".join([add.delivery.body for add in rows])
        result = await conn.fetchrow(
            self._sql, deliveries, bodies, orjson.dumps(tasks).decode(), self._channel
        )
        stored = set(result["stored"])
        task_ids = dict(zip(result["claimed_tokens"], result["claimed_ids"], strict=True))
        answers: list[Added] = [("", [], False)] * len(batch)
        for i in order:
            add = batch[i]
            delivery_id = add.delivery.id
            # A repeat of an id already stored in this batch can only be a key duplicate
            # (a clashing id would have raised): the first row with the id got it.
            if delivery_id not in stored:
                answers[i] = ("duplicate", [], False)
                continue
            stored.discard(delivery_id)
            claimed = [
                fresh_task(add.delivery, task_ids[token], handler, token)
                for handler, token in leases[i]
            ] if leases[i] else []  # fmt: skip
            answers[i] = ("stored", claimed, len(claimed) < len(add.handlers))
        return answers


class OutcomeWriter:
    """Record a batch of outcomes (one per task) in one transaction; False where fenced."""

    def __init__(self, pool: asyncpg.Pool, sql: str, channel: str) -> None:
        self._pool = pool
        self._sql = sql  # FINISH_BATCH, schema filled in
        self._channel = channel

    async def __call__(self, batch: list[Outcome]) -> list[bool]:
        outcomes = orjson.dumps([
            (int(o.task.task_id), o.task.lease_token, o.status, o.error, o.retry_at,
             o.task.series, o.task.attempt, o.now)
            for o in batch
        ]).decode()  # fmt: skip
        result = await self._pool.fetchrow(
            self._sql,
            outcomes,
            sorted({o.task.delivery_id for o in batch}),  # the lock order: see FINISH_BATCH
            self._channel,
            # A batch of only RERUNNABLE_OUTCOMES commits with synchronous_commit off: the
            # next flushed commit makes it durable too. Claims and renewals keep the flush:
            # unlike SQLite's one machine, workers elsewhere outlive a server crash, and a
            # lease taken back would let a second worker run a task the first still runs.
            all(o.status in RERUNNABLE_OUTCOMES for o in batch),
        )
        # Not finished: fenced, the lease lapsed and someone else holds the task now.
        finished = set(result["finished"])
        return [int(o.task.task_id) in finished for o in batch]


def _unstorable(error: Exception) -> UnstorableError:
    """A data error of one delivery's row: trying again cannot help."""
    refused = UnstorableError(f"PostgreSQL cannot store this delivery: {error}")
    refused.__cause__ = error
    return refused


_NO_KEY = frozenset([None])
_delivery = operator.attrgetter("delivery")
_idempotency_key = operator.attrgetter("idempotency_key")


def _key_order(delivery: NewDelivery) -> tuple[bool, str, str]:
    return (delivery.idempotency_key is None, delivery.webhook, delivery.idempotency_key or "")
