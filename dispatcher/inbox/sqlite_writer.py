"""Group commit for SQLite: one thread owns the write connection and batches every write.

An fsync per write would cap throughput at a few thousand per second, so the writer
thread commits every operation queued while it was busy in one transaction (one fsync
of the WAL), and answers each caller only after the transaction holding its operation
committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Op = tuple[Callable[[sqlite3.Connection], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class Writer:
    """The one thread that writes: it commits whatever is queued as one transaction.

    Each operation runs inside its own SAVEPOINT, so one that raises (a duplicate id, a
    replay of an unknown delivery) is rolled back alone and the rest of its batch commits.
    Operations are plain functions of the connection. ``submit`` returns a future of the
    caller's own event loop, and after each commit the writer answers every loop with one
    thread-safe callback: several loops may share the writer, and a batch of 200 answers
    costs one wake-up per loop instead of 200.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, batch_size: int = 256) -> None:
        self.commits = 0
        self._connect = connect
        self._batch_size = batch_size
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, name="dispatcher-inbox-writer", daemon=True
        )

    def start(self) -> concurrent.futures.Future[None]:
        """Start the thread; the future resolves once the connection is configured."""
        self._thread.start()
        return self._ready

    def submit(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``op``; the future resolves after the transaction holding it committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:  # no operation may slip in behind the stop marker and hang
            if self._stopped:
                raise RuntimeError("the inbox store is closed")
            self._queue.put((op, loop, future))
        return future

    def stop(self) -> None:
        """Finish every queued operation, then close the connection and end the thread."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            with self._lock:
                self._stopped = True
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            stopping = False
            while not stopping:
                batch: list[_Op] = []
                item = self._queue.get()
                while True:
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                    if len(batch) >= self._batch_size:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._commit(conn, batch)
        finally:
            conn.close()
            self._abandon()

    def _abandon(self) -> None:
        """Fail whatever is still queued (only if the thread died): no caller may hang."""
        with self._lock:
            self._stopped = True
        leftovers: list[_Op] = []
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if item is not None:
                    leftovers.append(item)
        error = RuntimeError("the inbox writer stopped")
        _answer([(loop, future, False, error) for _, loop, future in leftovers])

    def _commit(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        # A caller that gave up (cancelled) before its turn is skipped, not half-done.
        # Reading done() from this thread can only be stale towards running the op anyway.
        ops = [item for item in batch if not item[2].done()]
        if not ops:
            return
        answers: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, loop, future in ops:
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    answers.append((loop, future, False, exc))
                else:
                    conn.execute("RELEASE op")
                    answers.append((loop, future, True, value))
            conn.execute("COMMIT")
        except BaseException as exc:
            # The commit (or the transaction) failed: nothing of this batch is durable,
            # so every caller hears about it, including those whose own op went well.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            _answer([(loop, future, False, exc) for _, loop, future in ops])
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        _answer(answers)


def _answer(
    answers: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], bool, Any]],
) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for loop, future, ok, value in answers:
        by_loop.setdefault(loop, []).append((future, ok, value))
    for loop, results in by_loop.items():
        # RuntimeError: that loop is closed, so nobody is left to answer there.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, results)


def _resolve(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():  # the caller was cancelled meanwhile
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
