"""Group commit for SQLite: every write queued meanwhile shares one transaction and one fsync.

An fsync per write would cap throughput at a few thousand per second, so the writer
runs whatever was queued while the previous transaction committed as one transaction,
and answers each caller only after the transaction holding its operation committed.

Who does what, and why. Python's sqlite3 releases the GIL around every statement step
and must take it back afterwards; a thread that runs the statements while the event
loop is busy spends most of its time waiting for the GIL (measured: 4 ms a batch of
20 deliveries, of which 0.8 ms was the fsync). So the statements of a batch run on the
event loop's own thread, where the GIL already is (they are short: multi-row inserts,
indexed updates), and only the ``COMMIT`` (the fsync, which needs no GIL) goes to the
writer's thread. While it syncs, new operations queue up for the next batch.

The loop never waits for another process's lock: the connection's busy timeout is 0,
and a batch that finds the database locked (another receiver or ``dispatcher worker``
process is writing) is handed whole to the writer's thread, which waits there.

Writes that come in numbers (adds, task outcomes) are *grouped*: the caller names a
flush function, and all items of one flush in a batch are written by one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

#: ``flush(conn, items)`` writes a group of items and returns one result per item, or
#: raises; then the batch is written again with each item alone, so one bad item fails
#: alone and the rest commit.
Flush = Callable[[sqlite3.Connection, list[Any]], Sequence[Any]]

# (flush or None, item, the caller's loop, its future). A None flush marks a plain
# operation: the item is a function of the connection.
_Op = tuple[Flush | None, Any, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
_Answer = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", bool, Any]


class Writer:
    """Runs queued operations in batches, one transaction each; one batch at a time.

    ``submit`` may be called from several event loops (each caller is answered on its
    own loop); a batch's statements run on the loop of its oldest operation.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        batch_size: int = 256,
        busy_timeout: float = 5.0,
    ) -> None:
        self.commits = 0
        self._connect = connect
        self._batch_size = batch_size
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="dispatcher-inbox-writer")
        self._lock = threading.Lock()  # guards the four fields below
        self._pending: list[_Op] = []
        self._busy = False  # a batch holds the connection, from BEGIN to its answers
        self._scheduled: asyncio.AbstractEventLoop | None = None  # a loop about to flush
        self._stopped = False
        self._home: tuple[int, asyncio.AbstractEventLoop] | None = None  # see _running_loop

    async def start(self) -> None:
        """Connect (on the writer's thread: connecting may wait for a lock)."""
        conn = await asyncio.wrap_future(self._thread.submit(self._connect))
        conn.execute("PRAGMA busy_timeout = 0")  # the loop never waits: see the module doc
        self._conn = conn

    def submit(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``op``; the future resolves after the transaction holding it committed."""
        return self._put(None, op)

    def submit_grouped(self, flush: Flush, item: Any) -> asyncio.Future[Any]:
        """Queue ``item`` for ``flush``, which writes it with the rest of its group."""
        return self._put(flush, item)

    async def close(self) -> None:
        """Finish every queued operation, then close the connection."""
        with self._lock:
            self._stopped = True
        while True:
            with self._lock:
                if not self._busy and not self._pending:
                    break
                if not self._busy:
                    self._schedule()
            await asyncio.sleep(0.001)
        if self._conn is not None:
            await asyncio.wrap_future(self._thread.submit(self._conn.close))
            self._conn = None
        self._thread.shutdown(wait=False)

    # -- scheduling ------------------------------------------------------------------------

    def _put(self, flush: Flush | None, item: Any) -> asyncio.Future[Any]:
        loop = self._running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:  # no operation may slip in behind close() and hang
            if self._stopped or self._conn is None:
                raise RuntimeError("the inbox store is closed")
            self._pending.append((flush, item, loop, future))
            flush_here = not self._busy and (self._scheduled is None or self._scheduled.is_closed())
            if flush_here:
                self._scheduled = loop
        if flush_here:  # soon, not now: what else this loop iteration submits joins the batch
            loop.call_soon(self._flush)
        return future

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """``asyncio.get_running_loop()``, which makes a getpid() system call on every call
        (before Python 3.12); the last caller's loop, when it is running on this thread,
        is the running loop (one thread runs one loop at a time), and costs no call."""
        home = self._home
        if home is not None and home[0] == threading.get_ident() and home[1].is_running():
            return home[1]
        loop = asyncio.get_running_loop()
        self._home = (threading.get_ident(), loop)
        return loop

    def _flush(self) -> None:
        """Start a batch: its statements here, on the loop; its commit on the thread."""
        with self._lock:
            self._scheduled = None
            # A caller that gave up (cancelled) before its turn is skipped, not half-done.
            self._pending = [op for op in self._pending if not op[3].done()]
            if self._busy or not self._pending:
                return
            batch = self._pending[: self._batch_size]
            del self._pending[: self._batch_size]
            self._busy = True
        conn = self._conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in _LOCKED:  # another process is writing: wait on the thread
                self._thread.submit(self._write_when_unlocked, batch, loop)
                return
            self._done(_failed(batch, exc))
            return
        except BaseException as exc:
            self._done(_failed(batch, exc))
            raise
        self._run(conn, batch, loop)

    def _write_when_unlocked(self, batch: list[_Op], loop: asyncio.AbstractEventLoop) -> None:
        """On the thread: BEGIN once the other process's lock is gone, then the batch."""
        conn = self._conn
        assert conn is not None
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in _LOCKED or time.monotonic() > deadline:
                    self._hand_back(loop, _failed(batch, exc))
                    return
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        self._run(conn, batch, loop)

    def _run(
        self, conn: sqlite3.Connection, batch: list[_Op], loop: asyncio.AbstractEventLoop
    ) -> None:
        """The batch's statements in the open transaction, then its commit on the thread.
        If they raise, the transaction is rolled back and every caller gets the error."""
        try:
            answers = _run_batch(conn, batch)
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._hand_back(loop, _failed(batch, exc))
            raise
        self._thread.submit(self._commit, batch, answers, loop)

    def _commit(
        self, batch: list[_Op], answers: list[_Answer], loop: asyncio.AbstractEventLoop
    ) -> None:
        """On the thread: the fsync. If it fails, nothing of the batch is durable, so every
        caller hears about it, including those whose own operation went well."""
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            answers = _failed(batch, exc)
        else:
            self.commits += 1
        self._hand_back(loop, answers)

    def _hand_back(self, loop: asyncio.AbstractEventLoop, answers: list[_Answer]) -> None:
        """From the thread: finish on the loop that ran the batch (one wake-up for it all)."""
        try:
            loop.call_soon_threadsafe(self._done, answers)
        except RuntimeError:  # that loop is closed: finish from here
            self._done(answers)

    def _done(self, answers: list[_Answer]) -> None:
        """Answer a batch's callers, free the connection, and start the next batch."""
        _answer(answers)
        with self._lock:
            self._busy = False
            self._schedule()

    def _schedule(self) -> None:
        """Have the loop of the oldest queued operation flush (the lock is held)."""
        while self._pending and (self._scheduled is None or self._scheduled.is_closed()):
            loop = self._pending[0][2]
            try:
                _call_soon(loop, self._flush)
            except RuntimeError:  # that loop is closed: nobody is left to answer there
                self._pending = [op for op in self._pending if op[2] is not loop]
                self._scheduled = None
            else:
                self._scheduled = loop


_LOCKED = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _failed(batch: list[_Op], error: BaseException) -> list[_Answer]:
    """Every caller of ``batch`` gets ``error``."""
    return [(loop, future, False, error) for _, _, loop, future in batch]


def _run_batch(conn: sqlite3.Connection, batch: list[_Op]) -> list[_Answer]:
    """Run a batch inside the open transaction, each group with one flush call.

    Optimistic: nothing usually fails, so no savepoints. If something does, the batch
    starts over with each item in a savepoint of its own.
    """
    groups: dict[Any, list[_Op]] = {}  # each group where its first item was queued
    for op in batch:
        groups.setdefault(op[0] or object(), []).append(op)
    try:
        answers: list[_Answer] = []
        for group in groups.values():
            values = (group[0][0] or _call)(conn, [op[1] for op in group])
            answers.extend(
                (loop, future, True, value)
                for (_, _, loop, future), value in zip(group, values, strict=True)
            )
        return answers
    except Exception:
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        return [_run_alone(conn, op) for op in batch]


def _run_alone(conn: sqlite3.Connection, op: _Op) -> _Answer:
    """One item in a savepoint of its own: if it raises, only its own writes roll back."""
    flush, item, loop, future = op
    conn.execute("SAVEPOINT op")
    try:
        (value,) = (flush or _call)(conn, [item])
    except Exception as exc:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return (loop, future, False, exc)
    conn.execute("RELEASE op")
    return (loop, future, True, value)


def _call(conn: sqlite3.Connection, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    """The flush of a plain operation: the item is a function of the connection."""
    return [ops[0](conn)]


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head VALUES (...), (...), ...`` for every row, in a few statements."""
    if rows:
        marks = "(" + ",".join("?" * len(rows[0])) + ")"
        for chunk in chunked(rows):
            values = ",".join([marks] * len(chunk))
            conn.execute(f"{head} VALUES {values}", [v for row in chunk for v in row])


def chunked(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in chunks of ``MAX_ROWS``, the last one shorter.

    A statement's text depends on its number of rows, so a table needs up to
    ``MAX_ROWS`` distinct statements; the writer's connection caches that many
    prepared statements per table (``STATEMENT_CACHE``).
    """
    for start in range(0, len(items), MAX_ROWS):
        yield items[start : start + MAX_ROWS]


#: Rows per multi-row statement at most (x columns stays under SQLite's historical
#: limit of 999 parameters for tables of up to 15 columns).
MAX_ROWS = 64
#: Prepared statements the writer's connection keeps: every row count of three tables'
#: inserts, and the rest of the store's statements.
STATEMENT_CACHE = 5 * MAX_ROWS


def _answer(answers: list[_Answer]) -> None:
    """Resolve each future on its own loop: one callback per loop, not one per answer."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for loop, future, ok, value in answers:
        by_loop.setdefault(loop, []).append((future, ok, value))
    for loop, results in by_loop.items():
        # RuntimeError: that loop is closed, so nobody is left to answer there.
        with contextlib.suppress(RuntimeError):
            _call_soon(loop, _resolve, results)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """``loop.call_soon``, thread-safe when called from elsewhere (which costs a wake-up)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        loop.call_soon(callback, *args)
    else:
        loop.call_soon_threadsafe(callback, *args)


def _resolve(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():  # the caller was cancelled meanwhile
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
