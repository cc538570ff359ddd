"""The PostgreSQL inbox: several receiver and worker processes can share one database.

Claims use ``FOR UPDATE SKIP LOCKED`` so concurrent workers never wait on each other's
rows; adds, retries and replays ``NOTIFY`` a channel that idle workers ``LISTEN`` on.
Times are the store clock's epoch seconds, passed in as parameters (never ``now()``),
so an injected clock works here exactly as in the other stores.

Adds and outcomes (complete, fail) are group-committed (postgres_writer.py): concurrent
calls are written together in one transaction, so a burst of requests shares one commit
(one WAL flush) instead of paying one each. ``synchronous_commit`` is left as the server
has it: a caller is answered after its batch committed, so acknowledged means durable.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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
    check_schema_version,
    empty_stats,
    load_headers,
    replay_targets,
    unique_handlers,
    wait_for_work,
)
from dispatcher.inbox.postgres_sql import (
    ADD_BATCH,
    CLAIM,
    FINISH_BATCH,
    MIGRATIONS,
    SCHEMA_VERSION,
    SUMMARY,
)
from dispatcher.inbox.postgres_writer import (
    Add,
    Added,
    AddWriter,
    GroupCommit,
    Outcome,
    OutcomeWriter,
)

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("dispatcher.inbox")

INSTALL_HINT = "pip install 'webhook-dispatcher[postgres]'"


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:
        raise ValidationError(
            "inbox", f"a PostgreSQL inbox needs the asyncpg package: {INSTALL_HINT}"
        ) from None
    return asyncpg


class PostgresStore(InboxStore):
    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "dispatcher",
        clock: Clock = time.time,
        min_size: int = 1,
        max_size: int = 10,
        poll_interval: float = 1.0,
        batch_size: int = 256,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,50}", schema):
            raise ValidationError(
                "schema", f"{schema!r} is not a plain SQL name; use letters, digits and '_'"
            )
        self._asyncpg = _asyncpg()
        self.dsn = dsn
        self.schema = schema
        self.clock = clock
        self.channel = f"{schema}_inbox"
        self._s = f'"{schema}"'
        self._pool_size = (min_size, max_size)
        self._poll = poll_interval
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._relisten_at = 0.0
        self._wakeup = Wakeup()
        self._batch_size = batch_size
        self._adds: GroupCommit[Add, Added] | None = None
        self._outcomes: GroupCommit[Outcome, bool] | None = None

    def _sql(self, template: str) -> str:
        return template.replace("{s}", self._s)

    @property
    def commits(self) -> int:
        """Transactions committed by the group-commit writers (adds and outcomes) so far."""
        return sum(writer.commits for writer in (self._adds, self._outcomes) if writer)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the inbox store is not open; call open() first")
        return self._pool

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        low, high = self._pool_size
        create_pool = self._asyncpg.create_pool
        # asyncpg < 0.30 has no reset hook: it then runs its reset query on each release.
        keep = (
            {"reset": _keep_session} if "reset" in inspect.signature(create_pool).parameters else {}
        )
        self._pool = await create_pool(self.dsn, min_size=low, max_size=high, **keep)
        try:
            await self.migrate()
        except BaseException:
            await self.close()
            raise
        # Created here, so they run on the loop that owns the pool.
        self._adds = GroupCommit(
            AddWriter(self.pool, self._sql(ADD_BATCH), self.channel),
            batch_size=self._batch_size,
            name="dispatcher-inbox-adds",
        )
        self._outcomes = GroupCommit(
            OutcomeWriter(self.pool, self._sql(FINISH_BATCH), self.channel),
            batch_size=self._batch_size,
            key=lambda outcome: outcome.task.task_id,
            name="dispatcher-inbox-outcomes",
        )
        await self._listen()

    async def migrate(self) -> None:
        if self._pool is None:
            await self.open()
            return
        async with self.pool.acquire() as conn, conn.transaction():
            # Several processes may start at once: the lock makes them migrate in turn.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"dispatcher.inbox:{self.schema}"
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._s}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._s}.inbox_schema (version integer NOT NULL)"
            )
            version = await conn.fetchval(f"SELECT max(version) FROM {self._s}.inbox_schema")
            version = version or 0
            check_schema_version(version, SCHEMA_VERSION)
            for index in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[index]:
                    await conn.execute(self._sql(statement))
                await conn.execute(
                    f"INSERT INTO {self._s}.inbox_schema (version) VALUES ($1)", index + 1
                )

    async def _listen(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=1)
            self._listener = None
        conn = None
        try:
            conn = await self._asyncpg.connect(self.dsn)
            await conn.add_listener(self.channel, self._notified)
        except Exception as exc:  # polling still finds the work, only later
            log.warning("inbox LISTEN failed, polling every %ss instead: %s", self._poll, exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
            return
        self._listener = conn
        self._wakeup.notify()  # work may have arrived while nobody listened

    def _notified(self, *args: object) -> None:
        self._wakeup.notify()

    async def close(self) -> None:
        writers = [writer for writer in (self._adds, self._outcomes) if writer is not None]
        self._adds = self._outcomes = None
        for writer in writers:  # what is queued is written (or fails) before the pool goes
            await writer.close()
        listener, pool = self._listener, self._pool
        self._listener = self._pool = None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close(timeout=5)
        if pool is not None:
            await pool.close()

    async def drop_schema(self) -> None:
        """Delete the schema and everything in it (tests use one schema per run)."""
        await self.pool.execute(f"DROP SCHEMA IF EXISTS {self._s} CASCADE")

    # -- the delivery path -------------------------------------------------------------

    async def add(self, delivery: NewDelivery) -> str:
        outcome, _ = await self.add_and_claim(delivery, "", 0.0, 0)
        return outcome

    async def add_and_claim(
        self, delivery: NewDelivery, worker: str, lease: float, limit: int
    ) -> tuple[str, list[ClaimedTask]]:
        if self._adds is None:
            raise RuntimeError("the inbox store is not open; call open() first")
        handlers = unique_handlers(delivery.handlers)
        add = Add(delivery, handlers, self.clock(), worker, lease, limit)
        outcome, claimed, _ = await self._adds.submit(add)
        return outcome, claimed

    async def claim(self, worker: str, limit: int, lease: float) -> list[ClaimedTask]:
        if limit < 1:
            return []
        rows = await self.pool.fetch(
            self._sql(CLAIM), self.clock(), limit, lease, worker, LAPSED_ERROR
        )
        return [_claimed(r) for r in rows]

    async def renew(self, task: ClaimedTask, lease: float) -> bool:
        result = await self.pool.execute(
            self._sql(
                "UPDATE {s}.tasks SET lease_until = $1"
                " WHERE id = $2 AND lease_token = $3 AND status = 'leased'"
            ),
            self.clock() + lease,
            int(task.task_id),
            task.lease_token,
        )
        return result == "UPDATE 1"

    async def complete(self, task: ClaimedTask) -> bool:
        return await self._finish(task, "done", None, None)

    async def fail(self, task: ClaimedTask, error: str, retry_at: float | None) -> bool:
        status = "dead" if retry_at is None else "pending"
        return await self._finish(task, status, error, retry_at)

    async def _finish(
        self, task: ClaimedTask, status: str, error: str | None, retry_at: float | None
    ) -> bool:
        if self._outcomes is None:
            raise RuntimeError("the inbox store is not open; call open() first")
        return await self._outcomes.submit(Outcome(task, status, error, retry_at, self.clock()))

    async def wait(self, timeout: float) -> None:
        if self._listener is None or self._listener.is_closed():
            # Lost (a server restart) or never had: poll, and now and then listen again.
            timeout = min(timeout, self._poll)
            if time.monotonic() >= self._relisten_at:
                self._relisten_at = time.monotonic() + 30.0
                await self._listen()
        await wait_for_work(self, self._wakeup, timeout)

    async def next_due(self) -> float | None:
        return await self.pool.fetchval(
            self._sql(
                "SELECT least((SELECT min(due_at) FROM {s}.tasks WHERE status = 'pending'),"
                " (SELECT min(lease_until) FROM {s}.tasks WHERE status = 'leased'))"
            )
        )

    async def pending_count(self) -> int:
        return await self.pool.fetchval(
            self._sql(
                "SELECT (SELECT count(*) FROM {s}.tasks WHERE status = 'pending')"
                " + (SELECT count(*) FROM {s}.tasks WHERE status = 'leased')"
            )
        )

    async def idle(self) -> bool:
        # Whether any task is open, not how many (see SQLiteStore.idle).
        return not await self.pool.fetchval(
            self._sql(
                "SELECT EXISTS (SELECT 1 FROM {s}.tasks WHERE status IN ('pending', 'leased'))"
            )
        )

    # -- operator reads and actions ----------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        result = empty_stats()
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            for table in ("deliveries", "tasks"):
                rows = await conn.fetch(
                    f"SELECT status, count(*) AS n FROM {self._s}.{table} GROUP BY status"
                )
                for row in rows:
                    result[table][row["status"]] = row["n"]
            oldest = await conn.fetchval(
                self._sql("SELECT min(received_at) FROM {s}.deliveries WHERE status = 'pending'")
            )
        if oldest is not None:
            result["oldest_pending_age"] = max(0.0, self.clock() - oldest)
        return result

    async def list(
        self,
        status: str | None = None,
        webhook: str | None = None,
        event: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        check_list_args(status, limit)
        where, params = _filters(status=status, webhook=webhook, event=event)
        sql = (
            f"{self._sql(SUMMARY)} {where}"
            f" ORDER BY d.received_at DESC, d.id DESC LIMIT ${len(params) + 1}"
        )
        return [dict(row) for row in await self.pool.fetch(sql, *params, limit)]

    async def get(self, delivery_id: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            row = await conn.fetchrow(self._sql(SUMMARY + " WHERE d.id = $1"), delivery_id)
            if row is None:
                return None
            extra = await conn.fetchrow(
                self._sql(
                    "SELECT idempotency_key, series, headers::text AS headers, query, body"
                    " FROM {s}.deliveries WHERE id = $1"
                ),
                delivery_id,
            )
            tasks = await conn.fetch(
                self._sql(
                    "SELECT id, handler, status, attempt, series, due_at, lease_until, last_error"
                    " FROM {s}.tasks WHERE delivery_id = $1 ORDER BY id"
                ),
                delivery_id,
            )
            attempts = await conn.fetch(
                self._sql(
                    "SELECT task_id, handler, series, attempt, worker, started_at, finished_at,"
                    " error FROM {s}.attempts WHERE delivery_id = $1 ORDER BY id"
                ),
                delivery_id,
            )
        result = dict(row)
        result.update(
            idempotency_key=extra["idempotency_key"],
            series=extra["series"],
            headers=list(load_headers(extra["headers"])),
            query=extra["query"],
            body=bytes(extra["body"]),
            tasks=[dict(t) for t in tasks],
            attempts=[dict(a) for a in attempts],
        )
        return result

    async def replay(
        self,
        ids: Sequence[str] | None = None,
        *,
        status: str | None = None,
        webhook: str | None = None,
    ) -> int:
        check_replay_args(ids, status, webhook)
        now = self.clock()
        count = 0
        async with self.pool.acquire() as conn, conn.transaction():
            if ids is None:
                where, params = _filters(status=status, webhook=webhook)
                selected = await conn.fetch(
                    self._sql(f"SELECT d.id, d.status FROM {{s}}.deliveries d {where} FOR UPDATE"),
                    *params,
                )
            else:
                selected = []
                for delivery_id in dict.fromkeys(ids):
                    row = await conn.fetchrow(
                        self._sql(
                            "SELECT id, status, webhook FROM {s}.deliveries WHERE id = $1"
                            " FOR UPDATE"
                        ),
                        delivery_id,
                    )
                    if row is None:
                        raise NotFoundError("delivery", delivery_id)
                    if status in (None, row["status"]) and webhook in (None, row["webhook"]):
                        selected.append(row)
            for row in selected:
                statuses = await conn.fetch(
                    self._sql("SELECT status FROM {s}.tasks WHERE delivery_id = $1 FOR UPDATE"),
                    row["id"],
                )
                targets = replay_targets(row["status"], [s["status"] for s in statuses])
                if targets is None:
                    continue
                series = await conn.fetchval(
                    self._sql(
                        "UPDATE {s}.deliveries SET series = series + 1, status = 'pending'"
                        " WHERE id = $1 RETURNING series"
                    ),
                    row["id"],
                )
                await conn.execute(
                    self._sql(
                        "UPDATE {s}.tasks SET status = 'pending', attempt = 0, series = $1,"
                        " due_at = $2, lease_token = NULL, lease_until = NULL"
                        " WHERE delivery_id = $3 AND status = ANY($4::text[])"
                    ),
                    series,
                    now,
                    row["id"],
                    list(targets),
                )
                count += 1
            if count:
                await conn.execute("SELECT pg_notify($1, '')", self.channel)
        return count

    async def purge(self, status: str, older_than: float) -> int:
        check_purge_args(status, older_than)
        cutoff = self.clock() - older_than
        total = 0
        # Small transactions: a big purge must not hold row locks for long.
        while True:
            result = await self.pool.execute(
                self._sql(
                    "DELETE FROM {s}.deliveries WHERE id IN (SELECT id FROM {s}.deliveries"
                    " WHERE status = $1 AND received_at < $2 LIMIT 500 FOR UPDATE SKIP LOCKED)"
                ),
                status,
                cutoff,
            )
            count = int(result.split()[-1])
            total += count
            if count < 500:
                return total

    async def per_minute(self, since: float) -> list[tuple[int, str, int]]:
        rows = await self.pool.fetch(
            self._sql(
                "SELECT (floor(received_at / 60) * 60)::bigint AS minute, status, count(*) AS n"
                " FROM {s}.deliveries WHERE received_at >= $1 GROUP BY minute, status"
                " ORDER BY minute, status"
            ),
            since,
        )
        return [(r["minute"], r["status"], r["n"]) for r in rows]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on every release: a round trip per use of the pool.

    It undoes session state (SET, LISTEN, cursors, advisory locks) that this store never
    leaves on a pool connection (LISTEN has its own connection); asyncpg still rolls back
    a transaction left open, before calling this.
    """


def _filters(**columns: str | None) -> tuple[str, list[Any]]:
    parts: list[str] = []
    params: list[Any] = []
    for name, value in columns.items():
        if value is not None:
            params.append(value)
            parts.append(f"d.{name} = ${len(params)}")
    return ("WHERE " + " AND ".join(parts) if parts else ""), params


def _claimed(row: Any) -> ClaimedTask:
    return ClaimedTask(
        task_id=row["id"],
        delivery_id=row["delivery_id"],
        handler=row["handler"],
        attempt=row["attempt"],
        series=row["series"],
        lease_token=row["lease_token"],
        webhook=row["webhook"],
        event=row["event"],
        body=bytes(row["body"]),
        headers=load_headers(row["headers"]),
        query=row["query"],
        received_at=row["received_at"],
    )
