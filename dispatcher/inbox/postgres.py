"""The PostgreSQL inbox: several receiver and worker processes can share one database.

Claims use ``FOR UPDATE SKIP LOCKED`` so concurrent workers never wait on each other's
rows; adds, retries and replays ``NOTIFY`` a channel that idle workers ``LISTEN`` on.
Times are the store clock's epoch seconds, passed in as parameters (never ``now()``),
so an injected clock works here exactly as in the other stores.
"""

from __future__ import annotations

import contextlib
import json
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
    empty_stats,
    replay_targets,
    unique_handlers,
    wait_for_work,
)

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("dispatcher.inbox")

SCHEMA_VERSION = 1
INSTALL_HINT = "pip install 'webhook-dispatcher[postgres]'"

# {s} is the quoted schema name. Index i takes the schema from version i to i + 1.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE {s}.deliveries (
            id text PRIMARY KEY,
            webhook text NOT NULL,
            event text,
            idempotency_key text,
            body bytea NOT NULL,
            headers jsonb NOT NULL,
            query text NOT NULL,
            received_at double precision NOT NULL,
            status text NOT NULL,
            series integer NOT NULL DEFAULT 0
        )""",
        """CREATE UNIQUE INDEX deliveries_idempotency ON {s}.deliveries
            (webhook, idempotency_key) WHERE idempotency_key IS NOT NULL""",
        "CREATE INDEX deliveries_status ON {s}.deliveries (status, received_at)",
        "CREATE INDEX deliveries_webhook ON {s}.deliveries (webhook, received_at)",
        "CREATE INDEX deliveries_received ON {s}.deliveries (received_at)",
        """CREATE TABLE {s}.tasks (
            id bigserial PRIMARY KEY,
            delivery_id text NOT NULL REFERENCES {s}.deliveries (id) ON DELETE CASCADE,
            handler text NOT NULL,
            status text NOT NULL,
            due_at double precision NOT NULL,
            attempt integer NOT NULL DEFAULT 0,
            series integer NOT NULL DEFAULT 0,
            lease_token text,
            lease_until double precision,
            worker text,
            last_error text
        )""",
        "CREATE INDEX tasks_delivery ON {s}.tasks (delivery_id)",
        "CREATE INDEX tasks_due ON {s}.tasks (due_at, id) WHERE status = 'pending'",
        "CREATE INDEX tasks_lease ON {s}.tasks (lease_until, id) WHERE status = 'leased'",
        """CREATE TABLE {s}.attempts (
            id bigserial PRIMARY KEY,
            task_id bigint NOT NULL REFERENCES {s}.tasks (id) ON DELETE CASCADE,
            delivery_id text NOT NULL,
            handler text NOT NULL,
            series integer NOT NULL,
            attempt integer NOT NULL,
            worker text NOT NULL,
            started_at double precision NOT NULL,
            finished_at double precision,
            error text
        )""",
        "CREATE UNIQUE INDEX attempts_task ON {s}.attempts (task_id, series, attempt)",
        "CREATE INDEX attempts_delivery ON {s}.attempts (delivery_id)",
    ],
]

# The locking CTEs return the row versions they locked (FOR UPDATE re-reads a row changed
# since the snapshot), so the old series/attempt of a lapsed lease are current.
_CLAIM = """
WITH due AS (
    SELECT id, due_at AS k, status, series, attempt FROM {s}.tasks
    WHERE status = 'pending' AND due_at <= $1
    ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
), lapsed AS (
    SELECT id, lease_until AS k, status, series, attempt FROM {s}.tasks
    WHERE status = 'leased' AND lease_until < $1
    ORDER BY lease_until, id LIMIT $2 FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT * FROM (SELECT * FROM due UNION ALL SELECT * FROM lapsed) AS u
    ORDER BY k, id LIMIT $2
)
UPDATE {s}.tasks t SET status = 'leased', attempt = t.attempt + 1,
    lease_token = md5(random()::text || clock_timestamp()::text || t.id::text),
    lease_until = $1 + $3, worker = $4
FROM picked p, {s}.deliveries d
WHERE t.id = p.id AND d.id = t.delivery_id
RETURNING t.id, t.delivery_id, t.handler, t.attempt, t.series, t.lease_token, d.webhook,
    d.event, d.body, d.headers::text AS headers, d.query, d.received_at, p.k,
    p.status AS old_status, p.series AS old_series, p.attempt AS old_attempt
"""

_STATUS = """
UPDATE {s}.deliveries SET status = CASE
    WHEN EXISTS (SELECT 1 FROM {s}.tasks WHERE delivery_id = $1
        AND status IN ('pending', 'leased')) THEN 'pending'
    WHEN EXISTS (SELECT 1 FROM {s}.tasks WHERE delivery_id = $1 AND status = 'dead') THEN 'dead'
    ELSE 'done' END
WHERE id = $1
"""

_SUMMARY = """
SELECT d.id, d.webhook, d.event, d.status, d.received_at,
    (SELECT count(*) FROM {s}.attempts a WHERE a.delivery_id = d.id) AS attempts,
    (SELECT a.error FROM {s}.attempts a WHERE a.delivery_id = d.id AND a.error IS NOT NULL
        ORDER BY a.finished_at DESC NULLS LAST, a.id DESC LIMIT 1) AS last_error
FROM {s}.deliveries d
"""


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

    def _sql(self, template: str) -> str:
        return template.replace("{s}", self._s)

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
        self._pool = await self._asyncpg.create_pool(self.dsn, min_size=low, max_size=high)
        try:
            await self.migrate()
        except BaseException:
            await self.close()
            raise
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
            if version > SCHEMA_VERSION:
                raise ValidationError(
                    "inbox",
                    f"the inbox schema is version {version}, newer than this dispatcher knows"
                    f" ({SCHEMA_VERSION}); upgrade webhook-dispatcher",
                )
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
        d = delivery
        handlers = unique_handlers(d.handlers)
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await conn.fetchval(
                self._sql(
                    """INSERT INTO {s}.deliveries (id, webhook, event, idempotency_key, body,
                        headers, query, received_at, status)
                    VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9)
                    ON CONFLICT (webhook, idempotency_key) WHERE idempotency_key IS NOT NULL
                    DO NOTHING RETURNING 1"""
                ),
                d.id,
                d.webhook,
                d.event,
                d.idempotency_key,
                d.body,
                json.dumps(d.headers),
                d.query,
                d.received_at,
                "pending" if handlers else "done",
            )
            if stored is None:
                return "duplicate"
            if handlers:
                await conn.execute(
                    self._sql(
                        "INSERT INTO {s}.tasks (delivery_id, handler, status, due_at)"
                        " SELECT $1, h, 'pending', $3 FROM unnest($2::text[]) AS h"
                    ),
                    d.id,
                    list(handlers),
                    self.clock(),
                )
                await conn.execute("SELECT pg_notify($1, '')", self.channel)
        return "stored"

    async def claim(self, worker: str, limit: int, lease: float) -> list[ClaimedTask]:
        if limit < 1:
            return []
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(self._sql(_CLAIM), now, limit, lease, worker)
            if not rows:
                return []
            rows = sorted(rows, key=lambda r: (r["k"], r["id"]))
            lapsed = [r for r in rows if r["old_status"] == "leased"]
            if lapsed:
                await conn.executemany(
                    self._sql(
                        "UPDATE {s}.attempts SET finished_at = $1, error = $2 WHERE task_id = $3"
                        " AND series = $4 AND attempt = $5 AND finished_at IS NULL"
                    ),
                    [
                        (now, LAPSED_ERROR, r["id"], r["old_series"], r["old_attempt"])
                        for r in lapsed
                    ],
                )
            await conn.execute(
                self._sql(
                    "INSERT INTO {s}.attempts (task_id, delivery_id, handler, series, attempt,"
                    " worker, started_at) SELECT *, $6::text, $7::float8 FROM"
                    " unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::int[])"
                ),
                [r["id"] for r in rows],
                [r["delivery_id"] for r in rows],
                [r["handler"] for r in rows],
                [r["series"] for r in rows],
                [r["attempt"] for r in rows],
                worker,
                now,
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
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            result = await conn.execute(
                self._sql(
                    "UPDATE {s}.tasks SET status = $1, lease_token = NULL, lease_until = NULL,"
                    " due_at = coalesce($2, due_at), last_error = coalesce($3, last_error)"
                    " WHERE id = $4 AND lease_token = $5 AND status = 'leased'"
                ),
                status,
                retry_at,
                error,
                int(task.task_id),
                task.lease_token,
            )
            if result != "UPDATE 1":
                return False  # fenced: the lease lapsed and someone else holds the task now
            await conn.execute(
                self._sql(
                    "UPDATE {s}.attempts SET finished_at = $1, error = $2"
                    " WHERE task_id = $3 AND series = $4 AND attempt = $5"
                ),
                now,
                error,
                int(task.task_id),
                task.series,
                task.attempt,
            )
            await conn.execute(self._sql(_STATUS), task.delivery_id)
            if retry_at is not None:
                await conn.execute("SELECT pg_notify($1, '')", self.channel)
        return True

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
            f"{self._sql(_SUMMARY)} {where}"
            f" ORDER BY d.received_at DESC, d.id DESC LIMIT ${len(params) + 1}"
        )
        return [dict(row) for row in await self.pool.fetch(sql, *params, limit)]

    async def get(self, delivery_id: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            row = await conn.fetchrow(self._sql(_SUMMARY + " WHERE d.id = $1"), delivery_id)
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
            headers=[tuple(pair) for pair in json.loads(extra["headers"])],
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
        headers=tuple((name, value) for name, value in json.loads(row["headers"])),
        query=row["query"],
        received_at=row["received_at"],
    )
