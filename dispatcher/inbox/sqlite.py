"""The embedded inbox: one SQLite file in WAL mode, written with group commit.

Durability: ``synchronous=FULL`` fsyncs the WAL on every commit, so an acknowledged
delivery survives a process crash and a power loss. Every write goes through one
``Writer`` (sqlite_writer.py), which commits whatever was queued meanwhile in one
transaction: one fsync per batch, and each caller is answered only after its batch
committed.

Reads (next_due, stats, list, get) use a second connection on a reader thread: WAL
readers see the last commit and never block the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from dispatcher.errors import NotFoundError, ValidationError
from dispatcher.inbox.base import (
    LAPSED_ERROR,
    ClaimedTask,
    Clock,
    InboxStore,
    NewDelivery,
    Wakeup,
    check_list_args,
    check_purge_args,
    check_replay_args,
    empty_stats,
    fresh_task,
    replay_targets,
    unique_handlers,
    wait_for_work,
)
from dispatcher.inbox.sqlite_writer import (
    STATEMENT_CACHE,
    Flush,
    Writer,
    chunked,
    insert_rows,
)

T = TypeVar("T")

# What add_and_claim queues: (delivery, worker, lease, limit); and what it gets back:
# (outcome, the tasks claimed, whether a task was left pending for the workers).
_Add = tuple[NewDelivery, str, float, int]
_Added = tuple[str, list[ClaimedTask], bool]

SCHEMA_VERSION = 1

#: Tasks per claim at most: the claimed ids become SQL parameters (SQLite caps those).
MAX_CLAIM = 1000

# Each migration takes the schema from version i to i + 1 (index i).
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE deliveries (
            id TEXT PRIMARY KEY,
            webhook TEXT NOT NULL,
            event TEXT,
            idempotency_key TEXT,
            body BLOB NOT NULL,
            headers TEXT NOT NULL,
            query TEXT NOT NULL,
            received_at REAL NOT NULL,
            status TEXT NOT NULL,
            series INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE UNIQUE INDEX deliveries_idempotency ON deliveries (webhook, idempotency_key)
            WHERE idempotency_key IS NOT NULL""",
        "CREATE INDEX deliveries_status ON deliveries (status, received_at)",
        "CREATE INDEX deliveries_webhook ON deliveries (webhook, received_at)",
        "CREATE INDEX deliveries_received ON deliveries (received_at)",
        """CREATE TABLE tasks (
            id INTEGER PRIMARY KEY,
            delivery_id TEXT NOT NULL,
            handler TEXT NOT NULL,
            status TEXT NOT NULL,
            due_at REAL NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            series INTEGER NOT NULL DEFAULT 0,
            lease_token TEXT,
            lease_until REAL,
            worker TEXT,
            last_error TEXT
        )""",
        "CREATE INDEX tasks_delivery ON tasks (delivery_id)",
        # Partial indexes keep the claim scans proportional to open work, not history.
        "CREATE INDEX tasks_due ON tasks (due_at, id) WHERE status = 'pending'",
        "CREATE INDEX tasks_lease ON tasks (lease_until, id) WHERE status = 'leased'",
        """CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            task_id INTEGER NOT NULL,
            delivery_id TEXT NOT NULL,
            handler TEXT NOT NULL,
            series INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            worker TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            error TEXT
        )""",
        "CREATE UNIQUE INDEX attempts_task ON attempts (task_id, series, attempt)",
        "CREATE INDEX attempts_delivery ON attempts (delivery_id)",
    ],
]

_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

_STATUS_SQL = """
UPDATE deliveries SET status = CASE
    WHEN EXISTS (SELECT 1 FROM tasks WHERE delivery_id = :id AND status IN ('pending', 'leased'))
        THEN 'pending'
    WHEN EXISTS (SELECT 1 FROM tasks WHERE delivery_id = :id AND status = 'dead') THEN 'dead'
    ELSE 'done' END
WHERE id = :id
"""

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
            self._connect_writer, batch_size=self._batch_size, busy_timeout=self._busy_ms / 1000
        )
        await writer.start()
        self._writer = writer
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="dispatcher-inbox-reader")
        try:
            await self._write(_migrate)
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

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=STATEMENT_CACHE,
        )
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise ValidationError("inbox", f"{self.path}: cannot use WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    def _close_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await self._open_writer().submit(op)

    async def _write_grouped(self, flush: Flush, item: Any) -> Any:
        """Write ``item`` with the rest of its group (see sqlite_writer.py)."""
        return await self._open_writer().submit_grouped(flush, item)

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
        return await self._write(lambda conn: conn.execute(f"PRAGMA {name}").fetchone()[0])

    # -- the delivery path -------------------------------------------------------------

    async def add(self, delivery: NewDelivery) -> str:
        outcome, _ = await self.add_and_claim(delivery, "", 0.0, 0)
        return outcome

    async def add_and_claim(
        self, delivery: NewDelivery, worker: str, lease: float, limit: int
    ) -> tuple[str, list[ClaimedTask]]:
        added: _Added = await self._write_grouped(self._add_many, (delivery, worker, lease, limit))
        if added[2]:
            self._wakeup.notify()
        return added[0], added[1]

    def _add_many(self, conn: sqlite3.Connection, batch: list[_Add]) -> list[_Added]:
        """Store a group of deliveries and their tasks, each with up to ``limit`` of its
        tasks claimed for ``worker``: per delivery, "stored" or "duplicate", the tasks
        claimed, and whether a task was left pending.

        The writer holds the write lock (BEGIN IMMEDIATE), so the check for keys already
        stored cannot race with another process's insert, and task ids can be given here
        (as SQLite would: after the largest); a key repeated within the group is a
        duplicate of its first delivery.
        """
        now = self.clock()
        results = ["stored"] * len(batch)
        keyed = [(i, d) for i, (d, *_) in enumerate(batch) if d.idempotency_key is not None]
        if keyed:
            taken = _stored_keys(conn, [(d.webhook, d.idempotency_key) for _, d in keyed])
            for i, d in keyed:
                key = (d.webhook, d.idempotency_key)
                if key in taken:
                    results[i] = "duplicate"
                taken.add(key)
        task_id = conn.execute("SELECT coalesce(max(id), 0) FROM tasks").fetchone()[0]
        rows: list[tuple[Any, ...]] = []
        tasks: list[tuple[Any, ...]] = []
        attempts: list[tuple[Any, ...]] = []
        added: list[_Added] = []
        for (d, worker, lease, limit), result in zip(batch, results, strict=True):
            claimed: list[ClaimedTask] = []
            added.append((result, claimed, False))
            if result != "stored":
                continue
            handlers = unique_handlers(d.handlers)
            rows.append((
                d.id, d.webhook, d.event, d.idempotency_key, d.body,
                orjson.dumps(d.headers).decode(), d.query, d.received_at,
                "pending" if handlers else "done",
            ))  # fmt: skip
            for handler in handlers:
                task_id += 1
                if len(claimed) < limit:
                    token = secrets.token_hex(16)
                    tasks.append(
                        (task_id, d.id, handler, "leased", now, 1, token, now + lease, worker)
                    )
                    attempts.append((task_id, d.id, handler, 0, 1, worker, now))
                    claimed.append(fresh_task(d, task_id, handler, token))
                else:
                    tasks.append((task_id, d.id, handler, "pending", now, 0, None, None, None))
            if len(claimed) < len(handlers):
                added[-1] = (result, claimed, True)
        insert_rows(
            conn,
            "INSERT INTO deliveries (id, webhook, event, idempotency_key, body, headers, query,"
            " received_at, status)",
            rows,
        )
        insert_rows(
            conn,
            "INSERT INTO tasks (id, delivery_id, handler, status, due_at, attempt, lease_token,"
            " lease_until, worker)",
            tasks,
        )
        insert_rows(
            conn,
            "INSERT INTO attempts (task_id, delivery_id, handler, series, attempt, worker,"
            " started_at)",
            attempts,
        )
        return added

    async def claim(self, worker: str, limit: int, lease: float) -> list[ClaimedTask]:
        if limit < 1:
            return []
        limit = min(limit, MAX_CLAIM)
        return await self._write(lambda conn: self._claim(conn, worker, limit, lease))

    def _claim(
        self, conn: sqlite3.Connection, worker: str, limit: int, lease: float
    ) -> list[ClaimedTask]:
        now = self.clock()
        due = conn.execute(
            "SELECT due_at, id, NULL, 0, 0 FROM tasks WHERE status = 'pending' AND due_at <= ?"
            " ORDER BY due_at, id LIMIT ?",
            (now, limit),
        ).fetchall()
        lapsed = conn.execute(
            "SELECT lease_until, id, 1, series, attempt FROM tasks"
            " WHERE status = 'leased' AND lease_until < ? ORDER BY lease_until, id LIMIT ?",
            (now, limit),
        ).fetchall()
        picked = sorted(due + lapsed)[:limit]
        if not picked:
            return []
        conn.executemany(
            "UPDATE attempts SET finished_at = ?, error = ?"
            " WHERE task_id = ? AND series = ? AND attempt = ? AND finished_at IS NULL",
            [(now, LAPSED_ERROR, row[1], row[3], row[4]) for row in picked if row[2]],
        )
        ids = [row[1] for row in picked]
        conn.executemany(
            "UPDATE tasks SET status = 'leased', attempt = attempt + 1, lease_token = ?,"
            " lease_until = ?, worker = ? WHERE id = ?",
            [(secrets.token_hex(16), now + lease, worker, task_id) for task_id in ids],
        )
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            "SELECT t.id, t.delivery_id, t.handler, t.attempt, t.series, t.lease_token,"
            " d.webhook, d.event, d.body, d.headers, d.query, d.received_at"
            f" FROM tasks t JOIN deliveries d ON d.id = t.delivery_id WHERE t.id IN ({marks})",
            ids,
        ).fetchall()
        by_id = {row[0]: row for row in rows}
        conn.executemany(
            "INSERT INTO attempts (task_id, delivery_id, handler, series, attempt, worker,"
            " started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(r[0], r[1], r[2], r[4], r[3], worker, now) for r in rows],
        )
        return [_claimed(by_id[task_id]) for task_id in ids]

    async def renew(self, task: ClaimedTask, lease: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE tasks SET lease_until = ?"
                " WHERE id = ? AND lease_token = ? AND status = 'leased'",
                (self.clock() + lease, task.task_id, task.lease_token),
            )
            return cursor.rowcount == 1

        return await self._write(op)

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
        ok: bool = await self._write_grouped(self._finish_many, (task, status, error, retry_at))
        return ok

    def _finish_many(
        self,
        conn: sqlite3.Connection,
        outcomes: list[tuple[ClaimedTask, str, str | None, float | None]],
    ) -> list[bool]:
        """Record a group of task outcomes; False for each task whose lease was lost (fenced:
        it lapsed and someone else holds the task now). The writer holds the write lock,
        so the leases read here cannot change before the updates."""
        now = self.clock()
        held: dict[Any, str] = {}
        for chunk in chunked([task.task_id for task, *_ in outcomes]):
            marks = ",".join("?" * len(chunk))
            held.update(
                conn.execute(
                    f"SELECT id, lease_token FROM tasks WHERE status = 'leased' AND id IN ({marks})",
                    chunk,
                )
            )
        results: list[bool] = []
        finished: list[tuple[ClaimedTask, str, str | None, float | None]] = []
        for outcome in outcomes:
            task = outcome[0]
            # pop: a second outcome of one task in this group finds it finished by the first
            held_by_us = task.lease_token is not None and held.get(task.task_id) == task.lease_token
            if held_by_us:
                del held[task.task_id]
                finished.append(outcome)
            results.append(held_by_us)
        conn.executemany(
            "UPDATE tasks SET status = ?, lease_token = NULL, lease_until = NULL,"
            " due_at = coalesce(?, due_at), last_error = coalesce(?, last_error) WHERE id = ?",
            [(status, retry_at, error, task.task_id) for task, status, error, retry_at in finished],
        )
        conn.executemany(
            "UPDATE attempts SET finished_at = ?, error = ?"
            " WHERE task_id = ? AND series = ? AND attempt = ?",
            [(now, error, t.task_id, t.series, t.attempt) for t, _, error, _ in finished],
        )
        conn.executemany(
            _STATUS_SQL, [{"id": d} for d in dict.fromkeys(t.delivery_id for t, *_ in finished)]
        )
        return results

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
        where, params = _filters(status=status, webhook=webhook, event=event)
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
                headers=[tuple(pair) for pair in json.loads(headers)],
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
        count = await self._write(lambda conn: self._replay(conn, ids, status, webhook))
        if count:
            self._wakeup.notify()
        return count

    def _replay(
        self,
        conn: sqlite3.Connection,
        ids: Sequence[str] | None,
        status: str | None,
        webhook: str | None,
    ) -> int:
        now = self.clock()
        if ids is None:
            where, params = _filters(status=status, webhook=webhook)
            rows = conn.execute(f"SELECT d.id, d.status FROM deliveries d {where}", params)
            selected = rows.fetchall()
        else:
            selected = []
            for delivery_id in dict.fromkeys(ids):
                row = conn.execute(
                    "SELECT status, webhook FROM deliveries WHERE id = ?", (delivery_id,)
                ).fetchone()
                if row is None:
                    raise NotFoundError("delivery", delivery_id)
                if status in (None, row[0]) and webhook in (None, row[1]):
                    selected.append((delivery_id, row[0]))
        count = 0
        for delivery_id, delivery_status in selected:
            cursor = conn.execute("SELECT status FROM tasks WHERE delivery_id = ?", (delivery_id,))
            statuses = [task_status for (task_status,) in cursor]
            targets = replay_targets(delivery_status, statuses)
            if targets is None:
                continue
            series = conn.execute(
                "UPDATE deliveries SET series = series + 1, status = 'pending' WHERE id = ?"
                " RETURNING series",
                (delivery_id,),
            ).fetchone()[0]
            marks = ",".join("?" * len(targets))
            conn.execute(
                "UPDATE tasks SET status = 'pending', attempt = 0, series = ?, due_at = ?,"
                f" lease_token = NULL, lease_until = NULL WHERE delivery_id = ?"
                f" AND status IN ({marks})",
                (series, now, delivery_id, *targets),
            )
            count += 1
        return count

    async def purge(self, status: str, older_than: float) -> int:
        check_purge_args(status, older_than)
        cutoff = self.clock() - older_than
        total = 0
        # Small transactions: a big purge must not hold the write lock for long.
        while True:
            count = await self._write(lambda conn: _purge_chunk(conn, status, cutoff, 500))
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


def _stored_keys(conn: sqlite3.Connection, keys: list[tuple[str, str]]) -> set[tuple[str, Any]]:
    """Which of these (webhook, idempotency key) pairs the inbox holds already."""
    by_webhook: dict[str, list[str]] = {}
    for webhook, key in keys:
        by_webhook.setdefault(webhook, []).append(key)
    stored: set[tuple[str, Any]] = set()
    for webhook, webhook_keys in by_webhook.items():
        for chunk in chunked(webhook_keys):
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT idempotency_key FROM deliveries"
                f" WHERE webhook = ? AND idempotency_key IN ({marks})",
                [webhook, *chunk],
            )
            stored.update((webhook, key) for (key,) in rows)
    return stored


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS inbox_schema (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM inbox_schema").fetchone()
    version = row[0] or 0
    if version > SCHEMA_VERSION:
        raise ValidationError(
            "inbox",
            f"the inbox schema is version {version}, newer than this dispatcher knows"
            f" ({SCHEMA_VERSION}); upgrade webhook-dispatcher",
        )
    for index in range(version, SCHEMA_VERSION):
        for statement in MIGRATIONS[index]:
            conn.execute(statement)
        conn.execute("INSERT INTO inbox_schema (version) VALUES (?)", (index + 1,))


def _purge_chunk(conn: sqlite3.Connection, status: str, cutoff: float, size: int) -> int:
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM deliveries WHERE status = ? AND received_at < ? LIMIT ?",
            (status, cutoff, size),
        )
    ]
    if ids:
        marks = ",".join("?" * len(ids))
        conn.execute(f"DELETE FROM attempts WHERE delivery_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM tasks WHERE delivery_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM deliveries WHERE id IN ({marks})", ids)
    return len(ids)


def _filters(**columns: str | None) -> tuple[str, list[Any]]:
    parts = [f"d.{name} = ?" for name, value in columns.items() if value is not None]
    params = [value for value in columns.values() if value is not None]
    return ("WHERE " + " AND ".join(parts) if parts else ""), params


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
        headers=tuple((name, value) for name, value in json.loads(row[9])),
        query=row[10],
        received_at=row[11],
    )
