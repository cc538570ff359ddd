"""The SQLite inbox's schema and its writes, run by the writer process (sqlite_process.py).

Every write is an operation with plain arguments (what ``marshal`` carries) and a plain
result, so it can run in another process: ``OPS`` names the plain ones, called alone;
``GROUPED`` the ones that come in numbers (adds, task outcomes), called once for all
their items in a batch. Times come from the caller (the store's clock, which tests
replace), never from here.

Standard library only (and the package's light modules): the writer process loads this
without the web stack.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, TypeVar

from dispatcher.errors import NotFoundError
from dispatcher.inbox.states import (
    LAPSED_ERROR,
    RERUNNABLE_OUTCOMES,
    check_schema_version,
    replay_targets,
    unique_handlers,
)

if TYPE_CHECKING:  # a type only: the writer process runs sqlite_process as __main__
    from dispatcher.inbox.sqlite_process import Op

T = TypeVar("T")

SCHEMA_VERSION = 1

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

#: Tasks per claim at most: the claimed ids become SQL parameters (SQLite caps those).
MAX_CLAIM = 1000

#: Rows per multi-row statement at most (x columns stays under SQLite's historical
#: limit of 999 parameters for tables of up to 15 columns).
MAX_ROWS = 64
#: Prepared statements the writer's connection keeps: every row count of three tables'
#: inserts, and the rest of the statements.
STATEMENT_CACHE = 5 * MAX_ROWS

_STATUS_SQL = """
UPDATE deliveries SET status = CASE
    WHEN EXISTS (SELECT 1 FROM tasks WHERE delivery_id = :id AND status IN ('pending', 'leased'))
        THEN 'pending'
    WHEN EXISTS (SELECT 1 FROM tasks WHERE delivery_id = :id AND status = 'dead') THEN 'dead'
    ELSE 'done' END
WHERE id = :id
"""


def migrate(conn: sqlite3.Connection, _: Any = None) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS inbox_schema (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM inbox_schema").fetchone()
    version = row[0] or 0
    check_schema_version(version, SCHEMA_VERSION)
    for index in range(version, SCHEMA_VERSION):
        for statement in MIGRATIONS[index]:
            conn.execute(statement)
        conn.execute("INSERT INTO inbox_schema (version) VALUES (?)", (index + 1,))


def pragma(conn: sqlite3.Connection, name: str) -> Any:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


# -- the delivery path ---------------------------------------------------------------------

#: One delivery to add: (id, webhook, event, idempotency key, body, headers as JSON,
#: query, received at, handlers, worker, lease, limit, now). Up to ``limit`` of its tasks
#: are claimed for ``worker`` as it is stored (``InboxStore.add_and_claim``).
Add = tuple[str, str, "str | None", "str | None", bytes, str, str, float, tuple[str, ...],
            str, float, int, float]  # fmt: skip
#: What it gets back: "stored" or "duplicate", the tasks claimed as (task id, handler,
#: lease token), and whether a task was left pending for the workers.
Added = tuple[str, list[tuple[int, str, str]], bool]


def add_many(conn: sqlite3.Connection, batch: list[Add]) -> list[Added]:
    """Store a group of deliveries and their tasks.

    The writer holds the write lock (BEGIN IMMEDIATE), so the check for keys already
    stored cannot race with another process's insert, and task ids can be given here
    (as SQLite would: after the largest); a key repeated within the group is a
    duplicate of its first delivery.
    """
    results = ["stored"] * len(batch)
    keyed = [(i, d[1], d[3]) for i, d in enumerate(batch) if d[3] is not None]
    if keyed:
        taken = _stored_keys(conn, [(webhook, key) for _, webhook, key in keyed])
        for i, webhook, key in keyed:
            if (webhook, key) in taken:
                results[i] = "duplicate"
            taken.add((webhook, key))
    task_id = conn.execute("SELECT max(id) FROM tasks").fetchone()[0] or 0
    rows: list[tuple[Any, ...]] = []
    tasks: list[tuple[Any, ...]] = []
    attempts: list[tuple[Any, ...]] = []
    added: list[Added] = []
    for d, result in zip(batch, results, strict=True):
        if result != "stored":
            added.append((result, [], False))
            continue
        id, webhook, event, key, body, headers, query, received_at = d[:8]
        handlers, worker, lease, limit, now = unique_handlers(d[8]), *d[9:]
        rows.append((
            id, webhook, event, key, body, headers, query, received_at,
            "pending" if handlers else "done",
        ))  # fmt: skip
        claimed: list[tuple[int, str, str]] = []
        for handler in handlers:
            task_id += 1
            if len(claimed) < limit:
                token = secrets.token_hex(16)
                tasks.append((task_id, id, handler, "leased", now, 1, token, now + lease, worker))
                attempts.append((task_id, id, handler, 0, 1, worker, now))
                claimed.append((task_id, handler, token))
            else:
                tasks.append((task_id, id, handler, "pending", now, 0, None, None, None))
        added.append((result, claimed, len(claimed) < len(handlers)))
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
        "INSERT INTO attempts (task_id, delivery_id, handler, series, attempt, worker, started_at)",
        attempts,
    )
    return added


def claim(conn: sqlite3.Connection, args: tuple[str, int, float, float]) -> list[tuple[Any, ...]]:
    """Lease up to ``limit`` due or lapsed tasks to ``worker``, oldest first: a row per
    task (id, delivery id, handler, attempt, series, lease token, webhook, event, body,
    headers as JSON, query, received at)."""
    worker, limit, lease, now = args
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
    return [by_id[task_id] for task_id in ids]


def renew(conn: sqlite3.Connection, args: tuple[int, str, float]) -> bool:
    task_id, token, lease_until = args
    cursor = conn.execute(
        "UPDATE tasks SET lease_until = ? WHERE id = ? AND lease_token = ? AND status = 'leased'",
        (lease_until, task_id, token),
    )
    return cursor.rowcount == 1


#: A task's outcome: (task id, lease token, series, attempt, delivery id, new status,
#: error, retry at, now).
Outcome = tuple[int, str, int, int, str, str, "str | None", "float | None", float]


def finish_many(conn: sqlite3.Connection, outcomes: list[Outcome]) -> list[bool]:
    """Record a group of task outcomes; False for each task whose lease was lost (fenced:
    it lapsed and someone else holds the task now). The writer holds the write lock,
    so the leases read here cannot change before the updates."""
    held: dict[Any, str] = {}
    for chunk in chunked([outcome[0] for outcome in outcomes]):
        marks = ",".join("?" * len(chunk))
        held.update(
            conn.execute(
                f"SELECT id, lease_token FROM tasks WHERE status = 'leased' AND id IN ({marks})",
                chunk,
            )
        )
    results: list[bool] = []
    finished: list[Outcome] = []
    for outcome in outcomes:
        task_id, token = outcome[0], outcome[1]
        # pop: a second outcome of one task in this group finds it finished by the first
        held_by_us = token is not None and held.get(task_id) == token
        if held_by_us:
            del held[task_id]
            finished.append(outcome)
        results.append(held_by_us)
    conn.executemany(
        "UPDATE tasks SET status = ?, lease_token = NULL, lease_until = NULL,"
        " due_at = coalesce(?, due_at), last_error = coalesce(?, last_error) WHERE id = ?",
        [(o[5], o[7], o[6], o[0]) for o in finished],
    )
    conn.executemany(
        "UPDATE attempts SET finished_at = ?, error = ?"
        " WHERE task_id = ? AND series = ? AND attempt = ?",
        [(o[8], o[6], o[0], o[2], o[3]) for o in finished],
    )
    conn.executemany(_STATUS_SQL, [{"id": d} for d in dict.fromkeys(o[4] for o in finished)])
    return results


# -- operator actions ----------------------------------------------------------------------


def replay(
    conn: sqlite3.Connection,
    args: tuple[Sequence[str] | None, str | None, str | None, float],
) -> int:
    ids, status, webhook, now = args
    if ids is None:
        where, params = filters(status=status, webhook=webhook)
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


def purge_chunk(conn: sqlite3.Connection, args: tuple[str, float, int]) -> int:
    """Delete up to ``size`` deliveries of ``status`` received before ``cutoff``."""
    status, cutoff, size = args
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


OPS: dict[str, Callable[[sqlite3.Connection, Any], Any]] = {
    "migrate": migrate,
    "pragma": pragma,
    "claim": claim,
    "renew": renew,
    "replay": replay,
    "purge_chunk": purge_chunk,
}
GROUPED: dict[str, Callable[[sqlite3.Connection, list[Any]], list[Any]]] = {
    "add_many": add_many,
    "finish_many": finish_many,
}


def sync_level(ops: list[Op], configured: str) -> str:
    """The ``synchronous`` setting a batch commits with: the store's, except that FULL
    (or EXTRA) becomes NORMAL, no fsync in WAL mode, for a batch that does not need it."""
    if configured in ("FULL", "EXTRA") and not needs_sync(ops):
        return "NORMAL"
    return configured


def needs_sync(ops: list[Op]) -> bool:
    """Whether a batch must be on disk before it is answered (fsync at COMMIT).

    Acknowledged deliveries must (``add_many``), and so must operators' actions and dead
    tasks (``on_error`` hears of a death once). Claims, lease renewals and "done" or
    "retry later" outcomes need not: a power loss that takes them back only makes a task
    run again, which at-least-once delivery allows; SQLite serves one machine, so its
    workers went down with it. In WAL mode a commit without its own fsync becomes durable
    with the next one that has it (that fsync covers the whole log, in commit order), and
    a process crash loses neither kind. A 1-worker drain is a claim and its outcomes per
    transaction, each of which waited for an fsync.
    """
    for name, _, arg in ops:
        if name in ("claim", "renew"):
            continue
        if name == "finish_many" and arg[5] in RERUNNABLE_OUTCOMES:
            continue
        return True
    return False


# -- helpers -------------------------------------------------------------------------------


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


def filters(**columns: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause on ``d.<column> = ?`` for each given value, and its parameters."""
    parts = [f"d.{name} = ?" for name, value in columns.items() if value is not None]
    params = [value for value in columns.values() if value is not None]
    return ("WHERE " + " AND ".join(parts) if parts else ""), params


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head VALUES (...), (...), ...`` for every row, in a few statements."""
    if rows:
        marks = "(" + ",".join("?" * len(rows[0])) + ")"
        for chunk in chunked(rows):
            values = ",".join([marks] * len(chunk))
            # Flattened in C: a comprehension here ran ~100 bytecodes per delivery.
            conn.execute(f"{head} VALUES {values}", list(chain.from_iterable(chunk)))


def chunked(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in chunks of ``MAX_ROWS``, the last one shorter.

    A statement's text depends on its number of rows, so a table needs up to
    ``MAX_ROWS`` distinct statements; the writer's connection caches that many
    prepared statements per table (``STATEMENT_CACHE``).
    """
    for start in range(0, len(items), MAX_ROWS):
        yield items[start : start + MAX_ROWS]
