"""The embedded inbox: one SQLite file in WAL mode, written with group commit.

Durability: ``synchronous=FULL`` fsyncs the WAL on every commit, so an acknowledged
delivery survives a process crash and a power loss. Every write goes to one writer
process (sqlite_writer.py, sqlite_process.py), which commits whatever was queued
meanwhile in one transaction: one fsync per batch, and each caller is answered only
after its batch committed. A batch of only claims, renewals and done or retry outcomes
commits without its fsync: losing it to a power loss only runs a task again
(``sqlite_ops.needs_sync``). The writes themselves are in sqlite_ops.py.

Reads (next_due, stats, list, get) use a second connection on a reader thread: WAL
readers see the last commit and never block the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from dispatcher.errors import ValidationError
from dispatcher.inbox.base import (
    ClaimedTask,
    Clock,
    InboxStore,
    NewDelivery,
    Wakeup,
    check_list_args,
    check_purge_args,
    check_replay_args,
    dump_headers,
    empty_stats,
    fresh_task,
    load_headers,
    wait_for_work,
)
from dispatcher.inbox.sqlite_ops import MAX_CLAIM, filters
from dispatcher.inbox.sqlite_writer import Writer

T = TypeVar("T")

_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

_SUMMARY_SQL = """
SELECT d.id, d.webhook, d.event, d.status, d.received_at,
    (SELECT count(*) FROM attempts a WHERE a.delivery_id = d.id),
    (SELECT a.error FROM attempts a WHERE a.delivery_id = d.id AND a.error IS NOT NULL
        ORDER BY a.finished_at DESC, a.id DESC LIMIT 1)
FROM deliveries d
"""

_SUMMARY_KEYS = ("id", "webhook", "event", "status", "received_at", "attempts", "last_error")


class SQLiteStore(InboxStore):
    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock = time.time,
        synchronous: str = "FULL",
        batch_size: int = 256,
        busy_timeout: float = 5.0,
    ) -> None:
        if str(synchronous).upper() not in _SYNC_MODES:
            raise ValidationError(
                "synchronous", f"got {synchronous!r}; use 'FULL' (durable) or 'NORMAL'"
            )
        if not (isinstance(busy_timeout, int | float) and 0 <= busy_timeout < 1e6):
            raise ValidationError(
                "busy_timeout", f"got {busy_timeout!r}; give seconds, from 0 up (5 by default)"
            )
        self.path = Path(path)
        self.clock = clock
        self.synchronous = str(synchronous).upper()
        self._batch_size = batch_size
        self._busy_ms = int(busy_timeout * 1000)
        self._wakeup = Wakeup()
        self._writer: Writer | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None

    @property
    def commits(self) -> int:
        """Transactions committed by the writer so far (each is one fsync of the WAL)."""
        return self._writer.commits if self._writer else 0

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = Writer(
            self.path,
            synchronous=self.synchronous,
            busy_timeout=self._busy_ms / 1000,
            batch_size=self._batch_size,
        )
        await writer.start()
        self._writer = writer
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="dispatcher-inbox-reader")
        try:
            await self._write("migrate", None)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        if writer is not None:
            await writer.close()
        if reader is not None:
            await asyncio.wrap_future(reader.submit(self._close_reader))
            reader.shutdown(wait=False)

    def _close_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    # The two below hand back the writer's future itself, not a coroutine awaiting it: a
    # coroutine level costs every delivery ~1.5k instructions on its way in and out.

    def _write(self, name: str, arg: Any) -> asyncio.Future[Any]:
        """Run the operation ``name`` of sqlite_ops.OPS in the writer process."""
        return self._open_writer().submit(name, arg)

    def _write_grouped(self, name: str, item: Any) -> asyncio.Future[Any]:
        """Write ``item`` with the rest of its group (sqlite_ops.GROUPED[name])."""
        return self._open_writer().submit(name, item, True)

    def _open_writer(self) -> Writer:
        if self._writer is None:
            raise RuntimeError("the inbox store is not open; call open() first")
        return self._writer

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise RuntimeError("the inbox store is not open; call open() first")
        future: concurrent.futures.Future[T] = self._reader.submit(self._run_read, op)
        return await asyncio.wrap_future(future)

    def _run_read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._read_conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            conn.execute("PRAGMA query_only = 1")
            self._read_conn = conn
        conn = self._read_conn
        conn.execute("BEGIN")  # one snapshot for all the queries of this read
        try:
            return op(conn)
        finally:
            conn.execute("COMMIT")

    async def pragma(self, name: str) -> Any:
        """Read a PRAGMA on the write connection (where durability settings apply)."""
        if not re.fullmatch(r"[a-z_]+", name):
            raise ValidationError("pragma", f"not a pragma name: {name!r}")
        return await self._write("pragma", name)

    # -- the delivery path -------------------------------------------------------------

    async def add(self, delivery: NewDelivery) -> str:
        outcome, _ = await self.add_and_claim(delivery, "", 0.0, 0)
        return outcome

    async def add_and_claim(
        self, delivery: NewDelivery, worker: str, lease: float, limit: int
    ) -> tuple[str, list[ClaimedTask]]:
        d = delivery
        writer = self._writer  # _write_grouped, inline: every queued request comes here
        if writer is None:
            writer = self._open_writer()  # raises: not open
        outcome, claimed, left_pending = await writer.submit("add_many", (
            d.id, d.webhook, d.event, d.idempotency_key, d.body,
            dump_headers(d.headers), d.query, d.received_at, d.handlers,
            worker, lease, limit, self.clock(),
        ), True)  # fmt: skip
        if left_pending:
            self._wakeup.notify()
        return outcome, [fresh_task(d, *task) for task in claimed]

    async def claim(self, worker: str, limit: int, lease: float) -> list[ClaimedTask]:
        if limit < 1:
            return []
        rows = await self._write("claim", (worker, min(limit, MAX_CLAIM), lease, self.clock()))
        return [_claimed(row) for row in rows]

    async def renew(self, task: ClaimedTask, lease: float) -> bool:
        ok: bool = await self._write(
            "renew", (task.task_id, task.lease_token, self.clock() + lease)
        )
        return ok

    async def complete(self, task: ClaimedTask) -> bool:
        return await self._finish(task, "done", None, None)

    async def fail(self, task: ClaimedTask, error: str, retry_at: float | None) -> bool:
        status = "dead" if retry_at is None else "pending"
        ok = await self._finish(task, status, error, retry_at)
        if ok and retry_at is not None:
            self._wakeup.notify()
        return ok

    async def _finish(
        self, task: ClaimedTask, status: str, error: str | None, retry_at: float | None
    ) -> bool:
        ok: bool = await self._write_grouped("finish_many", (
            task.task_id, task.lease_token, task.series, task.attempt, task.delivery_id,
            status, error, retry_at, self.clock(),
        ))  # fmt: skip
        return ok

    async def wait(self, timeout: float) -> None:
        await wait_for_work(self, self._wakeup, timeout)

    async def next_due(self) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT (SELECT min(due_at) FROM tasks WHERE status = 'pending'),"
                " (SELECT min(lease_until) FROM tasks WHERE status = 'leased')"
            ).fetchone()
            times = [t for t in row if t is not None]
            return min(times) if times else None

        return await self._read(op)

    async def pending_count(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "SELECT (SELECT count(*) FROM tasks WHERE status = 'pending')"
                " + (SELECT count(*) FROM tasks WHERE status = 'leased')"
            ).fetchone()[0]

        return await self._read(op)

    async def idle(self) -> bool:
        # Whether any task is open, not how many: a drain polls this every few ms, and
        # counting a backlog of 20,000 walked the whole status index each time.
        def op(conn: sqlite3.Connection) -> bool:
            return not conn.execute(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE status IN ('pending', 'leased'))"
            ).fetchone()[0]

        return await self._read(op)

    # -- operator reads and actions ----------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            result = empty_stats()
            for table in ("deliveries", "tasks"):
                for status, count in conn.execute(
                    f"SELECT status, count(*) FROM {table} GROUP BY status"
                ):
                    result[table][status] = count
            oldest = conn.execute(
                "SELECT min(received_at) FROM deliveries WHERE status = 'pending'"
            ).fetchone()[0]
            if oldest is not None:
                result["oldest_pending_age"] = max(0.0, self.clock() - oldest)
            return result

        return await self._read(op)

    async def list(
        self,
        status: str | None = None,
        webhook: str | None = None,
        event: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        check_list_args(status, limit)
        where, params = filters(status=status, webhook=webhook, event=event)
        sql = f"{_SUMMARY_SQL} {where} ORDER BY d.received_at DESC, d.id DESC LIMIT ?"

        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(sql, [*params, limit]).fetchall()
            return [dict(zip(_SUMMARY_KEYS, row, strict=True)) for row in rows]

        return await self._read(op)

    async def get(self, delivery_id: str) -> dict[str, Any] | None:
        def op(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(f"{_SUMMARY_SQL} WHERE d.id = ?", (delivery_id,)).fetchone()
            if row is None:
                return None
            result = dict(zip(_SUMMARY_KEYS, row, strict=True))
            key, series, headers, query, body = conn.execute(
                "SELECT idempotency_key, series, headers, query, body FROM deliveries WHERE id = ?",
                (delivery_id,),
            ).fetchone()
            result.update(
                idempotency_key=key,
                series=series,
                headers=list(load_headers(headers)),
                query=query,
                body=bytes(body),
            )
            result["tasks"] = _dicts(
                conn.execute(
                    "SELECT id, handler, status, attempt, series, due_at, lease_until, last_error"
                    " FROM tasks WHERE delivery_id = ? ORDER BY id",
                    (delivery_id,),
                )
            )
            result["attempts"] = _dicts(
                conn.execute(
                    "SELECT task_id, handler, series, attempt, worker, started_at, finished_at,"
                    " error FROM attempts WHERE delivery_id = ? ORDER BY id",
                    (delivery_id,),
                )
            )
            return result

        return await self._read(op)

    async def replay(
        self,
        ids: Sequence[str] | None = None,
        *,
        status: str | None = None,
        webhook: str | None = None,
    ) -> int:
        check_replay_args(ids, status, webhook)
        args = (list(ids) if ids is not None else None, status, webhook, self.clock())
        count: int = await self._write("replay", args)
        if count:
            self._wakeup.notify()
        return count

    async def purge(self, status: str, older_than: float) -> int:
        check_purge_args(status, older_than)
        cutoff = self.clock() - older_than
        total = 0
        # Small transactions: a big purge must not hold the write lock for long.
        while True:
            count = await self._write("purge_chunk", (status, cutoff, 500))
            total += count
            if count < 500:
                return total

    async def per_minute(self, since: float) -> list[tuple[int, str, int]]:
        def op(conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
            rows = conn.execute(
                "SELECT CAST(received_at / 60 AS INTEGER) * 60 AS minute, status, count(*)"
                " FROM deliveries WHERE received_at >= ? GROUP BY minute, status"
                " ORDER BY minute, status",
                (since,),
            )
            return [(int(m), s, n) for m, s, n in rows]

        return await self._read(op)


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _claimed(row: Sequence[Any]) -> ClaimedTask:
    return ClaimedTask(
        task_id=row[0],
        delivery_id=row[1],
        handler=row[2],
        attempt=row[3],
        series=row[4],
        lease_token=row[5],
        webhook=row[6],
        event=row[7],
        body=bytes(row[8]),
        headers=load_headers(row[9]),
        query=row[10],
        received_at=row[11],
    )
